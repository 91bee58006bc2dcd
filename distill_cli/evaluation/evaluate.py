"""Evaluate a model (and optionally its teacher): task metrics, size, CPU latency, retention."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from distill_cli import tasks
from distill_cli.data import batching, windows
from distill_cli.data.tables import TaskData
from distill_cli.data.text import TokenMasker
from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.evaluation import blank as blank_eval
from distill_cli.evaluation import chat as chat_eval
from distill_cli.evaluation import embedding as embedding_eval
from distill_cli.evaluation import embedding_metrics as em
from distill_cli.evaluation import latency as timing
from distill_cli.evaluation import long_inputs, scoring
from distill_cli.evaluation.metrics import LOWER_IS_BETTER, PRIMARY
from distill_cli.models import forward as heads
from distill_cli.models.forward import Needs, is_causal, word_mode
from distill_cli.models.load import give_pad_token, label_names, load_classifier, same_vocab
from distill_cli.outputs import check_not_input, record_written, write_json_atomic
from distill_cli.recipe import DataConfig, from_dict, parse_set
from distill_cli.reporting import log
from distill_cli.tasks import cloze
from distill_cli.training import word_signal
from distill_cli.training.stages import compressed_vocab
from distill_cli.user_files import read_yaml

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".gguf")


def data_config(model_dir: Path, data: str | None, sets: list[str]) -> DataConfig:
    """The data section of the model's resolved_recipe.yaml (when present), then --data, --set."""
    raw = {}
    resolved = model_dir / "resolved_recipe.yaml"
    if resolved.is_file():
        fix = "fix it, or delete it and pass --data"
        recipe = read_yaml(
            resolved, "the model's recipe", fix, optional={"data": (dict, type(None))}
        )
        raw = dict(recipe.get("data") or {})
    if data:
        raw["name"] = data
    saved = cloze.read_saved(model_dir) if model_dir.is_dir() else None
    for key, value in cloze.data_settings(saved).items() if saved else ():
        if raw.get(key) is None:  # a cloze model's template and verbalizers
            raw[key] = value
    for item in sets:
        key, value = parse_set(item)
        raw[key.removeprefix("data.")] = value
    return from_dict(DataConfig, raw, "data", "evaluate options")


def machine() -> dict:
    """What the latency figures were measured on."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return {
        "device": "cpu",
        "processor": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def size_on_disk_mb(model_dir: Path) -> float:
    """The model's weight files (a .gguf file: itself), in MiB."""
    if model_dir.is_file():
        return model_dir.stat().st_size / 2**20
    files = [p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    return sum(p.stat().st_size for p in files) / 2**20


# QA readers are timed on full windows of the length they usually run at
QA_LATENCY_LENGTH = 384


def score_split(
    model,
    tokenizer,
    task: TaskData,
    split: str,
    cfg: DataConfig,
    batch_size=64,
    word=None,
    window=None,
    tally=None,
):
    """Task metrics of a model (PyTorch or ONNX) on a split, read with its own tokenizer;
    ``word``: a cloze model's word mode and scale; ``window``: its windows (data.windows.Spec),
    what they cost counted in ``tally``."""
    features = tasks.of(task).eval_features(task.splits[split], task, tokenizer, cfg, split)
    collate = batching.PadCollator(tokenizer.pad_token_id or 0)
    loader = DataLoader(features.loader_ds, batch_size=batch_size, collate_fn=collate)
    scorer = scoring.scorer(task, task.splits[split], features, cfg)
    scorer.word = word
    return scoring.score(model, loader, scorer, window=window, tally=tally)


def window_spec(model, tokenizer, task: TaskData, cfg: DataConfig, role: str):
    """How a PyTorch model with fewer positions than cfg.max_length reads the data: through
    windows (the teacher also when data.teacher_window is shorter), or None."""
    if not isinstance(model, torch.nn.Module):
        return None
    kind = tasks.of(task)
    causal = is_causal(model.config)
    pairs, teacher = windows.keeps_first_text(task), role == "teacher"
    spec = windows.spec_for(model, tokenizer, cfg, kind, causal, pairs, teacher)
    if spec is not None:
        windows.refuse(Needs(logits=True), kind.word_head, role, spec.logits)
        log(
            f"{role}: reads inputs of up to data.max_length={cfg.max_length} tokens through "
            f"{spec.describe()}"
        )
    return spec


def word_reading(model, path: str) -> tuple[str, float] | None:
    """How a model read through its word head (cloze) is read: as its cloze.json says (the
    word mode it was trained in, and its scale), else its LM head where it was saved with one."""
    if not isinstance(model, torch.nn.Module):
        return None
    saved = cloze.read_saved(path) if Path(path).is_dir() else None
    saved = saved or {}
    mode = word_mode(saved.get("word_logits", "auto"), model, prefer_head=True)
    return mode, float(saved.get("word_logit_scale", 1.0))


def _texts(task: TaskData, split: str, n: int) -> list[list[str]]:
    rows = task.splits[split].select(range(min(n, len(task.splits[split]))))
    ds, columns = tasks.of(task).plain_text(task, rows)
    return [ds[c] for c in columns]


def check_task(config, task: TaskData, path: str) -> None:
    """The model's head must be the one the data's task needs."""
    have, need = tasks.of_config(config), tasks.of(task)
    if not tasks.same_head(have, need):
        raise DistillError(
            f"{path} is a {have.description} model but the data is a "
            f"{need.description} task; pass data of its task (--data)"
        )


# the big timed batch holds at most this many tokens: 32 rows of 512, fewer of longer inputs
BIG_TOKENS = 32 * 512


def big_rows(max_length: int) -> int:
    return max(1, min(32, BIG_TOKENS // max_length))


def timing_job(model, tokenizer, texts, max_length: int, runs: int = 30, full=False):
    """What ``latency.time_interleaved`` times for a model: ``runs`` batch-1 inputs and one
    batch of 32 (fewer for long inputs: ``big_rows``); ``full`` pads every input to
    ``max_length``."""

    def encode(lo, hi):
        cols = [c[lo:hi] for c in texts]
        padding = "max_length" if full else True
        return tokenizer(
            *cols, truncation=True, max_length=max_length, padding=padding, return_tensors="pt"
        )

    def forward(batch):
        return model(**batch)

    n = len(texts[0])
    singles = [encode(i % n, i % n + 1) for i in range(runs)]
    return timing.Job(forward, singles, encode(0, big_rows(max_length)))


def prompts(task: TaskData, split: str, tokenizer, n: int = 32) -> list[str]:
    """The split's first texts in a cloze task's template, as the model reads them."""
    texts = [list(t) for t in zip(*_texts(task, split, n), strict=True)]
    return [cloze.render(task.prompt.template, t, tokenizer) for t in texts]


def cloze_timing_job(model, tokenizer, task: TaskData, split: str, max_length: int, word):
    """timing_job on the split's texts in the template, reading the class logits at the blank
    (the mask token, or a causal LM's last token) without the [batch, tokens, V] logits."""
    prompt = task.prompt
    ids = torch.tensor(cloze.verbalizer_ids(prompt, tokenizer))
    plain = timing_job(model, tokenizer, [prompts(task, split, tokenizer)], max_length)
    mode, scale = word

    def call(batch):
        if cloze.reads_next_token(tokenizer):
            positions = batch["attention_mask"].sum(1) - 1
        else:
            positions = (batch["input_ids"] == tokenizer.mask_token_id).int().argmax(1)
        blank = heads.Blank(positions, ids.expand(len(positions), -1), scale)
        return heads.read_blank(model, dict(batch), blank, mode)

    return timing.Job(call, plain.singles, plain.big)


# long inputs (beyond 512 tokens) take seconds a call on CPUs: fewer rounds, inputs and warm-ups
LONG_TIMING = {"rounds": 3, "block": 2, "warmup": 2}


def time_models(jobs: dict[str, timing.Job], reports: dict[str, dict], long=False) -> dict:
    """Time the models together, interleaved (timing.time_interleaved), and add the latency keys
    to their reports; returns how they were timed, for evaluation.json."""
    threads = timing.timing_threads()
    how = LONG_TIMING if long else {"rounds": timing.ROUNDS}
    log(f"timing {len(jobs)} models interleaved: {how['rounds']} rounds at {threads} threads")
    timed = timing.time_interleaved(jobs, threads=threads, **how)
    for name, job in jobs.items():
        reports[name].update(timing.figures(timed[name], len(job.big["input_ids"])))
    return {"threads": threads, "rounds": how["rounds"], "interleaved": True}


def long_figures(model, tokenizer, task: TaskData, split: str, cfg: DataConfig, window) -> dict:
    """Batch-1 latency and peak memory at each of evaluate's long lengths up to cfg.max_length
    (none for short data): a PyTorch model as it reads the data (through its windows); a model
    that cannot read a length (an ONNX graph past its positions) has none there."""
    lengths = long_inputs.lengths_for(cfg.max_length)
    if not lengths or not isinstance(model, torch.nn.Module):
        return {}
    if window is None:
        limit = windows.positions(model.config)
        lengths = [n for n in lengths if limit is None or n <= limit]
    texts = [" ".join(t) for t in zip(*_texts(task, split, 32), strict=True)]
    with timing.torch_threads(timing.timing_threads()):
        found = long_inputs.measure(
            lambda b: windows.call(model, b, window), tokenizer, texts, lengths
        )
    return found


def evaluate_model(path: str, role: str, cfg: DataConfig, split: str, task=None):
    kind = tasks.of(task) if task is not None else tasks.claiming(cfg)
    # a task read through the word head (cloze) loads the model as the LM it is
    model, tokenizer = load_classifier(path, role, task=kind if kind.word_head else None)
    give_pad_token(model, tokenizer)  # a decoder classifier saved without one
    if task is None:
        task = tasks.load_task_data(cfg, splits=[split], label_names=label_names(model.config))
    word = None
    if tasks.of(task).word_head:
        word = word_reading(model, path)
    else:
        check_task(model.config, task, path)
    window = window_spec(model, tokenizer, task, cfg, role)
    tally = windows.Tally()
    metrics = score_split(model, tokenizer, task, split, cfg, word=word, window=window, tally=tally)
    span = tasks.of(task).fixed_length
    # a model with fewer positions is timed at its longest input (through windows: the data's)
    positions = getattr(model.config, "max_position_embeddings", None) or QA_LATENCY_LENGTH
    positions = cfg.max_length if window is not None else positions
    length = min(QA_LATENCY_LENGTH, positions) if span else cfg.max_length
    report = {
        "path": str(path),
        "metrics": metrics,
        "parameters": model.num_parameters(),
        "size_mb": round(size_on_disk_mb(Path(path)), 3),
        "latency_length": length if span else None,
    }
    if window is not None:
        report["windows"] = {"size": window.size, "overlap": window.overlap}
        report["windows"].update({k: round(v, 4) for k, v in tally.figures().items()})
        log(f"{role}: read {tally.describe()}")
    if tasks.of(task).generates:
        job = chat_eval.timing_job(model, tokenizer)
        report["replies"] = chat_eval.replies(model, tokenizer)
    else:
        job = timing_job(model, tokenizer, _texts(task, split, 32), length, full=span)
    if word is not None:  # a cloze is timed as it is read: its prompt, the class logits only
        job = cloze_timing_job(model, tokenizer, task, split, length, word)
    elif tasks.of(task).word_head:  # a cloze ONNX export: the prompts in, the class logits out
        job = timing_job(model, tokenizer, [prompts(task, split, tokenizer)], length)
    if window is not None:  # timed as it is read: through its windows
        job = timing.Job(lambda b: windows.call(model, dict(b), window), job.singles, job.big)
    long = long_figures(model, tokenizer, task, split, cfg, window)
    if long:
        report["long_inputs"] = long
        shown = [
            f"{n}: {f['latency_ms']:.0f} ms, {f['peak_memory_mb']} MB" for n, f in long.items()
        ]
        log(f"{role}: batch-1 latency and peak memory by input length: {'; '.join(shown)}")
    log(f"{role}: {', '.join(f'{k} {v:.4f}' for k, v in metrics.items())}")
    return report, task, (model, tokenizer), job


AGREEMENT_ROWS = 256
AGREEMENT_TOKENS = AGREEMENT_ROWS * 128  # fewer rows of long inputs: the word logits cost per token
AGREEMENT_MASKING = 0.15


def word_agreement(
    student, teacher, task: TaskData, split: str, max_length: int, d: DataConfig | None = None
) -> dict | None:
    """How often the student's top word prediction is the teacher's, at masked (15%, BERT-style,
    fixed seed) and unmasked positions of the split's first rows (AGREEMENT_ROWS, fewer of
    long inputs: AGREEMENT_TOKENS), both reading the teacher's
    tokens (a compressed student: remapped to its vocabulary). None when the two cannot be
    compared token by token: an ONNX export, another tokenization, no word logits."""
    (s_model, s_tok, s_path), (t_model, t_tok) = student, teacher
    if not isinstance(s_model, torch.nn.Module) or not isinstance(t_model, torch.nn.Module):
        return None
    compressed = compressed_vocab(s_path, t_model.get_input_embeddings().weight.shape[0])
    if compressed is None and not same_vocab(s_tok, t_tok):
        return None
    try:
        modes = word_mode("auto", s_model), word_mode("auto", t_model)
    except UnsupportedModel:
        return None
    causal = is_causal(t_model.config)
    if not causal and t_tok.mask_token_id is None:
        return None
    n = max(1, min(AGREEMENT_ROWS, AGREEMENT_TOKENS // max_length, len(task.splits[split])))
    rows, columns = tasks.of(task).plain_text(task, task.splits[split].select(range(n)))
    ds, _ = batching.tokenize(rows, t_tok, columns, max_length)
    ds = ds.select_columns([c for c in batching.model_columns(ds) if c != "label"])
    collate = batching.PadCollator(t_tok.pad_token_id or 0)
    probe = word_signal.Probe(
        teacher=t_model,
        teacher_mode=modes[1],
        masker=TokenMasker(t_tok, seed=0),
        causal=causal,
        student=s_model,
        student_mode=modes[0],
        vocab_index=compressed[0] if compressed else None,
        id_remap=compressed[1] if compressed else None,
        # a model with fewer positions than max_length reads its word features through windows
        teacher_window=_word_window(t_model, t_tok, task, d, max_length, causal),
        student_window=_word_window(s_model, t_tok, task, d, max_length, causal),
    )
    batches = word_signal.probe_batches(ds, collate, 64, "cpu")
    figures = word_signal.measure(probe, batches, word_signal.Calibration(), AGREEMENT_MASKING)
    student_figures = figures["student"]
    return {
        "masked": student_figures["agreement_masked"],
        "unmasked": student_figures["agreement_unmasked"],
        "rows": len(rows),
    }


def _compare(student: dict, teacher: dict, key: str) -> dict:
    """Retention, speedup and size of a student relative to its teacher."""
    t_metric, s_metric = teacher["metrics"][key], student["metrics"][key]
    if key in LOWER_IS_BETTER and s_metric:  # e.g. NLL: the teacher's ÷ the student's
        t_metric, s_metric = s_metric, t_metric
    return {
        "retention": s_metric / t_metric if t_metric and s_metric is not None else None,
        "speedup_b1": teacher["latency_ms_b1"] / student["latency_ms_b1"],
        "throughput_ratio_b32": student["throughput_b32"] / teacher["throughput_b32"],
        "size_ratio": student["size_mb"] / teacher["size_mb"] if teacher["size_mb"] else None,
        "parameter_ratio": student["parameters"] / teacher["parameters"],
    }


def _word_window(model, tokenizer, task: TaskData, d, max_length: int, causal: bool):
    """A model's windows for its word features at ``max_length`` (data.doc_stride and
    data.teacher_window as the evaluated data ``d`` sets them), or None."""
    d = d or DataConfig(max_length=max_length)
    try:
        return windows.spec_for(model, tokenizer, d, None, causal, windows.keeps_first_text(task))
    except DistillError:  # windows too short for the default overlap: compare no words
        return None


def model_names(paths: list[str]) -> list[str]:
    """Short, unique names for the table: folder names, made unique with their parents."""
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return names


def run(
    model_dirs: list[str],
    data: str | None,
    split: str = "test",
    teacher: str | None = None,
    output_dir: str | None = None,
    sets: list[str] = (),
) -> dict:
    """Evaluate one or more models (and the teacher); with ``output_dir``, write evaluation.json
    and evaluation.png there (never into a folder it reads).

    Each model is compared with the teacher on the same rows: retention, speedup, size.
    """
    first = model_dirs[0]
    cfg = data_config(Path(first), data, list(sets))
    embedders = [embedding_eval.is_embedder(m) for m in model_dirs]
    if output_dir:
        models = [("model", m) for m in model_dirs]
        check_not_input(output_dir, [*models, ("teacher", teacher), ("data", cfg.name)])
    names = model_names(model_dirs)
    if teacher and "teacher" in names:
        raise DistillError("a model folder is named 'teacher' like --teacher; rename the folder")
    if any(embedders):
        if not all(embedders):
            raise DistillError(
                "evaluate sentence embedders and task models in separate runs: "
                f"{model_dirs[embedders.index(False)]} is not a sentence embedder"
            )
        if not data:  # the run's own data is its raw training text, which has no labels
            raise DistillError(
                "pass --data to evaluate a sentence embedder: labelled texts (--data "
                "rotten_tomatoes), scored sentence pairs, or any texts with --teacher"
            )
        result = _evaluate_embedders(names, model_dirs, cfg, split, teacher)
        return _write(result, output_dir)
    reports, loaded, jobs, task = {}, {}, {}, None
    for name, path in zip(names, model_dirs, strict=True):
        reports[name], task, loaded[name], jobs[name] = evaluate_model(path, name, cfg, split, task)
    result = {
        "data": cfg.name,
        "split": split,
        "num_examples": len(task.splits[split]),
        "primary_metric": PRIMARY[task.metric],
        "machine": machine(),
        "students": names,
        "models": reports,
    }
    if teacher:
        # The teacher reads the same rows; labels map through the first model's label names.
        t_report, _, t_loaded, jobs["teacher"] = evaluate_model(
            teacher, "teacher", cfg, split, task
        )
    # every model, the teacher too, in one interleaved timing
    everyone = {"teacher": t_report, **reports} if teacher else reports
    long = bool(long_inputs.lengths_for(cfg.max_length))
    result["latency"] = time_models(jobs, everyone, long)
    if long:
        result["timing_units"] = {"throughput_b32": f"samples/s b{big_rows(cfg.max_length)}"}
    result["machine"]["torch_threads"] = result["latency"]["threads"]
    generates = tasks.of(task).generates
    if generates:
        for report in everyone.values():
            chat_eval.per_token(report)
        result["timing_units"] = chat_eval.TIMING
        result["metrics_shown"] = list(chat_eval.SHOWN)
    if teacher and generates:
        features = (
            tasks.of(task)
            .eval_features(task.splits[split], task, t_loaded[1], cfg, split)
            .loader_ds
        )
        collate = batching.PadCollator(t_loaded[1].pad_token_id or 0)
        rows = t_loaded[0].get_input_embeddings().weight.shape[0]
        for name, path in zip(names, model_dirs, strict=True):
            compressed = compressed_vocab(path, rows)
            if compressed is not None or same_vocab(loaded[name][1], t_loaded[1]):
                model = loaded[name][0]
                found = chat_eval.against_teacher(
                    model, t_loaded[0], features, collate, 4, compressed
                )
                reports[name]["metrics"].update(found)
                log(f"{name}: top-1 agreement with the teacher {found['agreement']:.1%}, "
                    f"KL {found['kl']:.4f} on the assistant's tokens")  # fmt: skip
    if teacher:
        for name, path in zip(names, model_dirs, strict=True):
            reports[name].update(_compare(reports[name], t_report, result["primary_metric"]))
            if generates:  # a chat model's agreement is per next token, above
                continue
            student = (*loaded[name], path)
            agreement = word_agreement(student, t_loaded, task, split, cfg.max_length, cfg)
            reports[name]["word_agreement"] = agreement
            if agreement is not None:  # a causal LM is never masked: its masked share is None
                shares = [
                    f"{agreement[k]:.1%} {k}"
                    for k in ("masked", "unmasked")
                    if agreement[k] is not None
                ]
                log(f"{name}: top-1 word agreement with the teacher {', '.join(shares)}")
        result["models"] = {"teacher": t_report, **reports}
    if tasks.of(task).word_head:
        models = [(n, *loaded[n], p) for n, p in zip(names, model_dirs, strict=True)]
        found = blank_signal(models, (*t_loaded, teacher) if teacher else None, task, split, cfg)
        for name, figures in found.items():
            result["models"][name]["blank"] = figures
    return _write(result, output_dir)


def blank_signal(models, teacher, task: TaskData, split: str, cfg: DataConfig) -> dict:
    """A cloze's word-signal figures at the blank by model name (evaluation.blank), with top-1
    agreement and KL against the teacher where the vocabularies line up; ONNX models have none."""
    found, t_log_p, t_tok = {}, None, None
    for name, model, tokenizer, path in [*([("teacher", *teacher)] if teacher else []), *models]:
        word = word_reading(model, path)
        if word is None:
            continue
        log_p, ids = blank_eval.distributions(model, tokenizer, task, split, cfg, word)
        found[name] = blank_eval.figures(log_p, ids)
        if name == "teacher":
            t_log_p, t_tok = log_p, tokenizer
        elif t_log_p is not None:
            compressed = compressed_vocab(path, t_log_p.shape[-1])
            if compressed is not None or same_vocab(tokenizer, t_tok):
                index = compressed[0] if compressed else None
                found[name] |= blank_eval.against(log_p, t_log_p, index)
        log(f"{name}: at the blank " + blank_eval.describe(found[name]))
    return found


def _write(result: dict, output_dir) -> dict:
    if output_dir:
        out = Path(output_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        record_written(out, ["evaluation.json", "evaluation.png"])  # a distill folder's run.json
        write_json_atomic(out / "evaluation.json", result)
        plot(result, out / "evaluation.png")
        result["output_dir"] = str(out)
    return result


def _embedder_report(path: str, role: str, cfg: DataConfig, data):
    model, tokenizer = embedding_eval.load(path, role)
    vectors, metrics = embedding_eval.own_metrics(model, tokenizer, data, cfg.max_length)
    report = {
        "path": str(path),
        "metrics": metrics,
        "embedding_dim": int(vectors.shape[1]),
        "parameters": embedding_eval.parameters(model),
        "size_mb": round(embedding_eval.size_mb(Path(path)), 3),
    }
    return report, vectors, timing_job(model, tokenizer, [data.texts[:32]], cfg.max_length)


def _evaluate_embedders(names, model_dirs, cfg: DataConfig, split: str, teacher) -> dict:
    """Sentence embedders: their own metrics (probe, STS) and, with a teacher, agreement and
    neighbour recall; retention of each metric."""
    data = embedding_eval.load_data(cfg, split)
    if teacher is None and data.primary == em.AGREEMENT:
        raise DistillError(
            "these texts have no labels or scores, so embedders are compared with a teacher: "
            "pass --teacher, or labelled data (--data rotten_tomatoes)"
        )
    reports, vectors, jobs = {}, {}, {}
    for name, path in zip(names, model_dirs, strict=True):
        reports[name], vectors[name], jobs[name] = _embedder_report(path, name, cfg, data)
    key = data.primary
    if teacher:
        t_report, t_vectors, jobs["teacher"] = _embedder_report(teacher, "teacher", cfg, data)
    timed = time_models(jobs, {"teacher": t_report, **reports} if teacher else reports)
    if teacher:
        t_report["metrics"].update({em.AGREEMENT: 1.0, em.NEIGHBOUR_RECALL: 1.0})
        for name in names:
            m = reports[name]["metrics"]
            m.update(embedding_eval.against_teacher(vectors[name], t_vectors))
            reports[name].update(_compare(reports[name], t_report, key))
            reports[name]["retention_by_metric"] = em.embedding_report(m, t_report["metrics"])
        reports = {"teacher": t_report, **reports}
    for name, report in reports.items():
        embedding_eval.log_metrics(name, report["metrics"])
    metric_keys = [k for k in em.METRICS if k in next(iter(reports.values()))["metrics"]]
    return {
        "data": cfg.name,
        "split": split,
        "num_examples": len(data.texts),
        "model_kind": "sentence_embedding",
        "primary_metric": key,
        "metrics_shown": [key, *(k for k in metric_keys if k != key)],
        "neighbours": embedding_eval.NEIGHBOURS,
        "machine": {**machine(), "torch_threads": timed["threads"]},
        "latency": timed,
        "students": names,
        "models": reports,
    }


PLOT_COLUMNS = 3


def _tradeoff(ax, result: dict, names: list[str]) -> None:
    """The primary metric against batch-1 latency (log scale), one labelled point per model;
    the teacher a black star."""
    models, key = result["models"], result["primary_metric"]
    for i, name in enumerate(names):
        x, y = models[name]["latency_ms_b1"], models[name]["metrics"].get(key)
        if y is None:
            continue
        teacher = name == "teacher"
        style = {"marker": "*", "s": 220, "color": "black"} if teacher else {"color": f"C{i}"}
        ax.scatter([x], [y], zorder=3, **style)
        # alternate above and below, so close points keep legible labels
        offset = (6, 6) if i % 2 == 0 else (6, -14)
        ax.annotate(name, (x, y), xytext=offset, textcoords="offset points", fontsize=9)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    lows, highs = ax.get_xlim()
    ax.set_xlim(lows / 1.25, highs * 1.6)  # room for the labels
    ax.set_xlabel("latency ms (batch 1, log scale)")
    ax.set_ylabel(key)
    ax.set_title(f"{key} vs latency")
    ax.grid(True, which="both", alpha=0.3)


def plot(result: dict, path: Path) -> None:
    """A grid of panels: the primary metric against batch-1 latency, then bars comparing the
    models on each metric, latency (the whiskers: the quartiles of the timing rounds),
    throughput and size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    names = list(models)  # the teacher first when present
    keys = result.get("metrics_shown", [result["primary_metric"]])
    values = {k: [models[n]["metrics"].get(k) for n in names] for k in keys}
    panels = [
        *((k, v) for k, v in values.items() if None not in v),
        ("latency ms (batch 1)", [models[n]["latency_ms_b1"] for n in names]),
        ("samples/s (batch 32)", [models[n]["throughput_b32"] for n in names]),
        ("size MB", [models[n]["size_mb"] for n in names]),
    ]
    cols = PLOT_COLUMNS
    rows = -(-(len(panels) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 4.2 * rows), squeeze=False)
    axes = list(axes.flat)
    _tradeoff(axes[0], result, names)
    for ax, (title, values) in zip(axes[1:], panels, strict=False):
        low, high = [0] * len(names), [0] * len(names)
        if title.startswith("latency") and all("latency_b1_rounds_ms" in models[n] for n in names):
            rounds = [timing.quartiles(models[n]["latency_b1_rounds_ms"]) for n in names]
            low = [v - q[0] for v, q in zip(values, rounds, strict=True)]
            high = [q[1] - v for v, q in zip(values, rounds, strict=True)]
        colors = [f"C{i}" for i in range(len(names))]
        bars = ax.bar(names, values, yerr=[low, high], capsize=4 if any(high) else 0, color=colors)
        ax.tick_params(axis="x", labelrotation=20 if len(names) > 2 else 0)
        ax.bar_label(bars, fmt=lambda v: f"{v:.3g}" if v < 1000 else f"{v:,.0f}", padding=2)
        ax.set_ylim(0, max(v + h for v, h in zip(values, high, strict=True)) * 1.15 or 1)
        ax.set_title(title)
    for ax in axes[len(panels) + 1 :]:
        ax.set_visible(False)
    fig.suptitle(f"{result['data']} ({result['split']}, {result['num_examples']} examples)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)

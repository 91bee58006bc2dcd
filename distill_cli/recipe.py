"""Recipes: nested typed dataclasses, loaded strictly from YAML.

Precedence: dataclass defaults < recipe YAML < typed CLI options < ``--set a.b=value``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill_cli import tasks
from distill_cli.errors import DistillError
from distill_cli.reporting import log
from distill_cli.training import losses
from distill_cli.user_files import read_yaml, safe_load


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Phase:
    name: str = _opt("task", "Name shown in logs and metrics.jsonl.")
    terms: dict[str, Any] = field(
        default_factory=losses.default_terms,
        metadata={
            "help": "Loss terms by registry name (distill_cli/losses.py) with their parameters.",
            "convert": lambda value, where, source: _convert_terms(value, where, source),
        },
    )
    epochs: float | None = _opt(None, "Length of this phase in epochs (default: train.epochs).")
    mlm_probability: float = _opt(
        0.0, "Share of tokens masked BERT-style (80/10/10) in this phase; encoders only."
    )
    max_steps: int | None = _opt(
        None, "Length of this phase in optimizer steps (overrides epochs)."
    )
    on_policy: float = _opt(
        0.0,
        "Chat: share of batches whose replies are sampled from the student and scored by the "
        "teacher (GKD's lambda, TRL's lmbda); 0: every batch is the data's replies.",
    )
    sample_temperature: float = _opt(
        0.9, "Chat, on-policy batches: the student's sampling temperature (TRL GKD's default)."
    )
    sample_max_new_tokens: int = _opt(
        128, "Chat, on-policy batches: the longest sampled reply, in tokens."
    )


@dataclass
class StudentConfig:
    init: str = _opt("truncate", "How the student is made: checkpoint | truncate | config.")
    path: str | None = _opt(None, "Student checkpoint folder or Hub name (init: checkpoint).")
    num_layers: int | None = _opt(None, "Student depth (truncate: keep every k-th teacher layer).")
    hidden_size: int | None = _opt(None, "Hidden size override (init: config).")
    num_attention_heads: int | None = _opt(None, "Attention heads override (init: config).")
    intermediate_size: int | None = _opt(None, "FFN size override (init: config).")
    attention: str = _opt(
        "full",
        "full | sliding_window (causal LMs: a Mistral student) | block_sparse (encoders: "
        "BigBird) | longformer (encoders: Longformer); efficient students are built from the "
        "teacher's layers.",
    )
    max_position_embeddings: int | None = _opt(
        None,
        "Positions of the student (the teacher's tiled; default 4096 for block_sparse and "
        "longformer, the teacher's for full and sliding_window).",
    )
    attention_window: int = _opt(
        256, "longformer: tokens each token attends to; sliding_window: the window size."
    )
    block_size: int = _opt(64, "block_sparse: tokens per attention block (BigBird).")
    num_random_blocks: int = _opt(3, "block_sparse: random blocks each block attends to.")


@dataclass
class DataConfig:
    name: str | None = _opt(
        None,
        "Dataset: rotten_tomatoes, newsgroups, squad_dev, squad_long, a GLUE task (sst2, "
        "mnli, ...), a local file or folder, or a Hub dataset name.",
    )
    text_columns: list[str] | None = _opt(None, "One or two text columns (default: from preset).")
    label_column: str | None = _opt(None, "Label column (default: from preset or 'label').")
    labels: list[str] | None = _opt(None, "Label names in id order (default: inferred).")
    task_type: str | None = _opt(
        None,
        "classification | regression | token_classification | question_answering | chat | "
        "cloze (default: inferred from the data or preset; data.template or data.verbalizers "
        "make it cloze).",
    )
    template: str | None = _opt(
        None,
        "Cloze: the prompt, with {text} (or {text_a} and {text_b} for pairs) and {mask}, e.g. "
        "'{text} It was {mask}.' (default for rotten_tomatoes and sst2: that one).",
    )
    verbalizers: list[str] | None = _opt(
        None,
        "Cloze: one word per label, in label order, each one token of the model's vocabulary "
        "(default for rotten_tomatoes and sst2: terrible, great).",
    )
    metric: str | None = _opt(
        None, "accuracy | f1 | mcc | pearson | seqeval | squad | squad_v2 (default: from preset)."
    )
    train_split: str = _opt("train", "Split used for training.")
    eval_split: str = _opt("validation", "Split evaluated at the end of training.")
    max_length: int = _opt(128, "Truncate inputs to this many tokens.")
    packing: str = _opt(
        "pack",
        "Raw text: pack (concatenate into full blocks) | bucket (group similar lengths) | none.",
    )
    label_all_tokens: bool = _opt(
        False,
        "Token classification: label every sub-token of a word, not only its first one.",
    )
    doc_stride: int = _opt(
        128,
        "Question answering: tokens shared by consecutive windows of a long context "
        "(below data.max_length); also the overlap of a windowed model's windows.",
    )
    teacher_window: int | None = _opt(
        None,
        "Long inputs: a model whose positions are fewer than data.max_length (the teacher, or "
        "a model being fine-tuned) reads each input through overlapping windows of this many "
        "tokens (default: its max_position_embeddings), combined per task.",
    )
    window_combine: str = _opt(
        "mean", "Sequence tasks read through windows: mean | max of the window logits."
    )
    min_words: int | None = _opt(
        None, "Keep only rows whose text has at least this many words (long documents)."
    )
    max_answer_length: int = _opt(30, "Question answering: longest predicted answer, in tokens.")
    train_on: str = _opt(
        "assistant", "Chat: the tokens the loss reads: assistant (the replies) | all."
    )
    chat_template: str | None = _opt(
        None, "Chat: a Jinja file to render conversations with, instead of the model's template."
    )
    max_train_samples: int | None = _opt(None, "Use at most this many training rows.")
    max_eval_samples: int | None = _opt(None, "Use at most this many evaluation rows.")


@dataclass
class TrainConfig:
    epochs: float = _opt(3.0, "Training epochs for phases that don't set their own length.")
    max_steps: int | None = _opt(None, "Stop after this many optimizer steps in total.")
    batch_size: int = _opt(32, "Per-process batch size.")
    eval_batch_size: int = _opt(64, "Per-process batch size for evaluation.")
    gradient_accumulation_steps: int = _opt(1, "Batches accumulated per optimizer step.")
    optimizer: str = _opt("adamw", "Optimizer (adamw).")
    learning_rate: float = _opt(5e-5, "Peak learning rate.")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to biases and norms).")
    lr_scheduler: str = _opt("linear", "transformers scheduler name: linear, cosine, constant, ...")
    warmup_ratio: float = _opt(0.0, "Warmup as a fraction of all steps.")
    warmup_steps: int = _opt(0, "Warmup steps (overrides warmup_ratio when > 0).")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 disables).")
    mixed_precision: str = _opt("no", "no | fp16 | bf16 (fp16 falls back to fp32 without CUDA).")
    seed: int = _opt(42, "Random seed for init, shuffling and dropout.")
    logging_steps: int = _opt(10, "Log to metrics.jsonl and trackers every N steps.")
    save_steps: int | None = _opt(
        500, "Checkpoint every N optimizer steps, and at each phase's end (null: phase ends only)."
    )
    save_total_limit: int = _opt(2, "Checkpoints kept; older ones are deleted.")
    max_bad_steps: int = _opt(
        0, "Steps with a NaN/inf loss skipped before the run stops with exit code 3."
    )
    report_to: list[str] = _opt([], "Accelerate trackers: tensorboard, wandb, ...")


def _convert_mode(value: Any, where: str, source: str) -> str:
    """YAML 1.1 reads a bare off as false: that is the mode off."""
    return "off" if value is False else _convert(value, str, where, source)


@dataclass
class TeacherCacheConfig:
    mode: str = field(
        default="off",
        metadata={
            "help": "off | auto (store the teacher's outputs in a first pass for the phases that "
            "read each row more than once, then train on them) | write (store them for every "
            "phase that runs the teacher; with --max-steps 0, only store) | read (train on the "
            "cache at teacher_cache.path; --teacher-cache DIR). Masks of a masked phase become "
            "static: drawn once, when the cache is written.",
            "convert": lambda value, where, source: _convert_mode(value, where, source),
        },
    )
    path: str | None = _opt(
        None, "The cache folder (default: <output-dir>/teacher_cache); read: the cache to read."
    )
    top_k: int = _opt(
        64,
        "Word terms: the teacher's k most likely words stored per token (log-probabilities at "
        "T=1), the rest as one bucket.",
    )
    word_dtype: str = _opt("float16", "Stored word log-probabilities: float16 | float32.")
    hidden_states: bool = _opt(
        False,
        "Store the teacher's hidden states and attention maps for hidden_mse / attention_kl "
        "(large: the size is logged before writing).",
    )


@dataclass
class Recipe:
    method: str = _opt("custom", "Name of the method this recipe reproduces.")
    teacher: str | None = _opt(None, "Teacher: local HF folder or Hub name.")
    word_logits: str = _opt(
        "auto",
        "Word-prediction logits from: embeddings (H·Wᵀ, W the input embeddings) | lm_head | "
        "auto (embeddings for encoders, lm_head for causal LMs and factorised embeddings).",
    )
    word_logit_scale: float | str | None = field(
        default=None,
        metadata={
            "help": "Word logits are multiplied by this before T (teacher and student): a number, "
            "or auto (the maximum-likelihood scale of the teacher's logits for its own unmasked "
            "input tokens, fitted before step 1). Default: auto for embeddings, 1 for lm_head.",
            "convert": lambda value, where, source: _convert_scale(value, where, source),
        },
    )
    word_signal: str = _opt(
        "warn",
        "When a phase's teacher word distributions are near uniform (entropy above 99% of "
        "log V at its temperature): warn | error (exit 2, for CI).",
    )
    pooling: str | None = _opt(
        None,
        "Sentence embeddings (embedding_* terms): auto (the teacher's sentence-transformers "
        "pooling, else mean) | mean | cls | max | lasttoken. Unset: the teacher must say.",
    )
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phases: list[Phase] = field(default_factory=lambda: [Phase()])
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)


# ---------------------------------------------------------------- strict conversion


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(args[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return tp.__name__


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad() -> DistillError:
        return DistillError(
            f"{source}: key '{where}' expects {_type_name(tp)}, got {value!r}; fix the value"
        )

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        try:
            return _convert(value, inner[0], where, source)
        except DistillError:
            raise bad() from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return from_dict(tp, value, where, source)
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        return [_convert(v, args[0], f"{where}.{i}", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return {str(k): _convert(v, args[1], f"{where}.{k}", source) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 as a string
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad()
    if tp is bool and not isinstance(value, bool):
        raise bad()
    if tp is str and not isinstance(value, str):
        raise bad()
    return value


def _convert_scale(value: Any, where: str, source: str) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return _convert(value, float, where, source)
    except DistillError:
        raise DistillError(
            f"{source}: key '{where}' expects auto or a number > 0, got {value!r}; fix the value"
        ) from None


def from_dict(cls: type, raw: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
            raise DistillError(f"{source}: unknown key '{where}'; {hint}")
        convert = fields[key].metadata.get("convert")
        if convert is not None:
            kwargs[key] = convert(value, where, source)
        else:
            kwargs[key] = _convert(value, hints[key], where, source)
    return cls(**kwargs)


def _unknown_term(name: str, where: str, source: str) -> DistillError:
    return DistillError(
        f"{source}: unknown loss term '{name}' in {where}; "
        f"known terms: {', '.join(losses.KD_LOSSES)}"
    )


def _not_taken(name: str, key: str, where: str, source: str) -> DistillError:
    takes = ", ".join(losses.param_names(losses.KD_LOSSES[name].params))
    return DistillError(
        f"{source}: loss term '{name}' takes no parameter '{key}' ({where}.{name}.{key}); "
        f"it takes: {takes}"
    )


def _convert_terms(value: Any, where: str, source: str) -> dict:
    """A phase's terms, each checked against the parameters its registry entry declares."""
    if not isinstance(value, dict):
        raise DistillError(
            f"{source}: key '{where}' expects a mapping of loss terms to their parameters, "
            f"got {value!r}; fix the value"
        )
    terms = {}
    for name, params in value.items():
        name = str(name)
        if name not in losses.KD_LOSSES:
            raise _unknown_term(name, where, source)
        entry = losses.KD_LOSSES[name]
        if isinstance(params, dict):
            for key in params:
                if key not in losses.param_names(entry.params):
                    raise _not_taken(name, key, where, source)
        terms[name] = _convert(params, entry.params, f"{where}.{name}", source)
    return terms


# ---------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DistillError(
            f"recipe file not found: {path}; pass a YAML recipe such as recipes/tkd-nlp.yaml"
        )
    return read_yaml(path, "recipe", "fix it; the recipes in recipes/ are working examples")


def _set_path(raw: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[:i])
                raise DistillError(
                    f"{source}: '{where}' has no item {part}; use 0..{len(node) - 1}"
                )
            part = int(part)
        elif not isinstance(node, dict):
            raise DistillError(f"{source}: '{'.'.join(parts[:i])}' is not a mapping")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]


def _merge(base: dict, over: dict) -> dict:
    """Recipe values over defaults: mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one ``--set a.b=value``; the value is read as YAML (3 -> int, null -> None)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise DistillError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    try:
        value = safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


_TERMS_KEY = re.compile(r"^phases\.(\d+)\.terms(?:\.([^.]+))?(?:\.([^.]+))?")


def _check_term_set(raw: dict, key: str, value: Any, source: str) -> None:
    """``--set phases.N.terms[.NAME[.PARAM]]=...``, checked so that errors name the --set item.

    A term the phase lacks is added only by setting its weight (with a log line); setting any
    other parameter of an absent term is an error listing the phase's terms.
    """
    m = _TERMS_KEY.match(key)
    phases = raw.get("phases")
    if not m or not isinstance(phases, list) or int(m[1]) >= len(phases):
        return  # not a term, or _set_path reports the bad index
    i, name, param = int(m[1]), m[2], m[3]
    where = f"phases.{i}.terms"
    if name is None:  # the whole mapping of terms
        _convert_terms(value, where, source)
        return
    if name not in losses.KD_LOSSES:
        raise _unknown_term(name, where, source)
    given = [param] if param else list(value) if isinstance(value, dict) else []
    for key in given:
        if key not in losses.param_names(losses.KD_LOSSES[name].params):
            raise _not_taken(name, key, where, source)
    phase = phases[i] if isinstance(phases[i], dict) else {}
    terms = phase.get("terms") if isinstance(phase.get("terms"), dict) else {}
    if name in terms:
        return
    if "weight" not in given:
        raise DistillError(
            f"{source}: phase {i} ({phase.get('name')}) has no loss term '{name}' (its terms: "
            f"{', '.join(terms) or 'none'}); to add it, set its weight: "
            f"--set {where}.{name}.weight=1.0"
        )
    log(f"{source}: adding loss term '{name}' to phase {i} ({phase.get('name')})")


def load_recipe(
    path: str | Path | None,
    options: dict[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> Recipe:
    """Merge defaults, the recipe file, typed CLI options (dotted keys) and --set items."""
    raw = _merge(dataclasses.asdict(Recipe()), _read_yaml(Path(path)) if path else {})
    source = str(path) if path else "recipe"
    for key, value in (options or {}).items():
        if value is not None:
            _set_path(raw, key, value, f"option for {key}")
    for item in sets:
        key, value = parse_set(item)
        _check_term_set(raw, key, value, f"--set {item}")
        _set_path(raw, key, value, f"--set {item}")
    return from_dict(Recipe, raw, "", source)


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(dataclasses.asdict(recipe), sort_keys=False)


def help_for(dotted: str) -> str:
    """The help text of a recipe field: the one place option help comes from."""
    cls: Any = Recipe
    *parents, name = dotted.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(dotted)


# ---------------------------------------------------------------- cross-field rules

STUDENT_INITS = ("checkpoint", "truncate", "config")
ATTENTIONS = ("full", "sliding_window", "block_sparse", "longformer")
WINDOW_COMBINES = ("mean", "max")
PRECISIONS = ("no", "fp16", "bf16")
PACKINGS = ("pack", "bucket", "none")
WORD_LOGITS = ("auto", "embeddings", "lm_head")
WORD_SIGNAL = ("warn", "error")
CACHE_MODES = ("off", "auto", "write", "read")
CACHE_DTYPES = ("float16", "float32")
POOLINGS = ("auto", "mean", "cls", "max", "lasttoken")
METRICS = ("accuracy", "f1", "mcc", "pearson", "seqeval", "squad", "squad_v2")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)


def validate(recipe: Recipe, needs_data: bool = True) -> None:
    """Check rules that span fields; collect every problem and raise once."""
    problems: list[str] = []
    s, t, d = recipe.student, recipe.train, recipe.data
    needs_teacher = s.init in ("truncate", "config")
    if not recipe.phases:
        problems.append("'phases' is empty; give at least one phase with loss terms")
    for i, phase in enumerate(recipe.phases):
        if not phase.terms:
            example = losses.DEFAULT_TERMS[0]
            problems.append(f"phases.{i} has no loss terms; add e.g. '{example}: {{weight: 1.0}}'")
        for name, params in phase.terms.items():
            needs_teacher |= losses.KD_LOSSES[name].needs_teacher
            problems += [f"phases.{i}.terms.{name}.{p}" for p in losses.param_problems(params)]
        if not 0 <= phase.mlm_probability < 1:
            problems.append(f"phases.{i}.mlm_probability must be in [0, 1)")
        if phase.epochs is not None and phase.epochs <= 0:
            problems.append(f"phases.{i}.epochs must be > 0")
        if phase.max_steps is not None and phase.max_steps < 1:
            problems.append(f"phases.{i}.max_steps must be >= 1")
        if not 0 <= phase.on_policy <= 1:
            problems.append(f"phases.{i}.on_policy must be in [0, 1] (a share of batches)")
        if not (phase.sample_temperature > 0 and math.isfinite(phase.sample_temperature)):
            problems.append(f"phases.{i}.sample_temperature must be a finite number > 0")
        if phase.sample_max_new_tokens < 1:
            problems.append(f"phases.{i}.sample_max_new_tokens must be >= 1")
    if s.init not in STUDENT_INITS:
        problems.append(f"student.init '{s.init}' is not one of {', '.join(STUDENT_INITS)}")
    if s.init == "checkpoint" and not s.path:
        problems.append("student.init is 'checkpoint' but no path: pass --student PATH")
    if s.init == "truncate" and (s.num_layers is None or s.num_layers < 1):
        problems.append("student.init is 'truncate': set student.num_layers to 1 or more")
    if needs_teacher and not recipe.teacher:
        problems.append("this recipe needs a teacher: pass --teacher PATH_OR_HUB_NAME")
    if needs_data and not d.name:
        problems.append("no data: pass --data NAME_OR_PATH")
    if d.text_columns is not None and len(d.text_columns) not in (1, 2):
        problems.append("data.text_columns must name one or two columns")
    if d.task_type is not None and d.task_type not in tasks.DATA_TASKS:
        problems.append(f"data.task_type must be one of {', '.join(tasks.DATA_TASKS)}")
    cloze_keys = [k for k in ("template", "verbalizers") if getattr(d, k) is not None]
    known = d.task_type in tasks.TASKS
    if cloze_keys and known and not tasks.TASKS[d.task_type].word_head:
        problems.append(
            f"data.{' and data.'.join(cloze_keys)} read the task as a cloze, but data.task_type "
            f"is {d.task_type}; drop data.task_type or set it to "
            f"{next(n for n, t in tasks.TASKS.items() if t.word_head)}"
        )
    if d.metric is not None and d.metric not in METRICS:
        problems.append(f"data.metric must be one of {', '.join(METRICS)}")
    if d.packing not in PACKINGS:
        problems.append(f"data.packing must be one of {', '.join(PACKINGS)}")
    if recipe.word_logits not in WORD_LOGITS:
        problems.append(f"word_logits must be one of {', '.join(WORD_LOGITS)}")
    scale = recipe.word_logit_scale
    if isinstance(scale, float) and not (scale > 0 and math.isfinite(scale)):
        problems.append("word_logit_scale must be auto or a finite number > 0")
    if recipe.word_signal not in WORD_SIGNAL:
        problems.append(f"word_signal must be one of {', '.join(WORD_SIGNAL)}")
    if recipe.pooling is not None and recipe.pooling not in POOLINGS:
        problems.append(f"pooling must be one of {', '.join(POOLINGS)}")
    sentence_terms = sorted(
        {n for p in recipe.phases for n in p.terms if losses.KD_LOSSES[n].needs.embedding}
    )
    if sentence_terms and d.packing == "pack":
        problems.append(
            f"{', '.join(sentence_terms)} embed each text whole: set data.packing: bucket "
            "(or none); packing joins texts into blocks"
        )
    pairwise = [n for n in sentence_terms if losses.KD_LOSSES[n].pairwise]
    if pairwise and t.batch_size < 2:
        problems.append(
            f"{', '.join(pairwise)} compares the texts of a batch with each other: set "
            "train.batch_size to 2 or more"
        )
    if d.max_length < 8:
        problems.append("data.max_length must be at least 8")
    if d.doc_stride < 1:
        problems.append("data.doc_stride must be >= 1")
    if d.teacher_window is not None and d.teacher_window <= d.doc_stride + 2:
        problems.append("data.teacher_window must exceed data.doc_stride + 2")
    if d.window_combine not in WINDOW_COMBINES:
        problems.append(f"data.window_combine must be one of {', '.join(WINDOW_COMBINES)}")
    if d.min_words is not None and d.min_words < 1:
        problems.append("data.min_words must be >= 1")
    if s.attention not in ATTENTIONS:
        problems.append(f"student.attention must be one of {', '.join(ATTENTIONS)}")
    if s.max_position_embeddings is not None and s.max_position_embeddings < 8:
        problems.append("student.max_position_embeddings must be at least 8")
    for key in ("attention_window", "block_size", "num_random_blocks"):
        if getattr(s, key) < 1:
            problems.append(f"student.{key} must be >= 1")
    if d.max_answer_length < 1:
        problems.append("data.max_answer_length must be >= 1")
    if d.train_on not in ("assistant", "all"):
        problems.append("data.train_on must be assistant or all")
    if t.epochs <= 0 and t.max_steps is None:
        problems.append("train.epochs must be > 0 (or set train.max_steps)")
    c = recipe.teacher_cache
    only_cache = c.mode == "write" and t.max_steps == 0  # store the teacher's outputs, no training
    if t.max_steps is not None and t.max_steps < 1 and not only_cache:
        problems.append("train.max_steps must be >= 1 (0 only with teacher_cache.mode=write)")
    if c.mode not in CACHE_MODES:
        problems.append(f"teacher_cache.mode must be one of {', '.join(CACHE_MODES)}")
    if c.mode == "read" and not c.path:
        problems.append("teacher_cache.mode is read but no path: pass --teacher-cache DIR")
    if c.top_k < 1:
        problems.append("teacher_cache.top_k must be >= 1")
    if c.word_dtype not in CACHE_DTYPES:
        problems.append(f"teacher_cache.word_dtype must be one of {', '.join(CACHE_DTYPES)}")
    if t.save_steps is not None and t.save_steps < 1:
        problems.append("train.save_steps must be >= 1, or null for phase ends only")
    if t.max_bad_steps < 0:
        problems.append("train.max_bad_steps must be >= 0")
    keys = ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps")
    for key in (*keys, "save_total_limit"):
        if getattr(t, key) < 1:
            problems.append(f"train.{key} must be >= 1")
    if t.learning_rate <= 0:
        problems.append("train.learning_rate must be > 0")
    if t.weight_decay < 0 or t.max_grad_norm < 0 or t.warmup_steps < 0:
        problems.append("train.weight_decay, max_grad_norm and warmup_steps must be >= 0")
    if not 0 <= t.warmup_ratio < 1:
        problems.append("train.warmup_ratio must be in [0, 1)")
    if t.mixed_precision not in PRECISIONS:
        problems.append(f"train.mixed_precision must be one of {', '.join(PRECISIONS)}")
    if t.optimizer != "adamw":
        problems.append(f"train.optimizer '{t.optimizer}' is not supported; use adamw")
    if t.lr_scheduler not in SCHEDULERS:
        problems.append(f"train.lr_scheduler must be one of {', '.join(SCHEDULERS)}")
    if problems:
        raise DistillError("invalid recipe: " + "; ".join(problems))

"""Bad input through the real entry point: exit code 2, one ``error:`` line, inputs untouched.

Each case runs the console entry point ``distill_cli.cli.main`` (in-process, to save the import
cost of a subprocess per case; tests/test_cli.py runs ``python -m distill_cli`` itself), so its
stderr and its exit code are what is tested. Runs are kept cheap (1 step, tiny fixtures).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distill_cli.cli import main
from distill_cli.outputs import holds_model

REPO = Path(__file__).parents[1]
RECIPES = REPO / "recipes"
TKD = RECIPES / "tkd-nlp.yaml"
CHEAP = ["--max-steps", "1", "--set", "student.num_layers=2", "--set", "train.batch_size=8"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The console entry point ``distill_cli.cli.main``, in-process (no import cost per case).

    An exception escaping main() would be a traceback for the user, so it fails the test as one.
    """
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def snapshot(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under the given files and folders (names included)."""
    digests = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            digests[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def error_lines(stderr: str) -> list[str]:
    return [
        line for line in stderr.splitlines() if line.strip() and not line.startswith("warning:")
    ]


@dataclass
class W:
    """The fixtures a case can use."""

    teacher: Path
    data: Path
    tmp: Path
    other_vocab: Path  # a GPT-2 model with its own BPE vocabulary
    run: Path | None = None  # a finished finetune-distill run with checkpoints (RUN_ARGS)

    @property
    def bad(self) -> Path:
        """A copy of the teacher that a case's setup damages."""
        return self.tmp / "bad-teacher"

    @property
    def out(self) -> Path:
        return self.tmp / "out"


def finetune(w: W, *extra, teacher=None, data=None, recipe=TKD) -> list:
    return [
        "finetune-distill",
        "--recipe",
        recipe,
        "--teacher",
        teacher or w.teacher,
        "--data",
        data or w.data,
        "--output-dir",
        w.out,
        *CHEAP,
        *extra,
    ]


@dataclass
class Case:
    id: str
    args: Callable[[W], list]
    expect: tuple[str, ...]  # substrings of the error line
    inputs: Callable[[W], list[Path]] = lambda w: [w.teacher, w.data, TKD]
    setup: Callable[[W], None] = lambda w: None
    marks: list = field(default_factory=list)
    check: Callable[[W], None] = lambda w: None  # anything else the case must leave true
    needs_run: bool = False  # w.run: a finished run to copy (trained once per module)


def _empty_teacher(w: W) -> None:
    (w.tmp / "empty-teacher").mkdir()


def _typo_recipe(w: W) -> None:
    (w.tmp / "typo.yaml").write_text("train: {epoch: 3}\n")


def _held_output(w: W) -> None:
    shutil.copytree(w.teacher, w.out)


def _user_metrics(w: W) -> None:
    w.out.mkdir()
    (w.out / "metrics.jsonl").write_text('{"mine": 1}\n')


def _foreign_run_json(w: W) -> None:
    w.out.mkdir()
    (w.out / "run.json").write_text('{"wrote": ["../../home"]}\n')
    (w.out / "notes.txt").write_text("mine")


def _truncated_weights(w: W) -> None:
    shutil.copytree(w.teacher, w.bad)
    weights = w.bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _no_tokenizer(w: W) -> None:
    shutil.copytree(w.teacher, w.bad, ignore=shutil.ignore_patterns("tokenizer*", "vocab*"))


def _config_disagrees(w: W) -> None:
    shutil.copytree(w.teacher, w.bad)
    config = json.loads((w.bad / "config.json").read_text())
    config["intermediate_size"] += 16
    (w.bad / "config.json").write_text(json.dumps(config))


class _RunsCode:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _unsafe_pickle(w: W) -> None:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(w.teacher, w.bad, ignore=shutil.ignore_patterns("*.safetensors"))
    state = load_file(w.teacher / "model.safetensors")
    torch.save({**state, "extra": _RunsCode(w.tmp / "code-ran")}, w.bad / "pytorch_model.bin")


def _empty_texts(w: W) -> None:
    data = w.tmp / "blank-data"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.csv").write_text('text,label\n"",pos\n" ",neg\n')


def _python_tag_recipe(w: W) -> None:
    marker = w.tmp / "code-ran"
    (w.tmp / "tagged.yaml").write_text(
        f'train: !!python/object/apply:os.system ["touch {marker}"]\n'
    )


def _bad_teacher_inputs(w: W) -> list[Path]:
    return [w.bad, w.data, TKD]


# ---- damaged user files: a setup copies the teacher or the data and writes one file


def _damage(folder: str, name: str, content: str | bytes) -> Callable[[W], None]:
    """Copy the teacher (bad-teacher, bad-model) or the data (bad-data); write ``name``."""

    def setup(w: W) -> None:
        target = w.tmp / folder
        if not target.exists():
            source = w.data if folder == "bad-data" else w.teacher
            shutil.copytree(source, target)
        (target / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _then(*setups: Callable[[W], None]) -> Callable[[W], None]:
    def setup(w: W) -> None:
        for s in setups:
            s(w)

    return setup


def _drop(folder: str, name: str) -> Callable[[W], None]:
    return lambda w: (w.tmp / folder / name).unlink()


def _bad_data_inputs(w: W) -> list[Path]:
    return [w.teacher, w.tmp / "bad-data", TKD]


def _as_student(w: W) -> list:
    """finetune-distill from a student folder (bad-teacher), as compress-vocab writes one."""
    return finetune(w, "--student", w.bad, "--set", "student.init=checkpoint")


VOCAB_MAP = json.dumps({"kept_ids": [0, 1], "dropped": {"2": 0}, "vocab_size_before": 3})


def _unfinished_run(w: W) -> None:
    """The run folder as a kill before the model save leaves it: checkpoints, no model, and
    run.json still saying running."""
    shutil.copytree(w.run, w.out)
    (w.out / "model.safetensors").unlink()
    record = json.loads((w.out / "run.json").read_text())
    (w.out / "run.json").write_text(json.dumps({**record, "status": "running"}))


def _checkpoint_file(name: str, content: bytes | None = None, cut: int | None = None):
    def setup(w: W) -> None:
        _unfinished_run(w)
        path = w.out / "checkpoints" / "checkpoint-1" / name
        path.write_bytes(content if content is not None else path.read_bytes()[:cut])

    return setup


def _resume(w: W) -> list:
    return [*finetune(w), *RUN_ARGS, "--resume"]


def _run_inputs(w: W) -> list[Path]:
    return [w.teacher, w.data, TKD, w.out / "checkpoints"]


def _export(w: W) -> list:
    return ["export", w.bad, "--format", "hf", "--output-dir", w.tmp / "exported"]


def _nothing_exported(w: W) -> None:
    left = [p.name for p in w.tmp.iterdir() if "exported" in p.name]
    assert not left, f"export left {left} behind"


CASES = [
    Case(
        "missing-teacher-folder",
        lambda w: finetune(w, teacher=w.tmp / "no-such-teacher"),
        ("no-such-teacher", "folder not found"),
    ),
    Case(
        "unknown-hub-teacher-offline",
        lambda w: finetune(w, teacher="nobody/does-not-exist"),
        ("nobody/does-not-exist", "not cached locally"),
    ),
    Case(
        "teacher-not-hf-model",
        lambda w: finetune(w, teacher=w.tmp / "empty-teacher"),
        ("empty-teacher", "not a Hugging Face model folder"),
        inputs=lambda w: [w.tmp / "empty-teacher", w.data, TKD],
        setup=_empty_teacher,
    ),
    Case(
        "missing-data-file",
        lambda w: finetune(w, data=w.tmp / "no-such-data.csv"),
        ("data file not found", "no-such-data.csv"),
    ),
    Case(
        "missing-column",
        lambda w: finetune(w, "--set", "data.text_columns=[review]"),
        ("column 'review' not found",),
    ),
    Case(
        "label-outside-label-set",
        lambda w: finetune(w, "--set", "data.labels=[neg,meh]"),
        ("label 'pos'", "not in the label set"),
    ),
    Case(
        "recipe-key-typo",
        lambda w: finetune(w, recipe=w.tmp / "typo.yaml"),
        ("unknown key 'train.epoch'", "did you mean 'epochs'"),
        inputs=lambda w: [w.teacher, w.data, w.tmp / "typo.yaml"],
        setup=_typo_recipe,
    ),
    Case(
        "recipe-python-tag",
        lambda w: finetune(w, recipe=w.tmp / "tagged.yaml"),
        ("tagged.yaml", "not valid YAML"),
        inputs=lambda w: [w.teacher, w.data, w.tmp / "tagged.yaml"],
        setup=_python_tag_recipe,
        check=lambda w: not (w.tmp / "code-ran").exists() or pytest.fail("the recipe ran code"),
    ),
    Case(
        "recipe-wrong-type",
        lambda w: finetune(w, "--set", "train.batch_size=lots"),
        ("train.batch_size", "expects int", "'lots'"),
    ),
    Case(
        "unknown-loss-term",
        lambda w: finetune(w, "--set", "phases.0.terms={bogus: {weight: 1.0}}"),
        ("unknown loss term 'bogus'",),
    ),
    Case(
        "missing-recipe-file",
        lambda w: finetune(w, recipe=w.tmp / "no-such-recipe.yaml"),
        ("recipe file not found", "no-such-recipe.yaml"),
        inputs=lambda w: [w.teacher, w.data],
    ),
    Case(
        "output-holds-model-distill-did-not-write",
        lambda w: finetune(w),
        ("already holds a model that distill did not write", "config.json", "--overwrite"),
        inputs=lambda w: [w.teacher, w.data, TKD, w.out],
        setup=_held_output,
    ),
    Case(
        "output-holds-model-distill-did-not-write-overwrite",
        lambda w: finetune(w, "--overwrite"),
        ("already holds a model that distill did not write", "--overwrite only replaces"),
        inputs=lambda w: [w.teacher, w.data, TKD, w.out],
        setup=_held_output,
    ),
    Case(
        "output-holds-a-file-the-run-writes",
        lambda w: finetune(w),
        ("holds metrics.jsonl, which distill did not write", "move it away"),
        inputs=lambda w: [w.teacher, w.data, TKD, w.out],
        setup=_user_metrics,
    ),
    Case(
        "output-run-json-not-ours",
        lambda w: finetune(w, "--overwrite"),
        ("run.json is not a run record written by distill",),
        inputs=lambda w: [w.teacher, w.data, TKD, w.out],
        setup=_foreign_run_json,
    ),
    Case(
        "tkd-recipe-without-teacher",
        lambda w: [
            "finetune-distill",
            "--recipe",
            TKD,
            "--data",
            w.data,
            "--output-dir",
            w.out,
            *CHEAP,
        ],  # fmt: skip
        ("this recipe needs a teacher: pass --teacher",),
    ),
    Case(
        "recipe-missing-required-value",
        lambda w: finetune(w, "--set", "student.init=checkpoint"),
        ("student.init is 'checkpoint' but no path", "--student"),
    ),
    Case(
        "temperature-not-positive",
        lambda w: finetune(w, "--set", "phases.0.terms.soft_label_kl.temperature=0"),
        ("soft_label_kl.temperature must be > 0",),
    ),
    Case(
        "negative-weight",
        lambda w: finetune(w, "--set", "phases.0.terms.ce.weight=-0.5"),
        ("ce.weight must be >= 0",),
    ),
    Case(
        "term-parameter-not-taken",
        lambda w: finetune(w, "--set", "phases.0.terms.ce.temperature=2"),
        ("loss term 'ce' takes no parameter 'temperature'", "it takes: weight"),
    ),
    Case(
        "set-on-absent-term",
        lambda w: finetune(w, "--set", "phases.0.terms.word_kl.temperature=5"),
        ("no loss term 'word_kl'", "its terms: soft_label_kl, ce", "word_kl.weight=1.0"),
    ),
    Case(
        "layer-map-does-not-fit",
        lambda w: finetune(w, "--set", "phases.0.terms.hidden_mse={weight: 1, layer_map: [2, 9]}"),
        ("phases.0.terms.hidden_mse: layer_map [2, 9]", "(1..4)", "fix layer_map"),
        check=lambda w: not (w.out / "metrics.jsonl").exists() or pytest.fail("it trained"),
    ),
    Case(
        "ratio-outside-range",
        lambda w: [
            "compress-vocab",
            w.teacher,
            "--teacher",
            w.teacher,
            "--corpus",
            w.data / "train.csv",
            "--ratio",
            "1.5",
            "--output-dir",
            w.out,
        ],  # fmt: skip
        ("--ratio must be in (0, 1]",),
        inputs=lambda w: [w.teacher, w.data],
    ),
    Case(
        "data-empty-after-filtering",
        lambda w: finetune(w, data=w.tmp / "blank-data"),
        ("split 'train'", "is empty after dropping 2 rows without text"),
        inputs=lambda w: [w.teacher, w.tmp / "blank-data", TKD],
        setup=_empty_texts,
    ),
    Case(
        "truncated-safetensors",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher", "corrupted or truncated safetensors"),
        inputs=_bad_teacher_inputs,
        setup=_truncated_weights,
    ),
    Case(
        "checkpoint-without-tokenizer",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher", "has no tokenizer files"),
        inputs=_bad_teacher_inputs,
        setup=_no_tokenizer,
    ),
    Case(
        "config-and-weights-disagree",
        lambda w: finetune(w, teacher=w.bad),
        ("config.json and the weights disagree", "intermediate.dense.bias", "[96]", "[112]"),
        inputs=_bad_teacher_inputs,
        setup=_config_disagrees,
    ),
    Case(
        "pickle-that-runs-code",
        lambda w: finetune(w, teacher=w.bad),
        ("refusing to load teacher", "posix.system", "safetensors"),
        inputs=_bad_teacher_inputs,
        setup=_unsafe_pickle,
        check=lambda w: not (w.tmp / "code-ran").exists() or pytest.fail("the pickle ran code"),
    ),
    Case(
        "mismatched-vocabularies",
        lambda w: finetune(w, "--student", w.other_vocab, recipe=RECIPES / "glmd-finetune.yaml"),
        ("word_kl", "must share a tokenizer"),
        inputs=lambda w: [w.teacher, w.data, w.other_vocab, RECIPES / "glmd-finetune.yaml"],
    ),
    Case(
        "conflicting-flags-resume-overwrite",
        lambda w: finetune(w, "--resume", "--overwrite"),
        ("--resume and --overwrite conflict",),
    ),
    Case(
        "resume-without-checkpoint",
        lambda w: finetune(w, "--resume"),
        ("--resume: no checkpoint", "drop --resume"),
    ),
    Case(
        "evaluate-missing-model",
        lambda w: ["evaluate", w.tmp / "no-such-model", "--data", w.data],
        ("model folder not found", "no-such-model"),
        inputs=lambda w: [w.data],
    ),
    Case(
        "evaluate-missing-split",
        lambda w: ["evaluate", w.teacher, "--data", w.data, "--split", "nosuch"],
        ("split 'nosuch' not found",),
        inputs=lambda w: [w.teacher, w.data],
    ),
    # every kind of file a user hands us: not valid JSON / YAML / CSV, or the wrong shape
    Case(
        "config-not-json",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/config.json", "not valid JSON", "line 1 column"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "config.json", '{"model_type": '),
    ),
    Case(
        "config-not-an-object",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/config.json", "must hold a JSON object, not list"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "config.json", "[1, 2]"),
    ),
    Case(
        "config-wrong-type",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/config.json", "'num_hidden_layers' must be an integer, not str"),
        inputs=_bad_teacher_inputs,
        setup=_damage(
            "bad-teacher", "config.json", '{"model_type": "bert", "num_hidden_layers": "4"}'
        ),
    ),
    Case(
        "weights-index-not-json",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/model.safetensors.index.json", "not valid JSON"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "model.safetensors.index.json", '{"weight_map": {'),
    ),
    Case(
        "tokenizer-json-not-json",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/tokenizer.json", "not valid JSON"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "tokenizer.json", '{"version": "1.0", "model": {'),
    ),
    Case(
        "tokenizer-config-not-json",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/tokenizer_config.json", "not valid JSON"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "tokenizer_config.json", "{'single': 'quotes'}"),
    ),
    Case(
        "special-tokens-map-not-an-object",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/special_tokens_map.json", "must hold a JSON object, not str"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "special_tokens_map.json", '"[CLS]"'),
    ),
    Case(
        "vocab-txt-not-utf8",
        lambda w: finetune(w, teacher=w.bad),
        ("bad-teacher/vocab.txt", "not UTF-8"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "vocab.txt", b"[PAD]\n\xff\xfe\n"),
    ),
    Case(
        "recipe-not-yaml",
        lambda w: finetune(w, recipe=w.tmp / "broken.yaml"),
        ("broken.yaml", "not valid YAML at line 3: expected ',' or ']'", "from line 2"),
        inputs=lambda w: [w.teacher, w.data, w.tmp / "broken.yaml"],
        setup=lambda w: (w.tmp / "broken.yaml").write_text("train:\n  epochs: [3\n"),
    ),
    Case(
        "recipe-not-a-mapping",
        lambda w: finetune(w, recipe=w.tmp / "list.yaml"),
        ("list.yaml", "must hold a YAML mapping of keys, not list"),
        inputs=lambda w: [w.teacher, w.data, w.tmp / "list.yaml"],
        setup=lambda w: (w.tmp / "list.yaml").write_text("- train\n- data\n"),
    ),
    Case(
        "csv-unclosed-quote",
        lambda w: finetune(w, data=w.tmp / "bad-data"),
        ("bad-data/train.csv", "EOF inside string", "valid CSV"),
        inputs=_bad_data_inputs,
        setup=_damage("bad-data", "train.csv", 'text,label\n"a good film,pos\nbad,neg\n'),
    ),
    Case(
        "csv-row-with-extra-fields",
        lambda w: finetune(w, data=w.tmp / "bad-data"),
        ("bad-data/train.csv", "more fields than the header"),
        inputs=_bad_data_inputs,
        setup=_damage("bad-data", "train.csv", "text,label\ngood, fine film,pos\nbad,neg\n"),
    ),
    Case(
        "csv-not-utf8",
        lambda w: finetune(w, data=w.tmp / "bad-data"),
        ("bad-data/train.csv", "not UTF-8"),
        inputs=_bad_data_inputs,
        setup=_damage("bad-data", "train.csv", b"text,label\n\xff\xfe,pos\n"),
    ),
    Case(
        "json-data-not-json",
        lambda w: finetune(w, data=w.tmp / "bad-data"),
        ("bad-data/train.json", "valid JSON"),
        inputs=_bad_data_inputs,
        setup=_then(
            _damage("bad-data", "train.json", '[{"text": "good", "label": '),
            _drop("bad-data", "train.csv"),
        ),
    ),
    Case(
        "jsonl-data-cut-short",
        lambda w: finetune(w, data=w.tmp / "bad-data"),
        ("bad-data/train.jsonl", "valid JSON lines"),
        inputs=_bad_data_inputs,
        setup=_then(
            _damage("bad-data", "train.jsonl", '{"text": "good", "label": "pos"}\n{"text": "b'),
            _drop("bad-data", "train.csv"),
        ),
    ),
    Case(
        "parquet-data-not-parquet",
        lambda w: finetune(w, data=w.tmp / "bad-data"),
        ("bad-data/train.parquet", "valid Parquet"),
        inputs=_bad_data_inputs,
        setup=_then(
            _damage("bad-data", "train.parquet", "text,label\ngood,pos\n"),
            _drop("bad-data", "train.csv"),
        ),
    ),
    Case(
        "text-corpus-not-utf8",
        lambda w: [
            "compress-vocab",
            w.teacher,
            "--teacher",
            w.teacher,
            "--corpus",
            w.tmp / "corpus.txt",
            "--ratio",
            "0.5",
            "--output-dir",
            w.out,
        ],  # fmt: skip
        ("corpus.txt", "not UTF-8", "one document per line"),
        inputs=lambda w: [w.teacher, w.tmp / "corpus.txt"],
        setup=lambda w: (w.tmp / "corpus.txt").write_bytes(b"good film\n\xe9t\xe9\n"),
    ),
    Case(
        "vocab-map-not-json",
        _as_student,
        ("bad-teacher/vocab_map.json", "not valid JSON", "compress-vocab"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "vocab_map.json", '{"kept_ids": [0, 1'),
    ),
    Case(
        "vocab-map-missing-key",
        _as_student,
        ("bad-teacher/vocab_map.json", "has no 'dropped'"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "vocab_map.json", '{"kept_ids": [], "vocab_size_before": 3}'),
    ),
    Case(
        "vocab-map-of-another-teacher",
        _as_student,
        ("bad-teacher/vocab_map.json", "for a teacher with 3 vocabulary rows"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "vocab_map.json", VOCAB_MAP),
    ),
    Case(
        "compression-json-not-json",
        _as_student,
        ("bad-teacher/compression.json", "not valid JSON"),
        inputs=_bad_teacher_inputs,
        setup=_damage("bad-teacher", "compression.json", "{"),
    ),
    Case(
        "evaluate-resolved-recipe-not-yaml",
        lambda w: ["evaluate", w.bad, "--data", w.data],
        ("bad-teacher/resolved_recipe.yaml", "not valid YAML"),
        inputs=lambda w: [w.bad, w.data],
        setup=_damage("bad-teacher", "resolved_recipe.yaml", "data: {name: [\n"),
    ),
    Case(
        "evaluate-resolved-recipe-wrong-shape",
        lambda w: ["evaluate", w.bad, "--data", w.data],
        ("bad-teacher/resolved_recipe.yaml", "'data' must be a mapping or null, not int"),
        inputs=lambda w: [w.bad, w.data],
        setup=_damage("bad-teacher", "resolved_recipe.yaml", "data: 3\n"),
    ),
    Case(
        "evaluate-onnx-not-onnx",
        lambda w: ["evaluate", w.tmp / "bad-model", "--data", w.data],
        ("bad-model/model.onnx", "could not read ONNX model"),
        inputs=lambda w: [w.tmp / "bad-model", w.data],
        setup=_then(
            _damage("bad-model", "model.onnx", b"not a protobuf"),
            _drop("bad-model", "model.safetensors"),
        ),
    ),
    Case(
        "export-evaluation-json-not-json",
        _export,
        ("bad-teacher/evaluation.json", "not valid JSON"),
        inputs=lambda w: [w.bad],
        setup=_damage("bad-teacher", "evaluation.json", '{"models": '),
        check=_nothing_exported,
    ),
    Case(
        "export-train-results-not-an-object",
        _export,
        ("bad-teacher/train_results.json", "must hold a JSON object, not list"),
        inputs=lambda w: [w.bad],
        setup=_damage("bad-teacher", "train_results.json", "[1]"),
        check=_nothing_exported,
    ),
    Case(
        "export-compression-json-incomplete",
        _export,
        ("bad-teacher/compression.json", "key 'vocab_before' is missing"),
        inputs=lambda w: [w.bad],
        setup=_damage("bad-teacher", "compression.json", '{"remapped_share": "lots"}'),
        check=_nothing_exported,
    ),
    Case(
        "resume-trainer-state-not-json",
        _resume,
        ("checkpoint-1/trainer_state_0.json", "not valid JSON", "delete", "--overwrite"),
        inputs=_run_inputs,
        setup=_checkpoint_file("trainer_state_0.json", b'{"position": {"step": 1'),
        needs_run=True,
    ),
    Case(
        "resume-trainer-state-missing-key",
        _resume,
        ("checkpoint-1/trainer_state_0.json", "has no 'scheduler'"),
        inputs=_run_inputs,
        setup=_checkpoint_file("trainer_state_0.json", b'{"position": {"step": 1}}'),
        needs_run=True,
    ),
    Case(
        "resume-optimizer-truncated",
        _resume,
        ("could not read checkpoint", "checkpoint-1: PytorchStreamReader failed", "delete"),
        inputs=_run_inputs,
        setup=_checkpoint_file("optimizer.bin", cut=200),
        needs_run=True,
    ),
    Case(
        "resume-weights-truncated",
        _resume,
        ("could not read checkpoint", "checkpoint-1: Error while deserializing header"),
        inputs=_run_inputs,
        setup=_checkpoint_file("model.safetensors", cut=200),
        needs_run=True,
    ),
    Case(
        "resume-run-record-not-json",
        _resume,
        ("out/run.json is not a run record written by distill", "move it away"),
        inputs=_run_inputs,
        setup=lambda w: (_unfinished_run(w), (w.out / "run.json").write_text('{"tool": ')),
        needs_run=True,
    ),
    Case(
        "bad-flag",
        lambda w: ["finetune-distill", "--output-dir", w.out, "--no-such-flag"],
        ("--no-such-flag",),
        inputs=lambda w: [w.teacher, w.data, TKD],
    ),
]


# --- an --output-dir that is an input, lies inside one or holds one: every command and input ---

AREA = "area"  # each case puts its own copy of the input under test in tmp/area
PLACED = {"teacher": "teacher", "student": "student", "model": "model", "data": "data"}
PLACED.update(corpus="corpus.txt", recipe="recipe.yaml")
ROLES = {
    "finetune-distill": ("teacher", "student", "data", "recipe"),
    "pretrain-distill": ("teacher", "corpus"),
    "compress-vocab": ("model", "teacher", "corpus"),
    "export": ("model",),
    "evaluate": ("model", "teacher", "data"),
}
RELATIONS = {"is": "is the", "inside": "lies inside the", "holds": "holds the"}


def _placed(w: W, role: str) -> Path:
    return w.tmp / AREA / PLACED[role]


def _place(role: str) -> Callable[[W], None]:
    def setup(w: W) -> None:
        dst = _placed(w, role)
        dst.parent.mkdir()
        if role in ("teacher", "student", "model"):
            shutil.copytree(w.teacher, dst)
        elif role == "data":
            shutil.copytree(w.data, dst)
        elif role == "recipe":
            shutil.copy2(TKD, dst)
        else:
            dst.write_text("the movie was good\nthe film was dull\n" * 20)

    return setup


def _overlap_args(command: str, role: str, relation: str, overwrite: bool):
    def args(w: W) -> list:
        def get(r: str, default):
            return _placed(w, r) if r == role else default

        out = {"is": _placed(w, role), "inside": _placed(w, role) / "sub"}.get(
            relation, w.tmp / AREA
        )
        corpus = get("corpus", w.data / "train.csv")
        model, teacher = get("model", w.teacher), get("teacher", w.teacher)
        built = {
            "finetune-distill": [
                "finetune-distill", "--recipe", get("recipe", TKD), "--teacher", teacher,
                "--data", get("data", w.data), *CHEAP,
                *(["--student", _placed(w, role)] if role == "student" else []),
            ],
            "pretrain-distill": [
                "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml",
                "--teacher", teacher, "--data", corpus, "--max-steps", "1",
            ],
            "compress-vocab": ["compress-vocab", model, "--teacher", teacher, "--corpus", corpus],
            "export": ["export", model, "--format", "hf"],
            "evaluate": ["evaluate", model, "--teacher", teacher, "--data", get("data", w.data)],
        }[command]  # fmt: skip
        return [*built, "--output-dir", out, *(["--overwrite"] if overwrite else [])]

    return args


def _overlap_cases() -> list[Case]:
    cases = []
    for command, roles in ROLES.items():
        for role in roles:
            shown = "data" if command == "pretrain-distill" and role == "corpus" else role
            for relation, words in RELATIONS.items():
                for overwrite in (False, True) if command != "evaluate" else (False,):
                    cases.append(
                        Case(
                            f"output-{relation}-{role}-{command}{'-overwrite' * overwrite}",
                            _overlap_args(command, role, relation, overwrite),
                            ("--output-dir", f"{words} {shown} ", PLACED[role]),
                            inputs=lambda w: [w.tmp / AREA, w.teacher, w.data, TKD],
                            setup=_place(role),
                            check=lambda w: (
                                not list((w.tmp / AREA).rglob("sub"))
                                or pytest.fail("--output-dir was created inside an input")
                            ),
                        )
                    )
    return cases


CASES += _overlap_cases()


RUN_ARGS = ["--set", "train.save_steps=1"]


@pytest.fixture(scope="module")
def tiny_run(tiny_teacher, tiny_data_dir, tmp_path_factory) -> Path:
    """One finished 1-step run with checkpoint-1, for the cases that resume from a copy."""
    tmp = tmp_path_factory.mktemp("run")
    w = W(teacher=tiny_teacher, data=tiny_data_dir, tmp=tmp, other_vocab=tiny_teacher)
    result = run_cli([*finetune(w), *RUN_ARGS], cwd=tmp)
    assert result.returncode == 0, result.stderr
    assert (w.out / "checkpoints" / "checkpoint-1" / "optimizer.bin").is_file()
    return w.out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tiny_teacher, tiny_data_dir, tiny_gpt2, tmp_path, request):
    run = request.getfixturevalue("tiny_run") if case.needs_run else None
    w = W(teacher=tiny_teacher, data=tiny_data_dir, tmp=tmp_path, other_vocab=tiny_gpt2, run=run)
    case.setup(w)
    inputs = case.inputs(w)
    before = snapshot(inputs)
    assert before or not inputs, "no input files were hashed"

    result = run_cli(case.args(w), cwd=tmp_path)

    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 2, output
    lines = error_lines(result.stderr)
    # progress lines (e.g. "student: newly initialised weights") may come first; the error ends it
    assert [x for x in lines if x.startswith("error")] == lines[-1:], result.stderr
    line = lines[-1]
    assert line.startswith("error: "), line
    for part in case.expect:
        assert part in line, line
    assert result.stdout.strip() == "", result.stdout
    assert snapshot(inputs) == before, "input files changed"
    case.check(w)


def test_failed_run_leaves_no_model(tiny_teacher, tiny_data_dir, tmp_path):
    w = W(teacher=tiny_teacher, data=tiny_data_dir, tmp=tmp_path, other_vocab=tiny_teacher)
    assert not w.out.exists()
    result = run_cli(finetune(w, "--set", "data.text_columns=[review]"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "column 'review' not found" in result.stderr
    assert not (w.out / "model.safetensors").exists()
    assert not (w.out / "config.json").exists()
    if w.out.exists():
        assert not list(w.out.rglob("*.safetensors"))
    # A retry into the same folder is not refused as "already holds a finished model".
    assert not (w.out.exists() and holds_model(w.out))


def test_empty_and_overlong_texts_are_counted_not_fatal(tiny_teacher, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["good film,pos", "bad film,neg", '"",pos', '" ",neg', " ".join(["long"] * 80) + ",pos"]
    for split in ("train", "validation"):
        (data / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    before = snapshot([data])
    w = W(teacher=tiny_teacher, data=data, tmp=tmp_path, other_vocab=tiny_teacher)
    result = run_cli(finetune(w, "--set", "data.max_length=16"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train: skipped 2 rows with empty text" in result.stderr
    assert "validation: skipped 2 rows with empty text" in result.stderr
    assert "train: 1 texts longer than data.max_length=16 were truncated" in result.stderr
    assert (w.out / "model.safetensors").is_file()
    assert snapshot([data]) == before


def test_model_code_runs_only_with_trust_remote_code(tiny_teacher, tiny_data_dir, tmp_path):
    """A teacher folder that ships its own modeling code (auto_map): ignored unless asked for."""
    teacher = tmp_path / "remote-code-teacher"
    shutil.copytree(tiny_teacher, teacher)
    marker = tmp_path / "code-ran"  # transformers runs a copy of the module from its cache
    (teacher / "modeling_custom.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import BertForSequenceClassification\n"
        "class Custom(BertForSequenceClassification):\n    pass\n"
    )
    config = json.loads((teacher / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.Custom"}
    (teacher / "config.json").write_text(json.dumps(config))
    w = W(teacher=teacher, data=tiny_data_dir, tmp=tmp_path, other_vocab=teacher)

    result = run_cli(finetune(w), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    # the flag is what lets it run (here: our own harmless file)
    result = run_cli(finetune(w, "--overwrite", "--trust-remote-code"), cwd=tmp_path)
    assert marker.exists(), result.stderr

"""The teacher-signal cache through the real CLI: training on stored teacher outputs equals
training online for every task shape, a cache made from other inputs is refused field by field,
a killed write resumes, and its size is checked before writing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import OFFLINE_ENV, RECIPES, invoke, tkd_args
from safetensors.torch import load_file
from test_chat import chat_args, chat_data, chat_llama  # noqa: F401
from test_cloze import cloze_sets, tiny_mlm  # noqa: F401
from test_embedding_distill import st_teacher  # noqa: F401
from test_question_answering import WINDOW as QA_WINDOW
from test_question_answering import qa_data, qa_teacher  # noqa: F401
from test_token_classification import ner_data, ner_teacher  # noqa: F401
from test_windows import LONG_SETS, long_data, long_model, short_model  # noqa: F401

from distill_cli.cache import store
from distill_cli.errors import DistillError
from distill_cli.recipe import load_recipe, validate

AUTO = ("--set", "teacher_cache.mode=auto")
EXACT_WORDS = ("--set", "teacher_cache.top_k=100000", "--set", "teacher_cache.word_dtype=float32")


def weights(out: Path) -> dict:
    return load_file(out / "model.safetensors")


def max_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def cached_and_online(args_for, tmp_path, *cache_sets, tol=1e-6):
    """Train the same run online and from the cache (auto); the final weights agree."""
    online = invoke(*args_for(tmp_path / "online"))
    assert online.exit_code == 0, online.output
    cached = invoke(*args_for(tmp_path / "cached"), *AUTO, *cache_sets)
    assert cached.exit_code == 0, cached.output
    assert "teacher_cache: " in cached.stderr and "rows stored" in cached.stderr
    assert "the teacher is freed before step 1" in cached.stderr
    assert store.is_complete(tmp_path / "cached" / "teacher_cache", "phase-0")
    diff = max_diff(tmp_path / "online", tmp_path / "cached")
    assert diff <= tol, f"cached vs online: max weight diff {diff}"
    return cached


# ---------------------------------------------------------------- exactness, every task shape


def test_sequence_classification(tiny_teacher, tiny_data_dir, tmp_path):
    def args(out):
        return [*tkd_args(tiny_teacher, tiny_data_dir, out), "--set", "train.max_steps=14"]

    cached = cached_and_online(args, tmp_path)
    summary = json.loads((tmp_path / "cached" / "train_results.json").read_text())
    assert summary["steps"] == 14 and "eval" in summary
    assert "B per row" in cached.stderr and "MB" in cached.stderr  # the size, logged


def task_args(teacher, data, out, *extra):
    """A 14-step TKD run on a task folder, as the task modules' tests run it."""
    return [
        "finetune-distill", "--recipe", RECIPES / "tkd-nlp.yaml", "--teacher", teacher,
        "--data", data, "--output-dir", out, "--max-steps", 14, "--set", "train.batch_size=8",
        "--set", "train.learning_rate=1e-3", "--set", "train.logging_steps=1",
        "--set", "student.num_layers=2", *extra,
    ]  # fmt: skip


def test_token_classification(ner_teacher, ner_data, tmp_path):  # noqa: F811
    cached_and_online(lambda out: task_args(ner_teacher, ner_data, out), tmp_path)


def test_question_answering(qa_teacher, qa_data, tmp_path):  # noqa: F811
    cached_and_online(lambda out: task_args(qa_teacher, qa_data, out, *QA_WINDOW), tmp_path)


def test_sentence_embeddings(st_teacher, corpus_file, tmp_path):  # noqa: F811
    def args(out):
        return [
            "pretrain-distill", "--recipe", RECIPES / "embedding.yaml", "--teacher", st_teacher,
            "--data", corpus_file, "--output-dir", out, "--max-steps", 18,
            "--set", "train.batch_size=8", "--set", "student.num_layers=2",
            "--set", "train.mixed_precision=no", "--set", "train.epochs=3",
        ]  # fmt: skip

    cached_and_online(args, tmp_path)


def test_cloze(tiny_mlm, tiny_data_dir, tmp_path):  # noqa: F811
    def args(out):
        extra = ("--set", "train.max_steps=14", *cloze_sets())
        return tkd_args(tiny_mlm, tiny_data_dir, out, *extra)

    cached_and_online(args, tmp_path)


def test_long_documents_read_by_a_windowed_teacher(short_model, long_model, long_data, tmp_path):  # noqa: F811
    def args(out):
        extra = ("--student", long_model, *LONG_SETS, "--set", "student.init=checkpoint")
        extra += ("--set", "train.mixed_precision=no", "--set", "train.max_steps=6")
        return tkd_args(short_model, long_data, out, *extra)

    cached = cached_and_online(args, tmp_path)
    assert "teacher: reads inputs of up to data.max_length=96 tokens through windows" in (
        cached.stderr
    )


def test_word_kd_on_raw_text_with_k_at_least_v_is_exact(tiny_encoder, corpus_file, tmp_path):
    def args(out):
        return [
            "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher",
            tiny_encoder, "--data", corpus_file, "--output-dir", out, "--max-steps", 8,
            "--set", "student.num_layers=2", "--set", "train.batch_size=4",
            "--set", "data.max_length=32", "--set", "phases.0.mlm_probability=0",
            "--set", "train.mixed_precision=no",
        ]  # fmt: skip

    cached_and_online(args, tmp_path, *EXACT_WORDS, tol=1e-5)


def test_chat_response_tokens_with_k_at_least_v_is_exact(chat_llama, chat_data, tmp_path):  # noqa: F811
    def args(out):
        return chat_args(
            chat_llama, chat_data, out, "--set", "train.epochs=3", "--set", "train.max_steps=9"
        )

    cached_and_online(args, tmp_path, *EXACT_WORDS, tol=1e-5)
    part = tmp_path / "cached" / "teacher_cache" / "phase-0"
    reader = store.Reader(part.parent, part.name)
    first = reader.get([0])[0]
    # response tokens only: fewer word rows than the conversation's tokens
    assert first["ids"].shape[0] < 96 and set(first) >= {"ids", "logp", "tail@1"}


# ---------------------------------------------------------------- write once, read many


def write_only(args_for, out):
    """Store the teacher's outputs and train nothing (mode write, max_steps 0)."""
    return invoke(*args_for(out), "--set", "teacher_cache.mode=write", "--set", "train.max_steps=0")


def tkd14(teacher, data):
    return lambda out, *extra: [
        *tkd_args(teacher, data, out),
        "--set",
        "train.max_steps=14",
        *extra,
    ]


def test_write_once_then_train_from_the_cache_without_the_teacher_option(
    tiny_teacher, tiny_data_dir, tmp_path
):
    args = tkd14(tiny_teacher, tiny_data_dir)
    written = write_only(args, tmp_path / "C")
    assert written.exit_code == 0, written.output
    assert "no student trained" in written.stderr
    cache = tmp_path / "C" / "teacher_cache"
    assert (
        store.is_complete(cache, "phase-0") and not (tmp_path / "C" / "model.safetensors").exists()
    )
    again = write_only(args, tmp_path / "C")  # safe to rerun in a pipeline
    assert again.exit_code == 0 and "already finished" in again.output, again.output

    online = invoke(*args(tmp_path / "online"))
    assert online.exit_code == 0, online.output
    read_args = [a for a in args(tmp_path / "S2") if a != tiny_teacher]
    read_args.remove("--teacher")  # the manifest names the teacher
    read = invoke(*read_args, "--teacher-cache", cache)
    assert read.exit_code == 0, read.output
    assert "the teacher is freed before step 1" in read.stderr and "rows stored" not in read.stderr
    assert max_diff(tmp_path / "online", tmp_path / "S2") <= 1e-6
    recipe = (tmp_path / "S2" / "resolved_recipe.yaml").read_text()
    assert "mode: read" in recipe and str(cache) in recipe

    # the cache is an input of the run that reads it: never its output
    inside = invoke(*args(cache / "out"), "--teacher-cache", cache)
    assert "never writes where it reads" in error_line(inside)
    into_teacher = ("--set", f"teacher_cache.path={tiny_teacher}/cache", *AUTO)
    line = error_line(invoke(*args(tmp_path / "T"), *into_teacher))
    assert line.startswith("error: teacher_cache.path ") and "lies inside the teacher" in line


def _copy_with(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    change(dst)
    return dst


def _other_weights(folder: Path) -> None:
    from safetensors.torch import save_file

    w = load_file(folder / "model.safetensors")
    name = next(iter(w))
    w[name] = w[name] + 1e-3
    save_file(w, folder / "model.safetensors", metadata={"format": "pt"})


def _other_tokenizer(folder: Path) -> None:
    """No lowercasing: the same ids for the (lowercase) data, another tokenizer."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))


def test_a_cache_made_from_other_inputs_is_refused_naming_the_field(
    tiny_teacher, tiny_data_dir, tmp_path
):
    args = tkd14(tiny_teacher, tiny_data_dir)
    assert write_only(args, tmp_path / "C").exit_code == 0
    cache = tmp_path / "C" / "teacher_cache"

    def read(out, *extra, teacher=tiny_teacher, data=tiny_data_dir):
        return error_line(
            invoke(*tkd14(teacher, data)(tmp_path / out, *extra), "--teacher-cache", cache)
        )

    other = _copy_with(tiny_teacher, tmp_path / "other-teacher", _other_weights)
    assert "was made with the teacher" in read("t", teacher=other)
    retok = _copy_with(tiny_teacher, tmp_path / "other-tok", _other_tokenizer)
    assert "was made with the tokenizer" in read("k", teacher=retok)
    line = read("m", "--set", "data.max_length=64")
    assert "data.max_length 128, this run has 64" in line and "teacher_cache.mode=write" in line
    assert "data.max_train_samples null, this run has 40" in read(
        "n", "--set", "data.max_train_samples=40"
    )
    data = _copy_with(
        tiny_data_dir,
        tmp_path / "other-data",
        lambda d: (d / "train.csv").write_text(
            (d / "train.csv").read_text().replace("movie", "film")
        ),
    )
    assert "training rows (their token ids)" in read("d", data=data)
    moved = shutil.copytree(tiny_data_dir, tmp_path / "moved-data")  # the same rows elsewhere
    same = invoke(*tkd14(tiny_teacher, moved)(tmp_path / "moved"), "--teacher-cache", cache)
    assert same.exit_code == 0, same.output
    terms = "phases.0.terms={soft_label_kl: {weight: 1.0}, hidden_mse: {weight: 1.0}}"
    line = read("h", "--set", terms, "--set", "teacher_cache.hidden_states=true")
    assert "phase 'task' storing" in line
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    assert "format version 99" in read("v")
    (cache / "manifest.json").write_text("{not json")
    assert "teacher cache manifest" in read("j")
    (cache / "manifest.json").unlink()
    assert "holds no teacher cache" in read("none")


def test_word_settings_of_a_cache_are_checked(tiny_encoder, corpus_file, tmp_path):
    def args(out, *extra):
        return [
            "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher",
            tiny_encoder, "--data", corpus_file, "--output-dir", out, "--max-steps", 4,
            "--set", "student.num_layers=2", "--set", "train.batch_size=8",
            "--set", "data.max_length=32", "--set", "train.mixed_precision=no", *extra,
        ]  # fmt: skip

    written = write_only(args, tmp_path / "C")
    assert written.exit_code == 0, written.output
    assert "B per word-KD token" in written.stderr
    cache = tmp_path / "C" / "teacher_cache"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["parts"]["phase-0"]["mlm_probability"] == 0.15  # static masks stored
    record = store.Reader(cache, "phase-0").get([0])[0]
    assert record["ids"].shape[1] == 64 and record["logp"].dtype == torch.float16
    assert record["inputs"].dtype == torch.int32  # the masked ids, read at every pass

    def read(out, *extra):
        return invoke(*args(tmp_path / out, *extra), "--teacher-cache", cache)

    assert "teacher_cache.top_k 64, this run has 32" in error_line(
        read("k", "--set", "teacher_cache.top_k=32")
    )
    assert "phase 'pretrain' temperature 15.0, this run has 2.0" in error_line(
        read("t", "--set", "phases.0.terms.word_kl.temperature=2.0")
    )
    assert "phase 'pretrain' mlm_probability" in error_line(
        read("p", "--set", "phases.0.mlm_probability=0.3")
    )
    ok = read("ok")
    assert ok.exit_code == 0, ok.output
    assert "teacher freed" not in ok.stderr and "the teacher is freed" in ok.stderr
    assert "agrees with the teacher" in ok.stderr  # its top-1 kept from before it was freed


def test_hidden_states_are_stored_only_when_asked(tiny_teacher, tiny_data_dir, tmp_path):
    terms = "phases.0.terms={soft_label_kl: {weight: 1.0}, hidden_mse: {weight: 1.0}}"

    def args(out):
        return [*tkd14(tiny_teacher, tiny_data_dir)(out), "--set", terms]

    line = error_line(invoke(*args(tmp_path / "no"), *AUTO))
    assert "teacher_cache.hidden_states: true" in line and "hidden_mse" in line
    cached_and_online(args, tmp_path, "--set", "teacher_cache.hidden_states=true")
    assert (
        "(hidden states: large)"
        in invoke(
            *args(tmp_path / "again"), *AUTO, "--set", "teacher_cache.hidden_states=true"
        ).stderr
    )


def test_the_size_estimate_and_too_little_room(tiny_teacher, tiny_data_dir, tmp_path, monkeypatch):
    import shutil as sh

    real = sh.disk_usage

    def little_room_for_the_cache(path):
        usage = real(path)
        if "teacher_cache" in str(path):
            return usage._replace(free=1000)
        return usage

    monkeypatch.setattr(sh, "disk_usage", little_room_for_the_cache)
    result = invoke(*tkd14(tiny_teacher, tiny_data_dir)(tmp_path / "full"), *AUTO)
    line = error_line(result)
    assert "teacher cache" in line and "MB free" in line and "free space" in line
    assert "B per row × 48 rows" in result.stderr  # the estimate came first
    assert not store.is_complete(tmp_path / "full" / "teacher_cache", "phase-0")


# ---------------------------------------------------------------- kills and processes

SLOW_WRITER = """
import sys, time
from distill_cli.cache import store
add = store.ShardWriter.add
store.ShardWriter.__init__.__defaults__ = (0, 64)  # a shard every 8 rows
def slow(self, row, record):
    time.sleep(0.05)
    return add(self, row, record)
store.ShardWriter.add = slow
from distill_cli.cli import main
main(sys.argv[1:])
"""


def test_a_kill_during_the_write_then_a_rerun_resumes_it(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "killed"
    args = [str(a) for a in tkd14(tiny_teacher, tiny_data_dir)(out, *AUTO)]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, *args[0:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=OFFLINE_ENV,
    )  # fmt: skip
    part = out / "teacher_cache" / "phase-0"
    deadline = time.monotonic() + 120
    while len(store.shards(part.parent, part.name)) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the slowed write never stored two shards"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    kept = store.written_rows(part.parent, part.name)
    assert 16 <= len(kept) < 48 and not store.is_complete(part.parent, part.name)
    assert not (out / "model.safetensors").exists()
    # a half-written cache is never read as one
    line = error_line(
        invoke(
            *tkd14(tiny_teacher, tiny_data_dir)(tmp_path / "r"),
            "--teacher-cache",
            out / "teacher_cache",
        )
    )
    assert "not complete" in line or "write the cache again" in line

    again = invoke(*args)  # the same command: the write resumes, then training
    assert again.exit_code == 0, again.output
    assert f"{len(kept)} rows already stored, resuming" in again.stderr
    online = invoke(*tkd14(tiny_teacher, tiny_data_dir)(tmp_path / "online"))
    assert online.exit_code == 0, online.output
    assert max_diff(out, tmp_path / "online") <= 1e-6


def launch(n: int, port: int, args: list) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
        str(n), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), "-m", "distill_cli", *map(str, args),
    ]  # fmt: skip
    if n == 1:
        cmd = [sys.executable, "-m", "distill_cli", *map(str, args)]
    env = {**OFFLINE_ENV, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_written_by_two_processes_read_by_one_and_the_other_way(
    tiny_teacher, tiny_data_dir, tmp_path
):
    args = tkd14(tiny_teacher, tiny_data_dir)
    only = ("--set", "teacher_cache.mode=write", "--set", "train.max_steps=0")
    two = launch(2, 29531, [*args(tmp_path / "C2"), *only])
    assert two.returncode == 0, two.stderr[-3000:]
    c2 = tmp_path / "C2" / "teacher_cache"
    names = {p.name.split("-")[0] for p in store.shards(c2, "phase-0")}
    assert names == {"rank000", "rank001"}  # each process stored its share
    one = invoke(*args(tmp_path / "C1"), *only)
    assert one.exit_code == 0, one.output
    c1 = tmp_path / "C1" / "teacher_cache"
    a, b = store.Reader(c1, "phase-0"), store.Reader(c2, "phase-0")
    rows = list(range(48))
    for x, y in zip(a.get(rows), b.get(rows), strict=True):
        assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)

    read_one = invoke(*args(tmp_path / "S1"), "--teacher-cache", c2)
    assert read_one.exit_code == 0, read_one.output
    assert invoke(*args(tmp_path / "online")).exit_code == 0
    assert max_diff(tmp_path / "S1", tmp_path / "online") <= 1e-6
    read_two = launch(2, 29533, [*args(tmp_path / "S2"), "--teacher-cache", c1])
    assert read_two.returncode == 0, read_two.stderr[-3000:]
    assert "process 1/2: 14 optimizer steps" in read_two.stderr
    assert read_two.stderr.count("the teacher is freed before step 1") == 1


# ---------------------------------------------------------------- recipe rules


@pytest.mark.parametrize(
    "sets, problem",
    [
        (["train.max_steps=0"], "0 only with teacher_cache.mode=write"),
        (["teacher_cache.mode=read"], "pass --teacher-cache DIR"),
        (["teacher_cache.mode=sometimes"], "teacher_cache.mode must be one of off, auto"),
        (["teacher_cache.top_k=0"], "teacher_cache.top_k must be >= 1"),
        (["teacher_cache.word_dtype=int8"], "word_dtype must be one of float16, float32"),
    ],
)
def test_recipe_rules(sets, problem):
    recipe = load_recipe(RECIPES / "tkd-nlp.yaml", sets=["teacher=t", "data.name=d", *sets])
    with pytest.raises(DistillError, match=problem):
        validate(recipe)


def test_a_bare_off_is_the_mode_off_and_write_allows_zero_steps():
    recipe = load_recipe(RECIPES / "glmd-pretrain.yaml", sets=["teacher_cache.mode=off"])
    assert recipe.teacher_cache.mode == "off"
    sets = ["data.name=d", "teacher_cache.mode=write", "train.max_steps=0"]
    validate(load_recipe(RECIPES / "glmd-pretrain.yaml", sets=sets))


def test_on_policy_phases_run_their_teacher(chat_llama, chat_data, tmp_path):  # noqa: F811
    def args(out, *extra):
        return chat_args(chat_llama, chat_data, out, "--set", "phases.0.on_policy=0.5", *extra)

    line = error_line(invoke(*args(tmp_path / "r"), "--teacher-cache", tmp_path / "none"))
    assert "samples replies on-policy" in line and "teacher_cache.mode=auto" in line
    auto = invoke(*args(tmp_path / "a", "--set", "train.epochs=3"), *AUTO)
    assert auto.exit_code == 0, auto.output
    assert "no phase reads its rows more than once" in auto.stderr  # it runs online

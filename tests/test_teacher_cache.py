"""The teacher-signal cache through the real CLI: training on stored teacher outputs equals
training online for every task shape, a cache made from other inputs is refused field by field,
a killed write resumes, and its size is checked before writing."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import RECIPES, invoke, tkd_args
from safetensors.torch import load_file
from test_chat import chat_args, chat_data, chat_llama  # noqa: F401
from test_cloze import cloze_sets, tiny_mlm  # noqa: F401
from test_embedding_distill import st_teacher  # noqa: F401
from test_question_answering import WINDOW as QA_WINDOW
from test_question_answering import qa_data, qa_teacher  # noqa: F401
from test_token_classification import ner_data, ner_teacher  # noqa: F401
from test_windows import LONG_SETS, long_data, long_model, short_model  # noqa: F401

from distill_cli.cache import store

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

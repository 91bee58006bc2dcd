"""pretrain-distill end to end: encoders (embeddings and LM-head word logits) and causal LMs."""

import json

import pytest
import torch
from helpers import RECIPES, invoke, run_without_distill_cli
from safetensors.torch import load_file
from transformers import AutoModel

from distill_cli.models.load import load_lm, truncate


def pretrain_args(teacher, data, out, *extra):
    return [
        "pretrain-distill",
        "--recipe", RECIPES / "glmd-pretrain.yaml",
        "--teacher", teacher,
        "--data", data,
        "--output-dir", out,
        "--max-steps", 2,
        "--set", "student.num_layers=2",
        "--set", "train.batch_size=4",
        "--set", "train.learning_rate=1e-3",
        "--set", "train.logging_steps=1",
        "--set", "data.max_length=32",
        *extra,
    ]  # fmt: skip


def changed(teacher_dir, out, skip=()):
    teacher, _ = load_lm(str(teacher_dir), "teacher")
    init = truncate(teacher, 2)
    after = load_file(out / "model.safetensors")
    names = [n for n, _ in init.named_parameters() if n in after and not n.startswith(skip)]
    same = [n for n in names if torch.equal(init.state_dict()[n], after[n])]
    return names, same


def test_encoder_with_embedding_word_logits(tiny_encoder, corpus_file, tmp_path):
    out = tmp_path / "student"
    result = invoke(*pretrain_args(tiny_encoder, corpus_file, out))
    assert result.exit_code == 0, result.output
    assert "warning: fp16 needs CUDA" in result.stderr
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    training = [r for r in records if "phase" in r]
    assert [r["step"] for r in training] == [1, 2]
    assert training[0]["phase"] == "pretrain" and training[0]["loss/word_kl"] > 0
    # the teacher's word signal before step 1, the student's after the last
    assert records[0]["step"] == 0 and "signal/pretrain/word_kl/entropy_share" in records[0]
    assert records[-1]["step"] == 2 and "eval/word_agreement_masked" in records[-1]
    # Every parameter the word-prediction loss reaches was trained; the pooler is not used by it.
    names, same = changed(tiny_encoder, out, skip=("pooler.",))
    assert names and same == []
    model = AutoModel.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["stage"] == "pretrain" and summary["steps"] == 2


def test_pretrained_student_feeds_finetune_distill(
    tiny_encoder, corpus_file, tiny_teacher, tiny_data_dir, tmp_path
):
    student = tmp_path / "glmd-student"
    assert invoke(*pretrain_args(tiny_encoder, corpus_file, student)).exit_code == 0
    out = tmp_path / "task-student"
    result = invoke(
        "finetune-distill", "--recipe", RECIPES / "glmd-finetune.yaml",
        "--teacher", tiny_teacher, "--student", student, "--data", tiny_data_dir,
        "--output-dir", out, "--set", "phases.0.max_steps=2", "--set", "phases.1.max_steps=2",
        "--set", "train.batch_size=8", "--set", "train.logging_steps=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    phases = [(r["step"], r["phase"]) for r in records if "phase" in r]
    assert phases == [(1, "word-prediction"), (2, "word-prediction"), (3, "task"), (4, "task")]
    training = [r for r in records if "phase" in r]
    assert set(training[0]) >= {"loss/word_kl"} and "loss/soft_label_kl" not in training[0]
    assert {"loss/word_kl", "loss/soft_label_kl"} <= set(training[2])
    signal = records[0]  # the teacher's word signal in each phase, at its temperature
    assert {"signal/word-prediction/word_kl/top1_masked", "signal/task/word_kl/top1_masked"} <= set(
        signal
    )
    assert signal["signal/task/word_kl/top1_masked"] is None  # no masking in the task phase
    assert "eval/accuracy" in records[-1]


def test_encoder_with_lm_head_word_logits(tmp_path, corpus_file):
    from conftest import make_tokenizer, tiny_bert_config
    from transformers import BertForMaskedLM

    teacher = tmp_path / "mlm"
    tok = make_tokenizer(teacher)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(len(tok))).save_pretrained(teacher)
    out = tmp_path / "student"
    result = invoke(*pretrain_args(teacher, corpus_file, out, "--set", "word_logits=lm_head"))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    names, same = changed(teacher, out, skip=("bert.pooler.",))
    assert same == []


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm(family, request, corpus_file, tmp_path):
    teacher = request.getfixturevalue(f"tiny_{family}")
    out = tmp_path / "student"
    result = invoke(*pretrain_args(teacher, corpus_file, out))
    assert result.exit_code == 0, result.output
    assert "masking is off" in result.stderr
    names, same = changed(teacher, out)
    assert names and same == []
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "ids = t('the movie was', return_tensors='pt').input_ids\n"
        "g = m.generate(ids, max_new_tokens=3, do_sample=False)\n"
        "assert g.shape[1] == ids.shape[1] + 3 and m.config.num_hidden_layers == 2\n"
    )
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bucketing_and_ablation_terms(tiny_encoder, corpus_file, tmp_path):
    """Length bucketing, plus hidden-state MSE (with a projection) and attention KL."""
    out = tmp_path / "student"
    result = invoke(*pretrain_args(
        tiny_encoder, corpus_file, out,
        "--set", "data.packing=bucket", "--set", "student.init=config",
        "--set", "student.hidden_size=32", "--set", "student.num_attention_heads=4",
        "--set", "phases.0.terms={word_kl: {weight: 1.0, temperature: 15.0}, "
                 "hidden_mse: {weight: 1.0}, attention_kl: {weight: 1.0}}",
    ))  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])  # after the signal
    assert {"loss/word_kl", "loss/hidden_mse", "loss/attention_kl"} <= set(record)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 32


def test_task_terms_are_refused_in_pretraining(tiny_encoder, corpus_file, tmp_path):
    result = invoke(
        *pretrain_args(
            tiny_encoder,
            corpus_file,
            tmp_path / "s",
            "--set",
            "phases.0.terms={soft_label_kl: {weight: 1.0}}",
        )
    )
    assert result.exit_code == 2
    assert "soft_label_kl need a classifier" in result.stderr


def test_mismatched_vocabularies_are_one_error(tiny_encoder, tiny_gpt2, corpus_file, tmp_path):
    result = invoke(
        *pretrain_args(tiny_encoder, corpus_file, tmp_path / "s", "--student", tiny_gpt2)
    )
    assert result.exit_code == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "tokenizer" in lines[0]


def test_encoder_decoder_teacher_is_one_line(corpus_file, tmp_path):
    from conftest import make_tokenizer
    from transformers import T5Config, T5ForConditionalGeneration

    teacher = tmp_path / "t5"
    tok = make_tokenizer(teacher)
    config = T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                      num_heads=2, decoder_start_token_id=0)  # fmt: skip
    T5ForConditionalGeneration(config).save_pretrained(teacher)
    result = invoke(*pretrain_args(teacher, corpus_file, tmp_path / "s"))
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert lines == [
        "error: pretrain-distill does not support model type 't5': it is an encoder-decoder "
        "model; this stage distils encoder-only and decoder-only LMs"
    ]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "sets",
    [("divergence=jsd",), ("divergence=skew_kl", "alpha=0.2")],
    ids=["jsd", "skew_kl"],
)
def test_word_kl_divergences_train(tiny_encoder, corpus_file, tmp_path, sets):
    out = tmp_path / "student"
    extra = [x for s in sets for x in ("--set", f"phases.0.terms.word_kl.{s}")]
    result = invoke(*pretrain_args(tiny_encoder, corpus_file, out, *extra))
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    training = [r for r in records if "phase" in r]
    assert [r["step"] for r in training] == [1, 2]
    assert all(r["loss/word_kl"] > 0 for r in training)
    names, same = changed(tiny_encoder, out, skip=("pooler.",))
    assert names and same == []


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        (("divergence=bogus",), "divergence must be one of forward_kl, reverse_kl, jsd, tvd"),
        (("divergence=reverse_kl", "beta=0.5"), "beta must be left out: only jsd takes it"),
        (("divergence=jsd", "alpha=0.5"), "alpha must be left out: only skew_kl takes it"),
        (("divergence=skew_kl", "alpha=2"), "alpha must be in [0, 1]"),
    ],
)
def test_bad_word_kl_divergence_is_one_line(tiny_encoder, corpus_file, tmp_path, sets, problem):
    extra = [x for s in sets for x in ("--set", f"phases.0.terms.word_kl.{s}")]
    result = invoke(*pretrain_args(tiny_encoder, corpus_file, tmp_path / "s", *extra))
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and f"phases.0.terms.word_kl.{problem}" in lines[0], result.stderr
    assert not (tmp_path / "s").exists()

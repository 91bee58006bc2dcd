import json

import torch
import yaml
from conftest import make_tokenizer
from helpers import RECIPES, invoke, run_without_distill_cli, tkd_args
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

from distill_cli.models.load import truncate


def changed_parameters(before: dict, out_dir) -> tuple[list, list]:
    after = load_file(out_dir / "model.safetensors")
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    same = [k for k in before if k in after and torch.equal(before[k], after[k])]
    return changed, same


def trainable(model) -> dict:
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def test_tkd_end_to_end(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "student"
    result = invoke(*tkd_args(tiny_teacher, tiny_data_dir, out))
    assert result.exit_code == 0, result.output
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "resolved_recipe.yaml",
        "metrics.jsonl",
        "train_results.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob(".distill-tmp-*")) and not (out / "run.lock").exists()

    # fp16 on a CPU machine: one warning line, then fp32
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: fp16 needs CUDA; training in fp32 on this machine"]

    # every trainable parameter moved away from its truncated-teacher initialisation
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    changed, same = changed_parameters(trainable(truncate(teacher, 2)), out)
    assert same == [] and changed

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"loss/soft_label_kl", "loss/ce", "lr", "tokens_per_s"} <= set(steps[0])
    assert "eval/accuracy" in records[-1]

    resolved = yaml.safe_load((out / "resolved_recipe.yaml").read_text())
    assert resolved["train"]["max_steps"] == 2 and resolved["student"]["num_layers"] == 2
    assert resolved["teacher"] == str(tiny_teacher)
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["eval"]["accuracy"] <= 1


def test_output_loads_without_distill_cli(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "student"
    assert invoke(*tkd_args(tiny_teacher, tiny_data_dir, out)).exit_code == 0
    code = (
        "from transformers import AutoModelForSequenceClassification, pipeline\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(out)!r})\n"
        f"p = pipeline('text-classification', model={str(out)!r})\n"
        "r = p('the movie was good')[0]\n"
        "assert r['label'] in ('neg', 'pos'), r\n"
        "print('ok', r['label'])\n"
    )
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_finetune_recipe_turns_an_encoder_into_a_classifier(tiny_data_dir, tmp_path):
    base = tmp_path / "base"
    tok = make_tokenizer(base)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(base)
    out = tmp_path / "teacher"
    result = invoke(
        "finetune-distill",
        "--recipe",
        RECIPES / "finetune.yaml",
        "--student",
        base,
        "--data",
        tiny_data_dir,
        "--output-dir",
        out,
        "--max-steps",
        2,
        "--set",
        "train.batch_size=8",
        "--set",
        "train.learning_rate=1e-3",
    )
    assert result.exit_code == 0, result.output
    assert "newly initialised weights" in result.stderr
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    encoder_before = {
        f"bert.{k}": v for k, v in BertModel.from_pretrained(base).state_dict().items()
    }
    after = load_file(out / "model.safetensors")
    params = [k for k, _ in model.named_parameters() if k in encoder_before]
    assert params and all(not torch.equal(encoder_before[k], after[k]) for k in params)


def test_student_from_config_with_other_width(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "narrow"
    result = invoke(
        *tkd_args(
            tiny_teacher,
            tiny_data_dir,
            out,
            "--set",
            "student.init=config",
            "--set",
            "student.hidden_size=32",
            "--set",
            "student.num_attention_heads=4",
            "--set",
            "student.intermediate_size=64",
        )
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)


def test_tensorboard_tracker_from_recipe(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "tb"
    result = invoke(
        *tkd_args(tiny_teacher, tiny_data_dir, out, "--set", "train.report_to=[tensorboard]")
    )
    assert result.exit_code == 0, result.output
    assert list(out.rglob("events.out.tfevents.*"))


def test_overwrite_replaces_a_finished_model(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "student"
    assert invoke(*tkd_args(tiny_teacher, tiny_data_dir, out)).exit_code == 0
    again = invoke(*tkd_args(tiny_teacher, tiny_data_dir, out))
    assert again.exit_code == 0 and again.stderr.strip() == f"already finished: {out}"
    refused = invoke(*tkd_args(tiny_teacher, tiny_data_dir, out, "--seed", 7))
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    assert "a different recipe (train.seed: 42 then, 7 now)" in refused.stderr
    assert (
        invoke(*tkd_args(tiny_teacher, tiny_data_dir, out, "--seed", 7, "--overwrite")).exit_code
        == 0
    )


def test_student_with_its_own_tokenizer(tiny_teacher, tiny_data_dir, tmp_path):
    """Task KD needs only matching label sets: the teacher reads its own tokenization."""
    from conftest import LABELS, sentences, tiny_bert_config
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

    words = sorted({w for text, _ in sentences(200) for w in text.split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *reversed(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    student_dir = tmp_path / "word-student"
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]"
    ).save_pretrained(student_dir)
    torch.manual_seed(3)
    BertForSequenceClassification(
        tiny_bert_config(len(vocab), layers=1, hidden=32, labels=LABELS)
    ).save_pretrained(student_dir)

    out = tmp_path / "out"
    result = invoke(*tkd_args(tiny_teacher, tiny_data_dir, out, "--student", student_dir))
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "tokenizer.json").read_text())
    assert saved["model"]["type"] == "WordLevel"  # the student keeps its own tokenizer
    losses = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[0]["loss/soft_label_kl"] > 0


def test_truncation_a_model_cannot_take_is_one_line(tiny_data_dir, tmp_path):
    """Qwen2-MoE's every-2nd-layer experts: keeping layers 0 and 2 cannot make a 2-layer student."""
    from conftest import LABELS, make_bpe_tokenizer
    from transformers import Qwen2MoeConfig, Qwen2MoeForSequenceClassification

    teacher = tmp_path / "moe"
    tok = make_bpe_tokenizer(teacher)
    config = Qwen2MoeConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=16, num_experts=4, decoder_sparse_step=2,
        pad_token_id=tok.eos_token_id, num_labels=2, id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    Qwen2MoeForSequenceClassification(config).save_pretrained(teacher)
    result = invoke(*tkd_args(teacher, tiny_data_dir, tmp_path / "s"))
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(
        "error: student.init: truncate does not support model type 'qwen2_moe': keeping "
        "teacher layers [0, 2], student model.layers.1.mlp would be a Qwen2MoeSparseMoeBlock"
    )
    assert lines[0].endswith("choose student.num_layers 1, 3 or student.init: config")


def test_decoder_without_pad_token_becomes_a_classifier(tiny_gpt2, tiny_data_dir, tmp_path):
    """GPT-2 has no pad token: fine-tuning gives it EOS as one, in the saved tokenizer and config,
    so that batches pad and the classifier reads each row's last real token, here and later."""
    from transformers import AutoTokenizer

    out = tmp_path / "gpt2-classifier"
    result = invoke(
        "finetune-distill", "--recipe", RECIPES / "finetune.yaml", "--student", tiny_gpt2,
        "--data", tiny_data_dir, "--output-dir", out, "--max-steps", 2,
        "--set", "train.batch_size=8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert tok.pad_token == tok.eos_token and config["pad_token_id"] == tok.eos_token_id
    assert AutoTokenizer.from_pretrained(tiny_gpt2).pad_token is None  # the input is untouched
    evaluated = invoke("evaluate", out, "--data", tiny_data_dir, "--output-dir", tmp_path / "e")
    assert evaluated.exit_code == 0, evaluated.output

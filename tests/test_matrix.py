"""Every architecture family through every command: tiny random models, real CLI, 2 steps each.

Each family is a 2-layer masked LM (encoders, WordPiece tokenizer) or causal LM (decoders,
byte-level BPE tokenizer), saved as a user would hand it to us. The test fine-tunes it into a
teacher, distils a 1-layer truncated student (task KD), evaluates both, pretrain-distils a
truncated student, compresses that student's vocabulary, exports the task student to hf and onnx
(each verified by export itself) and evaluates the ONNX export. README's "Supported models"
table is generated from FAMILIES (``python tests/test_matrix.py`` prints it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from conftest import make_bpe_tokenizer, make_tokenizer
from helpers import RECIPES, ROOT, invoke

HIDDEN, LAYERS, HEADS = 32, 2, 2
STEPS = (
    ("finetune", "fine-tune"),
    ("tkd", "task KD (truncated)"),
    ("evaluate", "evaluate"),
    ("pretrain", "pretrain-distill"),
    ("compress", "compress-vocab"),
    ("export_hf", "export hf"),
    ("export_onnx", "export onnx"),
)


@dataclass(frozen=True)
class Family:
    name: str  # as the README table shows it
    config: str  # transformers config class
    kind: str  # "encoder" (masked LM) or "decoder" (causal LM)
    options: tuple[tuple[str, object], ...] = ()  # family-specific config values


def _common(kind: str, tok) -> dict:
    ids = {"pad_token_id": tok.pad_token_id}
    if kind == "encoder":
        ids.update(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
        ids.update(cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id)
    else:
        ids.update(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": 2 * HIDDEN,
        "max_position_embeddings": 128,
        **ids,
    }


FAMILIES = (
    Family("BERT", "BertConfig", "encoder"),
    Family("RoBERTa", "RobertaConfig", "encoder"),
    Family(
        "DistilBERT",
        "DistilBertConfig",
        "encoder",
        (("dim", HIDDEN), ("n_layers", LAYERS), ("n_heads", HEADS), ("hidden_dim", 2 * HIDDEN)),
    ),
    Family("ALBERT", "AlbertConfig", "encoder", (("embedding_size", 16),)),
    Family("ELECTRA", "ElectraConfig", "encoder", (("embedding_size", 16),)),
    Family("DeBERTa-v2", "DebertaV2Config", "encoder"),
    Family("MPNet", "MPNetConfig", "encoder"),
    Family("XLM-RoBERTa", "XLMRobertaConfig", "encoder"),
    Family("ModernBERT", "ModernBertConfig", "encoder"),
    Family(
        "GPT-2",
        "GPT2Config",
        "decoder",
        (("n_embd", HIDDEN), ("n_layer", LAYERS), ("n_head", HEADS), ("n_positions", 128)),
    ),
    Family("Llama", "LlamaConfig", "decoder", (("num_key_value_heads", 1),)),
    Family(
        "Qwen2",
        "Qwen2Config",
        "decoder",
        (
            ("num_key_value_heads", 1),
            ("use_sliding_window", True),
            ("sliding_window", 16),
            ("max_window_layers", 1),
        ),
    ),
    Family(
        "Mistral", "MistralConfig", "decoder", (("num_key_value_heads", 1), ("sliding_window", 16))
    ),
    Family(
        "Gemma 2",
        "Gemma2Config",
        "decoder",
        (
            ("num_key_value_heads", 1),
            ("head_dim", 16),
            ("query_pre_attn_scalar", 16),
            ("sliding_window", 16),
        ),
    ),
    Family("Phi-3", "Phi3Config", "decoder"),
    Family("OPT", "OPTConfig", "decoder", (("ffn_dim", 2 * HIDDEN), ("word_embed_proj_dim", 16))),
)


def build_lm(family: Family, path: Path) -> Path:
    """The family's tiny random LM and its tokenizer, saved in ``path``."""
    encoder = family.kind == "encoder"
    tok = make_tokenizer(path) if encoder else make_bpe_tokenizer(path)
    config_class = getattr(transformers, family.config)
    config = config_class(**{**_common(family.kind, tok), **dict(family.options)})
    auto = transformers.AutoModelForMaskedLM if encoder else transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    auto.from_config(config).save_pretrained(path)
    return path


def ok(result, step: str, family: Family):
    assert result.exit_code == 0, f"{family.name} {step} failed:\n{result.output}"
    return result


def _train_args(out: Path) -> list:
    return [
        "--output-dir", out, "--max-steps", 2,
        "--set", "train.batch_size=8", "--set", "train.logging_steps=1",
        "--set", "data.max_length=32",
    ]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family_through_every_command(family, tmp_path, tiny_data_dir, corpus_file):
    lm = build_lm(family, tmp_path / "lm")
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    ok(invoke("finetune-distill", "--recipe", RECIPES / "finetune.yaml", "--student", lm,
              "--data", tiny_data_dir, *_train_args(teacher)), "finetune", family)  # fmt: skip
    ok(invoke("finetune-distill", "--recipe", RECIPES / "tkd-nlp.yaml", "--teacher", teacher,
              "--data", tiny_data_dir, "--set", "student.num_layers=1",
              *_train_args(student)), "tkd", family)  # fmt: skip
    assert json.loads((student / "config.json").read_text())["architectures"]
    ok(invoke("evaluate", student, "--data", tiny_data_dir, "--teacher", teacher,
              "--output-dir", tmp_path / "eval"), "evaluate", family)  # fmt: skip
    pre = tmp_path / "pretrained"
    ok(invoke("pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", lm,
              "--data", corpus_file, "--set", "student.num_layers=1",
              *_train_args(pre)), "pretrain", family)  # fmt: skip
    ok(invoke("compress-vocab", pre, "--teacher", lm, "--corpus", corpus_file, "--ratio", 0.5,
              "--output-dir", tmp_path / "compressed"), "compress", family)  # fmt: skip
    for fmt in ("hf", "onnx"):
        out = tmp_path / f"export-{fmt}"
        ok(invoke("export", student, "--format", fmt, "--output-dir", out), f"export_{fmt}", family)
        assert json.loads((out / "export.json").read_text())["verified"] is True
    ok(invoke("evaluate", tmp_path / "export-onnx", "--data", tiny_data_dir,
              "--output-dir", tmp_path / "eval-onnx"), "evaluate", family)  # fmt: skip


def readme_table() -> str:
    head = "| family | kind | " + " | ".join(label for _, label in STEPS) + " |"
    rule = "|---|---|" + "---|" * len(STEPS)
    rows = [f"| {f.name} | {f.kind} | " + " | ".join("✓" for _ in STEPS) + " |" for f in FAMILIES]
    return "\n".join([head, rule, *rows])


def test_readme_table_matches_the_families():
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, "regenerate it: python tests/test_matrix.py"


if __name__ == "__main__":
    print(readme_table())

"""Every architecture family through every command: tiny random models, the real CLI, 2 steps.

Each family is a 2-layer masked LM (encoders, a WordPiece tokenizer) or causal LM (decoders, a
byte-level BPE tokenizer), saved as a user would hand it to us. It is fine-tuned into a teacher,
distilled into a 1-layer truncated student (task KD), both are evaluated; a 1-layer truncated
student is pretrain-distilled from the LM and its vocabulary compressed; the task student is
exported to hf and onnx (each verified by export itself) and the ONNX export is evaluated.

README's "Supported models" table is generated from FAMILIES: ``python tests/test_matrix.py``
rewrites it, and a test checks that it is up to date.
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
    "fine-tune",
    "task KD (truncated)",
    "evaluate",
    "pretrain-distill",
    "compress-vocab",
    "export hf",
    "export onnx",
)


@dataclass(frozen=True)
class Family:
    name: str  # as README's table shows it
    config: str  # the transformers config class
    kind: str  # "encoder" (masked LM) or "decoder" (causal LM)
    options: tuple[tuple[str, object], ...] = ()  # config values of this family's own names

    @property
    def model_type(self) -> str:
        return getattr(transformers, self.config).model_type


FAMILIES = (
    Family("BERT", "BertConfig", "encoder"),
    Family("RoBERTa", "RobertaConfig", "encoder"),
    Family("DistilBERT", "DistilBertConfig", "encoder",
           (("dim", HIDDEN), ("n_layers", LAYERS), ("n_heads", HEADS), ("hidden_dim", 2 * HIDDEN))),
    Family("ALBERT", "AlbertConfig", "encoder", (("embedding_size", 16),)),  # factorised
    Family("ELECTRA", "ElectraConfig", "encoder", (("embedding_size", 16),)),
    Family("DeBERTa-v2", "DebertaV2Config", "encoder",  # no token types in its graph
           (("relative_attention", True), ("pos_att_type", "p2c|c2p"))),  # 2 entries, not per layer
    Family("MPNet", "MPNetConfig", "encoder"),
    Family("XLM-RoBERTa", "XLMRobertaConfig", "encoder"),
    Family("ModernBERT", "ModernBertConfig", "encoder"),  # layer_types: global every 3rd
    Family("GPT-2", "GPT2Config", "decoder",
           (("n_embd", HIDDEN), ("n_layer", LAYERS), ("n_head", HEADS), ("n_positions", 128))),
    Family("Llama", "LlamaConfig", "decoder", (("num_key_value_heads", 1),)),
    Family("Qwen2", "Qwen2Config", "decoder",  # layer_types: sliding from layer 1 on
           (("num_key_value_heads", 1), ("use_sliding_window", True), ("sliding_window", 16),
            ("max_window_layers", 1))),
    Family("Mistral", "MistralConfig", "decoder",
           (("num_key_value_heads", 1), ("sliding_window", 16))),
    Family("Gemma 2", "Gemma2Config", "decoder",  # layer_types: sliding and global in turn
           (("num_key_value_heads", 1), ("head_dim", 16), ("query_pre_attn_scalar", 16),
            ("sliding_window", 16))),
    Family("Phi-3", "Phi3Config", "decoder"),
    Family("OPT", "OPTConfig", "decoder",  # projected word embeddings
           (("ffn_dim", 2 * HIDDEN), ("word_embed_proj_dim", 16))),
)  # fmt: skip


def build_lm(family: Family, path: Path) -> Path:
    """The family's tiny random LM and its tokenizer, saved in ``path``."""
    encoder = family.kind == "encoder"
    tok = make_tokenizer(path) if encoder else make_bpe_tokenizer(path)
    ids = {"pad_token_id": tok.pad_token_id}  # None for the BPE tokenizer, as GPT-2's
    if encoder:
        ids.update(bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
        ids.update(cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id)
    else:
        ids.update(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    sizes = {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": 2 * HIDDEN,
        "max_position_embeddings": 128,
    }
    config = getattr(transformers, family.config)(**sizes, **ids, **dict(family.options))
    auto = transformers.AutoModelForMaskedLM if encoder else transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    auto.from_config(config).save_pretrained(path)
    return path


def run(step: str, family: Family, *args):
    result = invoke(*args)
    assert result.exit_code == 0, f"{family.name}: {step} failed:\n{result.output}"
    return result


def train_args(out: Path) -> list:
    return [
        "--output-dir", out, "--max-steps", 2, "--set", "train.batch_size=8",
        "--set", "train.logging_steps=1", "--set", "data.max_length=32",
    ]  # fmt: skip


def layers(folder: Path) -> int:
    return transformers.AutoConfig.from_pretrained(folder).num_hidden_layers


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family_through_every_command(family, tmp_path, tiny_data_dir, corpus_file):
    lm = build_lm(family, tmp_path / "lm")
    teacher, student, pre = tmp_path / "teacher", tmp_path / "student", tmp_path / "pretrained"

    run("fine-tune", family, "finetune-distill", "--recipe", RECIPES / "finetune.yaml",
        "--student", lm, "--data", tiny_data_dir, *train_args(teacher))  # fmt: skip
    assert read(teacher / "config.json")["architectures"][0].endswith("ForSequenceClassification")

    run("task KD", family, "finetune-distill", "--recipe", RECIPES / "tkd-nlp.yaml",
        "--teacher", teacher, "--data", tiny_data_dir, "--set", "student.num_layers=1",
        *train_args(student))  # fmt: skip
    assert (layers(teacher), layers(student)) == (2, 1)

    run("evaluate", family, "evaluate", student, "--data", tiny_data_dir, "--teacher", teacher,
        "--output-dir", tmp_path / "eval")  # fmt: skip
    assert set(read(tmp_path / "eval" / "evaluation.json")["models"]) == {"teacher", "student"}

    run("pretrain-distill", family, "pretrain-distill", "--recipe",
        RECIPES / "glmd-pretrain.yaml", "--teacher", lm, "--data", corpus_file,
        "--set", "student.num_layers=1", *train_args(pre))  # fmt: skip
    assert layers(pre) == 1 and read(pre / "train_results.json")["steps"] == 2

    compressed, few = tmp_path / "compressed", tmp_path / "few.txt"
    # leaves BPE merges unused; a low ratio, as every single character (and ##x) is kept too
    few.write_text("the film was awful\na good movie\n")
    run("compress-vocab", family, "compress-vocab", pre, "--teacher", lm,
        "--corpus", few, "--ratio", 0.1, "--output-dir", compressed)  # fmt: skip
    report = read(compressed / "compression.json")
    assert report["vocab_after"] < report["vocab_before"]

    for fmt in ("hf", "onnx"):
        out = tmp_path / f"export-{fmt}"
        run(f"export {fmt}", family, "export", student, "--format", fmt, "--output-dir", out)
        exported = read(out / "export.json")
        assert exported["verified"] is True and exported["max_abs_diff"] <= 1e-4

    run("evaluate (onnx)", family, "evaluate", tmp_path / "export-onnx",
        "--data", tiny_data_dir, "--output-dir", tmp_path / "eval-onnx")  # fmt: skip
    assert list(read(tmp_path / "eval-onnx" / "evaluation.json")["models"]) == ["export-onnx"]


# ---------------------------------------------------------------- README's table

README = ROOT / "README.md"
START, END = "<!-- supported-models: start -->", "<!-- supported-models: end -->"


def readme_table() -> str:
    """One row per family: ✓ for each step the matrix test runs for it."""
    head = "| family | `model_type` | kind | " + " | ".join(STEPS) + " |"
    rule = "|---|---|---|" + "---|" * len(STEPS)
    rows = [
        f"| {f.name} | `{f.model_type}` | {f.kind} | " + " | ".join("✓" for _ in STEPS) + " |"
        for f in FAMILIES
    ]
    return "\n".join([START, head, rule, *rows, END])


def readme_block(text: str) -> str:
    return text[text.index(START) : text.index(END) + len(END)]


def test_readme_table_matches_the_families():
    assert readme_block(README.read_text()) == readme_table(), (
        "README's Supported models table is out of date: run python tests/test_matrix.py"
    )


if __name__ == "__main__":  # rewrite the table in README.md
    text = README.read_text()
    README.write_text(text.replace(readme_block(text), readme_table()))

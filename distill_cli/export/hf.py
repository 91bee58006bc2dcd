"""--format hf: a plain Hugging Face folder (fp32, fp16 or bf16 weights) with a model card; for
a sentence embedder, a complete sentence-transformers folder."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from distill_cli.errors import DistillError
from distill_cli.export.card import model_card, pipeline_tag
from distill_cli.export.sentence import SentenceEmbedding
from distill_cli.export.verify import (
    SENTENCES,
    check_fp32,
    compare,
    encode,
    input_names,
    samples,
    torch_outputs,
)
from distill_cli.models.attention import prepared
from distill_cli.models.embedder import load_embedder, save_embedder
from distill_cli.reporting import log

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EMBEDDER_FP32_TOLERANCE = 1e-5  # a saved and reloaded fp32 embedder: the same vectors


def export_hf(
    model, tokenizer, model_dir: Path, tmp: Path, dtype: str, name: str, evaluation: Path
) -> dict:
    """Save model, tokenizer and README.md into ``tmp``, then check plain transformers loads it
    and gives the PyTorch model's outputs (exactly for fp32)."""
    import transformers

    card = model_card(model.config, model_dir, name, dtype, evaluation)  # first: reads user files
    torch_dtype = DTYPES[dtype]
    names = input_names(model, tokenizer)
    texts = samples(model)
    batch = encode(tokenizer, texts, names)
    reference = torch_outputs(model, batch)
    to_save = model if dtype == "fp32" else copy.deepcopy(model).to(torch_dtype)
    to_save.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(card)
    del to_save

    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    cls = getattr(transformers, archs[0], None) or transformers.AutoModel
    # a Longformer reader on BERT-style pairs needs its question's global attention given
    loaded = prepared(cls.from_pretrained(tmp, dtype=torch_dtype).eval())
    loaded_tok = transformers.AutoTokenizer.from_pretrained(tmp)
    loaded_batch = encode(loaded_tok, texts, names)
    if any(not torch.equal(batch[k], loaded_batch[k]) for k in names):
        raise DistillError("the exported tokenizer encodes the test sentences differently")
    stats = compare(reference, torch_outputs(loaded, loaded_batch), batch["attention_mask"])
    log(f"hf {dtype}: max abs diff {stats['max_abs_diff']:.3g} vs the fp32 PyTorch model")
    if dtype == "fp32":
        check_fp32("hf export", stats)
    return {**stats, "num_test_sentences": len(texts), "pipeline_tag": pipeline_tag(model)}


def export_embedder_hf(
    embedder, tokenizer, model_dir: Path, tmp: Path, dtype: str, name: str, evaluation: Path
) -> dict:
    """Save a sentence embedder as a complete sentence-transformers folder with README.md into
    ``tmp``, then load it back (load_embedder) and check it gives the PyTorch embedder's
    vectors (to EMBEDDER_FP32_TOLERANCE for fp32)."""
    model = embedder.model
    card = model_card(model.config, model_dir, name, dtype, evaluation, embedder)  # reads files
    names = input_names(model, tokenizer)
    batch = encode(tokenizer, SENTENCES, names)
    wrapped = SentenceEmbedding(embedder)
    reference = torch_outputs(wrapped, batch)
    to_save = embedder if dtype == "fp32" else copy.deepcopy(embedder).to(DTYPES[dtype])
    save_embedder(to_save, tokenizer, tmp)
    (tmp / "README.md").write_text(card)
    del to_save

    loaded, loaded_tok = load_embedder(str(tmp), "export")
    loaded_batch = encode(loaded_tok, SENTENCES, names)
    if any(not torch.equal(batch[k], loaded_batch[k]) for k in names):
        raise DistillError("the exported tokenizer encodes the test sentences differently")
    got = torch_outputs(SentenceEmbedding(loaded.to(DTYPES[dtype])), loaded_batch)
    stats = compare(reference, got, batch["attention_mask"])
    log(
        f"hf {dtype}: max abs diff {stats['max_abs_diff']:.3g}, lowest cosine "
        f"{stats['cosine_min']:.6f} vs the fp32 PyTorch embedder"
    )
    if dtype == "fp32" and not stats["max_abs_diff"] <= EMBEDDER_FP32_TOLERANCE:
        raise DistillError(
            f"the sentence-transformers export differs from the embedder by "
            f"{stats['max_abs_diff']:.3g} (> {EMBEDDER_FP32_TOLERANCE}); it is not written"
        )
    return {
        **stats,
        "num_test_sentences": len(SENTENCES),
        "pipeline_tag": pipeline_tag(embedder),
    }

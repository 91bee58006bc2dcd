"""--format hf: a plain Hugging Face folder (fp32, fp16 or bf16 weights) with a model card."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from distill_cli.errors import DistillError
from distill_cli.export.card import model_card, pipeline_tag
from distill_cli.export.verify import (
    check_fp32,
    compare,
    encode,
    input_names,
    samples,
    torch_outputs,
)
from distill_cli.reporting import log

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    loaded = cls.from_pretrained(tmp, dtype=torch_dtype).eval()
    loaded_tok = transformers.AutoTokenizer.from_pretrained(tmp)
    loaded_batch = encode(loaded_tok, texts, names)
    if any(not torch.equal(batch[k], loaded_batch[k]) for k in names):
        raise DistillError("the exported tokenizer encodes the test sentences differently")
    stats = compare(reference, torch_outputs(loaded, loaded_batch), batch["attention_mask"])
    log(f"hf {dtype}: max abs diff {stats['max_abs_diff']:.3g} vs the fp32 PyTorch model")
    if dtype == "fp32":
        check_fp32("hf export", stats)
    return {**stats, "num_test_sentences": len(texts), "pipeline_tag": pipeline_tag(model)}

"""export's core: write an HF folder, an ONNX model or an int8 ONNX model, then verify it.

Every export is written into a staging folder, loaded back and compared with the PyTorch model
on a few test sentences, and only then moved into the output folder (distill_cli.outputs, which
also owns the checks on that folder): its run.json says finished only when it is verified.
One module per format (hf, onnx, int8); verify
holds what they share, card the HF model card.

A sentence-transformers folder is exported as the sentence embedder it is (sentence.py): hf
writes a sentence-transformers folder, onnx and onnx-int8 one graph from token inputs to the
``sentence_embedding``.

A cloze model (a masked or causal LM with ``cloze.json`` beside it) is exported as the LM it is,
``cloze.json`` with it: hf writes the LM folder and a card that classifies with plain
transformers; onnx and onnx-int8 trace cloze.py's ClozeClassifier, one graph from token inputs to
the class logits at the blank.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from distill_cli import outputs
from distill_cli.errors import DistillError
from distill_cli.export.cloze import ClozeClassifier
from distill_cli.export.hf import DTYPES, export_embedder_hf, export_hf
from distill_cli.export.int8 import export_int8
from distill_cli.export.onnx import export_onnx
from distill_cli.export.sentence import SentenceEmbedding, embedding_facts
from distill_cli.export.verify import MB
from distill_cli.models.embedder import is_sentence_transformers_folder, load_embedder
from distill_cli.models.load import check_model_source, load_as_saved
from distill_cli.outputs import check_free_space, weights_bytes
from distill_cli.tasks import cloze

FORMATS = ("hf", "onnx", "onnx-int8")
EVALUATION = "evaluation.json"
EXTRAS = ("vocab_map.json", "resolved_recipe.yaml", cloze.FILE)


def _check_args(fmt: str, dtype: str) -> None:
    if fmt not in FORMATS:
        raise DistillError(f"unknown --format '{fmt}'; choose {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise DistillError(f"unknown --dtype '{dtype}'; choose {', '.join(DTYPES)}")
    if fmt != "hf" and dtype != "fp32":
        hint = "int8 quantizes the fp32 export" if fmt == "onnx-int8" else "ONNX export is fp32"
        raise DistillError(
            f"--dtype {dtype} does not apply to --format {fmt} ({hint}); "
            "drop --dtype, or use --format hf for fp16/bf16 weights"
        )


def run(
    model_dir: str,
    fmt: str,
    output_dir: str | Path,
    dtype: str = "fp32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    evaluation: str | Path | None = None,
) -> dict:
    """Export ``model_dir`` as ``fmt`` into ``output_dir``; returns what export.json holds.

    ``evaluation``: an evaluation.json (from ``distill evaluate --output-dir``) shipped with the
    export and shown in an hf model card; by default the one beside the model, if any."""
    _check_args(fmt, dtype)
    embedding = is_sentence_transformers_folder(model_dir)
    if not embedding:  # load_embedder checks the transformer, wherever modules.json puts it
        check_model_source(model_dir, "model")
    if evaluation is not None and not Path(evaluation).expanduser().is_file():
        raise DistillError(
            f"--evaluation {evaluation}: no such file; pass the evaluation.json that "
            "'distill evaluate --output-dir DIR' wrote"
        )
    evaluation = Path(evaluation).expanduser() if evaluation else Path(model_dir) / EVALUATION
    out, _ = outputs.claim(
        output_dir,
        "export",
        {"format": fmt, "dtype": dtype},
        [("model", model_dir), ("evaluation", evaluation)],
        overwrite=overwrite,
        writes=("export.json", EVALUATION, *EXTRAS, *(("README.md",) if fmt == "hf" else ())),
    )
    # an fp32 copy, and for int8 the fp32 ONNX file beside the quantized one
    check_free_space(out, 3 * weights_bytes(model_dir), "the export and its temp files")
    embedder = None
    if embedding:
        embedder, tokenizer = load_embedder(str(model_dir), "model", trust_remote_code)
        model = SentenceEmbedding(embedder)  # what the ONNX formats trace
    else:
        model, tokenizer = load_as_saved(model_dir, "model", trust_remote_code)
    saved = None if embedding else cloze.read_saved(model_dir)
    if saved is not None and fmt != "hf":  # the graph returns the class logits at the blank
        model = ClozeClassifier(model, tokenizer, saved)
    tmp = outputs.staging(out)
    try:
        result = {"model": str(model_dir), "format": fmt, "dtype": dtype}
        args = (Path(model_dir), tmp, dtype, out.name, evaluation)
        if fmt == "hf" and embedder is not None:
            result.update(export_embedder_hf(embedder, tokenizer, *args))
        elif fmt == "hf":
            result.update(export_hf(model, tokenizer, *args))
        elif fmt == "onnx":
            result.update(export_onnx(model, tokenizer, tmp))
        else:
            result.update(export_int8(model, tokenizer, tmp))
        if embedder is not None:
            result["embedding"] = embedding_facts(embedder)
        if saved is not None:
            result["cloze"] = {"labels": saved["labels"], "reads": saved.get("reads")}
        for name in EXTRAS:
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, tmp / name)
        if evaluation.is_file():
            shutil.copy2(evaluation, tmp / EVALUATION)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        files += ["export.json"]
        sizes = {n: round((tmp / n).stat().st_size / MB, 4) for n in files if (tmp / n).exists()}
        total = round(sum(sizes.values()), 4)
        result.update(files=files, sizes_mb=sizes, total_mb=total, verified=True)
        (tmp / "export.json").write_text(json.dumps(result, indent=2) + "\n")
        outputs.publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    outputs.mark_finished(out)
    result["output_dir"] = str(out)
    return result

"""--format onnx-int8: the fp32 ONNX graph with weights dynamically quantized to int8."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from distill_cli.errors import DistillError
from distill_cli.export.card import pipeline_tag
from distill_cli.export.onnx import (
    latency_ms,
    prepare,
    save_beside,
    session,
    verify_onnx,
    write_graph,
)
from distill_cli.export.sentence import TAG as EMBEDDING_TAG
from distill_cli.export.verify import MB
from distill_cli.reporting import log

# int8 vs the fp32 PyTorch model: (threshold, what is measured, its key in the comparison).
# Below the threshold export warns (it still writes the export: evaluate measures what
# quantization costs on real data).
ARGMAX = "argmax_agreement"
AGREEMENT = {
    "text-classification": (0.75, "label agreement per test sentence", ARGMAX),  # 1 of 4 may flip
    "token-classification": (0.9, "label agreement per non-pad token", ARGMAX),
    "question-answering": (0.75, "start and end position agreement per question", ARGMAX),
    # similarity search reads each vector's direction. all-MiniLM-L6-v2 measured 0.980 (per
    # channel; 0.925 per tensor) on the test sentences: below 0.95 int8 has bent the geometry
    EMBEDDING_TAG: (0.95, "lowest cosine between int8 and fp32 sentence embeddings", "cosine_min"),
}
# Quantized per channel (a scale per output channel of each weight): on all-MiniLM-L6-v2 the
# lowest cosine to fp32 over 8 varied sentences is 0.978 per channel, 0.924 per tensor.
PER_CHANNEL = (EMBEDDING_TAG,)


def _quantize(fp32_path: Path, int8_path: Path, per_channel: bool = False) -> None:
    """int8 weights, activations quantized on the fly; ``per_channel``: one scale per output
    channel of each weight instead of one per tensor."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quiet its "consider pre-processing" advice
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            # 7-bit weights: onnxruntime's u8s8 kernels on x86 CPUs without VNNI (AVX2, plain
            # AVX-512) saturate with full-range weights, and an export may run on any such CPU
            reduce_range=True,
        )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"int8 quantization failed: {first}") from None
    finally:
        root.setLevel(level)


def agreement_check(tag: str, stats: dict) -> dict | None:
    """The int8 check of a task head or sentence embedder (None for others: an encoder's or
    LM's argmax is no prediction); logs a warning when it is below its threshold."""
    if tag not in AGREEMENT:
        return None
    threshold, measure, key = AGREEMENT[tag]
    passed = stats[key] >= threshold
    if not passed:
        log(
            f"warning: int8 {measure} is {_shown(key, stats[key])} "
            f"(< {_shown(key, threshold)}); run distill evaluate on the export before using it"
        )
    return {"measure": measure, "threshold": threshold, "value": stats[key], "passed": passed}


def _shown(key: str, value: float) -> str:
    return f"{value:.4f}" if key.startswith("cosine") else f"{100 * value:.1f}%"


def summary(stats: dict) -> str:
    """How close an export came to PyTorch, in one phrase: the max abs diff, and the lowest
    cosine of a sentence embedding or the argmax agreement of other outputs."""
    line = f"max abs diff {stats['max_abs_diff']:.3g}"
    if "cosine_min" in stats:
        return f"{line}, lowest cosine {stats['cosine_min']:.4f}"
    return f"{line}, argmax agreement {100 * stats['argmax_agreement']:.1f}%"


def export_int8(model, tokenizer, tmp: Path) -> dict:
    """Export and verify fp32 in a scratch folder, quantize into ``tmp``, compare both."""
    model = prepare(model)
    int8_path = tmp / "model.onnx"
    scratch = Path(tempfile.mkdtemp(dir=tmp.parent, prefix=f".{tmp.name}.fp32-"))
    try:
        graph = write_graph(model, tokenizer, scratch / "model.onnx")
        tag = pipeline_tag(model)
        _quantize(graph.path, int8_path, per_channel=tag in PER_CHANNEL)
        sess = session(int8_path)
        stats = verify_onnx(sess, model, tokenizer, graph.names)
        before, after = graph.path.stat().st_size / MB, int8_path.stat().st_size / MB
        log(f"onnx int8: {before:.2f} MB → {after:.2f} MB, {summary(stats)}")
        result = {
            **graph.facts,
            **stats,
            "fp32_mb": round(before, 4),
            "int8_mb": round(after, 4),
            "size_ratio": round(after / before, 4),
            "latency_ms_b1_fp32": latency_ms(graph.session, model, tokenizer, graph.names),
            "latency_ms_b1": latency_ms(sess, model, tokenizer, graph.names),
            "fp32_max_abs_diff": graph.stats["max_abs_diff"],
        }
        check = agreement_check(tag, stats)
        if check is not None:
            result["int8_check"] = check
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    save_beside(model, tokenizer, tmp)
    return result

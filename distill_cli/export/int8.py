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
from distill_cli.export.verify import MB
from distill_cli.reporting import log

# int8 vs PyTorch argmax agreement on the test samples below which export warns (it still
# writes the export: evaluate measures what quantization costs on real data)
AGREEMENT = {
    "text-classification": (0.75, "label agreement per test sentence"),  # 1 of 4 may flip
    "token-classification": (0.9, "label agreement per non-pad token"),
    "question-answering": (0.75, "start and end position agreement per question"),
}


def _quantize(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quiet its "consider pre-processing" advice
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(f"int8 quantization failed: {first}") from None
    finally:
        root.setLevel(level)


def agreement_check(tag: str, stats: dict) -> dict | None:
    """The int8 check of a task head (None for others: an encoder's or LM's argmax is no
    prediction); logs a warning when agreement is below its threshold."""
    if tag not in AGREEMENT:
        return None
    threshold, measure = AGREEMENT[tag]
    passed = stats["argmax_agreement"] >= threshold
    if not passed:
        log(
            f"warning: int8 {measure} is {100 * stats['argmax_agreement']:.1f}% "
            f"(< {100 * threshold:.0f}%); run distill evaluate on the export before using it"
        )
    return {"measure": measure, "threshold": threshold, "passed": passed}


def export_int8(model, tokenizer, tmp: Path) -> dict:
    """Export and verify fp32 in a scratch folder, quantize into ``tmp``, compare both."""
    model = prepare(model)
    int8_path = tmp / "model.onnx"
    scratch = Path(tempfile.mkdtemp(dir=tmp.parent, prefix=f".{tmp.name}.fp32-"))
    try:
        graph = write_graph(model, tokenizer, scratch / "model.onnx")
        _quantize(graph.path, int8_path)
        sess = session(int8_path)
        stats = verify_onnx(sess, model, tokenizer, graph.names)
        before, after = graph.path.stat().st_size / MB, int8_path.stat().st_size / MB
        log(
            f"onnx int8: {before:.2f} MB → {after:.2f} MB, "
            f"max abs diff {stats['max_abs_diff']:.3g}, "
            f"argmax agreement {100 * stats['argmax_agreement']:.1f}%"
        )
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
        check = agreement_check(pipeline_tag(model), stats)
        if check is not None:
            result["int8_check"] = check
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    save_beside(model, tokenizer, tmp)
    return result

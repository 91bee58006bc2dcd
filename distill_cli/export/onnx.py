"""--format onnx: an fp32 ONNX graph with dynamic batch and length, run by onnxruntime."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.evaluation.latency import median_ms
from distill_cli.export.verify import (
    INPUTS,
    check_fp32,
    compare,
    encode,
    forward_kwargs,
    input_names,
    output_names,
    per_position,
    samples,
    torch_outputs,
    worst,
)
from distill_cli.models.attention import untraceable
from distill_cli.reporting import log

OPSET = 17


def require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise DistillError(
            "ONNX export needs onnx and onnxruntime: pip install 'distill-cli[onnx]'"
        ) from None
    return onnxruntime


def prepare(model):
    """fp32, eval mode, and eager attention, which traces to plain ops that run everywhere."""
    model = model.float().eval()
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except Exception:  # noqa: BLE001 - keep the model's own attention
            pass
    return model


class _Wrapper(torch.nn.Module):
    """Positional inputs in, the kept output tensors out, in order (no cache)."""

    def __init__(self, model, names, outputs):
        super().__init__()
        self.model, self.names, self.outputs = model, names, outputs

    def forward(self, *inputs):
        kwargs = dict(zip(self.names, inputs, strict=True))
        out = self.model(**kwargs, **forward_kwargs(self.model))
        return tuple(getattr(out, name) for name in self.outputs)


def _trace(model, names: list[str], path: Path) -> list[str]:
    """torch.onnx.export with dynamic batch and sequence axes; returns the outputs' names,
    the model's own (logits; start_logits and end_logits)."""
    # a padded row, so that tracing records the attention-mask path rather than a shortcut
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    values = {"input_ids": torch.ones(2, 7, dtype=torch.long), "attention_mask": mask}
    dummy = tuple(values.get(n, torch.zeros(2, 7, dtype=torch.long)) for n in names)
    try:
        with torch.no_grad():
            out = model(**dict(zip(names, dummy, strict=True)), **forward_kwargs(model))
        outputs = output_names(out)
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        for name in outputs:
            tokens = per_position(name, getattr(out, name))
            axes[name] = {0: "batch", 1: "sequence"} if tokens else {0: "batch"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the legacy exporter's deprecation
            torch.onnx.export(
                _Wrapper(model, names, outputs).eval(),  # a fresh Module is in train mode: the
                dummy,  # exporter restores that mode afterwards, recursively, so it must be eval
                str(path),
                input_names=names,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except DistillError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's forward or the tracer refused it
        why = f"{type(model).__name__} does not trace ({_first_line(e)})"
        raise UnsupportedModel(model.config.model_type, "ONNX export", why) from None
    return outputs


def _first_line(e: Exception, limit: int = 160) -> str:
    line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def session(path: Path):
    ort = require_onnx()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def graph_inputs(sess, model_type: str) -> list[str]:
    """The inputs the exported graph declares, which is what it is verified and run with."""
    names = [i.name for i in sess.get_inputs()]
    unknown = [n for n in names if n not in INPUTS]
    if unknown:
        raise UnsupportedModel(
            model_type, "ONNX export", f"its graph takes {', '.join(unknown)}, not token inputs"
        )
    return names


def run_session(sess, batch: dict) -> dict:
    """Every output of the graph, by name."""
    values = sess.run(None, {k: v.numpy() for k, v in batch.items()})
    return {o.name: v for o, v in zip(sess.get_outputs(), values, strict=True)}


def latency_ms(sess, model, tokenizer, names: list[str]) -> float:
    """Median time of one test sample (batch 1) through ``sess``."""
    one = {k: v[:1] for k, v in encode(tokenizer, samples(model), names).items()}
    return round(median_ms(lambda b: run_session(sess, b), [one], warmup=1, repeats=10), 3)


def verify_onnx(sess, model, tokenizer, names) -> dict:
    """Compare every output on the padded batch and on each sample alone (dynamic batch and
    length)."""
    try:
        texts = samples(model)
        batch = encode(tokenizer, texts, names)
        ref, got = torch_outputs(model, batch), run_session(sess, batch)
        stats = compare(ref, got, batch["attention_mask"])
        for text in texts:
            one = encode(tokenizer, [text], names)
            s = compare(torch_outputs(model, one), run_session(sess, one), one["attention_mask"])
            stats = worst(stats, s)
    except DistillError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors: the graph does not run
        why = f"the exported graph fails on other batch sizes or lengths ({_first_line(e)})"
        raise UnsupportedModel(model.config.model_type, "ONNX export", why) from None
    return stats


@dataclass
class Graph:
    """A verified fp32 ONNX file: its session, inputs, match with PyTorch, export.json facts."""

    path: Path
    session: Any
    names: list[str]
    stats: dict
    facts: dict


def write_graph(model, tokenizer, path: Path) -> Graph:
    """Export a prepared model to ``path``, load it in onnxruntime and check it matches."""
    ort = require_onnx()
    why = untraceable(model.config)
    if why:
        raise UnsupportedModel(model.config.model_type, "ONNX export", why)
    log(f"exporting {type(model).__name__} to ONNX (opset {OPSET})")
    outputs = _trace(model, input_names(model, tokenizer), path)
    model.eval()  # the exporter restores train/eval modes; keep dropout off regardless
    sess = session(path)
    names = graph_inputs(sess, model.config.model_type)  # unused inputs are pruned from it
    log(f"onnx graph inputs: {', '.join(names)}")
    stats = verify_onnx(sess, model, tokenizer, names)
    log(f"onnx fp32: max abs diff {stats['max_abs_diff']:.3g} vs PyTorch")
    check_fp32("ONNX export", stats)
    facts = {
        "opset": OPSET,
        "inputs": names,
        "outputs": outputs,
        "num_test_sentences": len(samples(model)),
        "onnxruntime": ort.__version__,
    }
    return Graph(path, sess, names, stats, facts)


def save_beside(model, tokenizer, folder: Path) -> None:
    """The tokenizer and config.json an ONNX folder needs to be used (and evaluated)."""
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)


def export_onnx(model, tokenizer, tmp: Path) -> dict:
    model = prepare(model)
    graph = write_graph(model, tokenizer, tmp / "model.onnx")
    save_beside(model, tokenizer, tmp)
    latency = latency_ms(graph.session, model, tokenizer, graph.names)
    return {**graph.facts, **graph.stats, "latency_ms_b1": latency}

"""export's core: write an HF folder, an ONNX model or an int8 ONNX model, then verify it.

Every export is written into a temporary sibling folder, loaded back and compared with the
PyTorch model on a few test sentences, and only then renamed into place: the output folder
appears only when it is complete and verified.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from distill_cli.errors import DistillError
from distill_cli.heads import is_causal
from distill_cli.models import check_model_source, load_as_saved
from distill_cli.outputs import check_free_space, weights_bytes
from distill_cli.reporting import log
from distill_cli.user_files import read_json, read_yaml

FORMATS = ("hf", "onnx", "onnx-int8")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXTRAS = ("vocab_map.json", "evaluation.json", "resolved_recipe.yaml")
FP32_TOLERANCE = 1e-4
OPSET = 17
MB = 2**20  # as evaluate's size_mb
SENTENCES = (
    "the movie was good and the acting was great",
    "a dull film",
    "this story is so boring but the cast was quite lovely",
    "awful",
)


def _check_args(model_dir: str, fmt: str, dtype: str, out: Path, overwrite: bool) -> None:
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
    src = Path(model_dir).expanduser().resolve()
    dst = out.resolve()
    if dst == src or dst in src.parents:
        raise DistillError("--output-dir must not be MODEL_DIR or a folder holding it")
    if out.exists() and not out.is_dir():
        raise DistillError(f"output path {out} is a file; pass a folder path to --output-dir")
    if out.exists() and not overwrite:
        raise DistillError(
            f"output folder {out} already exists; pass --overwrite or choose another folder"
        )


def run(
    model_dir: str,
    fmt: str,
    output_dir: str | Path,
    dtype: str = "fp32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Export ``model_dir`` as ``fmt`` into ``output_dir``; returns what export.json holds."""
    out = Path(output_dir).expanduser()
    _check_args(model_dir, fmt, dtype, out, overwrite)
    check_model_source(model_dir, "model")
    # an fp32 copy, and for int8 the fp32 ONNX file beside the quantized one
    check_free_space(out.parent, 3 * weights_bytes(model_dir), "the export and its temp files")
    model, tokenizer = load_as_saved(model_dir, "model", trust_remote_code)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    except OSError as e:
        raise DistillError(f"cannot write beside {out} ({e.strerror}); choose another") from None
    try:
        result = {"model": str(model_dir), "format": fmt, "dtype": dtype}
        if fmt == "hf":
            result.update(_export_hf(model, tokenizer, Path(model_dir), tmp, dtype, out.name))
        else:
            result.update(_export_onnx(model, tokenizer, tmp, int8=fmt == "onnx-int8"))
        for name in EXTRAS:
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, tmp / name)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file()) + ["export.json"]
        sizes = {n: round((tmp / n).stat().st_size / MB, 4) for n in files if (tmp / n).exists()}
        total = round(sum(sizes.values()), 4)
        result.update(files=files, sizes_mb=sizes, total_mb=total, verified=True)
        (tmp / "export.json").write_text(json.dumps(result, indent=2) + "\n")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["output_dir"] = str(out)
    return result


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an old ``out`` (with --overwrite) goes after."""
    tmp.chmod(0o777 & ~_umask())
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        old.rmdir()
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- test inputs and outputs ---------------------------------------------------------------


def encode(tokenizer, texts, input_names) -> dict[str, torch.Tensor]:
    """Tokenize one by one and right-pad by hand: works without a pad token (GPT-2)."""
    rows = [tokenizer(t, truncation=True, max_length=64) for t in texts]
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = {}
    for name in input_names:
        fill = pad if name == "input_ids" else 0
        values = [list(r[name]) if name in r else [0] * len(r["input_ids"]) for r in rows]
        if name == "attention_mask":
            values = [[1] * len(r["input_ids"]) for r in rows]
        batch[name] = torch.tensor([v + [fill] * (width - len(v)) for v in values])
    return batch


def _main_output_name(out) -> str:
    for name in ("logits", "prediction_logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return name
    raise DistillError(f"{type(out).__name__} has no logits or last_hidden_state to export")


def main_output(out) -> torch.Tensor:
    """Classifier / LM logits, or an encoder's last hidden state."""
    return getattr(out, _main_output_name(out))


def _compare(reference: torch.Tensor, got: torch.Tensor, mask: torch.Tensor) -> dict:
    """Max abs diff and argmax agreement over real (unpadded) positions."""
    ref, got = reference.float(), torch.as_tensor(got).float()
    if ref.shape != got.shape:
        raise DistillError(f"export output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
    if ref.dim() == 3:  # per token: drop padded positions
        keep = mask.bool()
        ref, got = ref[keep], got[keep]
    return {
        "max_abs_diff": float((ref - got).abs().max()),
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
    }


def _input_names(model, tokenizer) -> list[str]:
    names = ["input_ids", "attention_mask"]
    params = inspect.signature(model.forward).parameters
    if "token_type_ids" in params and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def _torch_outputs(model, batch: dict) -> torch.Tensor:
    kwargs = {"use_cache": False} if is_causal(model.config) else {}
    with torch.no_grad():
        return main_output(model(**batch, **kwargs))


# --- hf ------------------------------------------------------------------------------------


def _export_hf(model, tokenizer, model_dir: Path, tmp: Path, dtype: str, name: str) -> dict:
    import transformers

    torch_dtype = DTYPES[dtype]
    names = _input_names(model, tokenizer)
    batch = encode(tokenizer, SENTENCES, names)
    reference = _torch_outputs(model, batch)
    to_save = model if dtype == "fp32" else copy.deepcopy(model).to(torch_dtype)
    to_save.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    card = model_card(model.config, model_dir, name, dtype)
    (tmp / "README.md").write_text(card)
    del to_save

    # verify: plain transformers loads the folder and gives the same outputs
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    cls = getattr(transformers, archs[0], None) or transformers.AutoModel
    loaded = cls.from_pretrained(tmp, dtype=torch_dtype).eval()
    loaded_tok = transformers.AutoTokenizer.from_pretrained(tmp)
    loaded_batch = encode(loaded_tok, SENTENCES, names)
    if any(not torch.equal(batch[k], loaded_batch[k]) for k in names):
        raise DistillError("the exported tokenizer encodes the test sentences differently")
    got = _torch_outputs(loaded, loaded_batch)
    stats = _compare(reference, got, batch["attention_mask"])
    log(f"hf {dtype}: max abs diff {stats['max_abs_diff']:.3g} vs the fp32 PyTorch model")
    if dtype == "fp32" and not stats["max_abs_diff"] <= FP32_TOLERANCE:
        raise DistillError(
            f"hf export differs from the PyTorch model by {stats['max_abs_diff']:.3g} "
            f"(> {FP32_TOLERANCE}); the export is not written"
        )
    return {**stats, "num_test_sentences": len(SENTENCES), "pipeline_tag": pipeline_tag(model)}


def pipeline_tag(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    archs = getattr(config, "architectures", None) or []
    arch = archs[0] if archs else ""
    if arch.endswith("ForSequenceClassification"):
        return "text-classification"
    if arch.endswith(("ForMaskedLM", "ForPreTraining")):
        return "fill-mask"
    if is_causal(config):
        return "text-generation"
    return "feature-extraction"


_AUTO = {
    "text-classification": "AutoModelForSequenceClassification",
    "fill-mask": "AutoModelForMaskedLM",
    "text-generation": "AutoModelForCausalLM",
    "feature-extraction": "AutoModel",
}


_CARD_FIX = "fix or delete it; the model card is made from it"


def _read_json(path: Path, **shape) -> dict | None:
    return (
        read_json(path, "record beside the model", _CARD_FIX, **shape) if path.is_file() else None
    )


def _read_yaml(path: Path, **shape) -> dict | None:
    return (
        read_yaml(path, "record beside the model", _CARD_FIX, **shape) if path.is_file() else None
    )


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(config, model_dir: Path, name: str, dtype: str = "fp32") -> str:
    """README.md in the HF convention: YAML header, then how it was made, metrics, usage."""
    import yaml

    recipe = _read_yaml(
        model_dir / "resolved_recipe.yaml", optional={"student": dict, "phases": list}
    )
    train = _read_json(model_dir / "train_results.json", optional={"phases": dict, "eval": dict})
    compression = _read_json(model_dir / "compression.json", optional={"remapped_share": float})
    evaluation = _read_json(model_dir / "evaluation.json", optional={"models": dict})
    tag = pipeline_tag(config)
    header = {"library_name": "transformers"}
    if recipe and recipe.get("teacher"):
        header["base_model"] = str(recipe["teacher"])
    header.update(pipeline_tag=tag, tags=["distill-cli", "distillation"])
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", ""]
    lines += [f"# {name}", "", f"A `{arch}` ({dtype} weights) exported with distill-cli.", ""]

    lines += ["## How it was made", ""]
    if recipe or train:
        if recipe:
            lines.append(f"- method: `{recipe.get('method', 'custom')}`")
            if recipe.get("teacher"):
                lines.append(f"- teacher: `{recipe['teacher']}`")
            student = recipe.get("student") or {}
            if student.get("init"):
                lines.append(f"- student init: `{student['init']}`")
            phases = recipe.get("phases") or []
            steps = (train or {}).get("phases") or {}
            for p in phases:
                terms = ", ".join(
                    f"{k} × {_fmt(v.get('weight', 1.0))}" for k, v in (p.get("terms") or {}).items()
                )
                done = f", {steps[p.get('name')]} steps" if p.get("name") in steps else ""
                lines.append(f"- stage `{p.get('name')}`: {terms or 'no terms'}{done}")
        if train:
            lines.append(
                f"- training: {train.get('steps', '?')} steps ({train.get('stage', '?')} stage), "
                f"final loss {_fmt(train.get('final_loss'))}"
            )
            for k, v in (train.get("eval") or {}).items():
                lines.append(f"- eval ({train.get('eval_split', 'eval')}) {k}: {_fmt(v)}")
    else:
        lines.append("No recipe or training record was found beside the model.")
    lines.append("")

    if compression:
        lines += ["## Vocabulary compression", ""]
        lines.append(
            f"The vocabulary was compressed from {compression.get('vocab_before', '?')} to "
            f"{compression.get('vocab_after', '?')} tokens (ratio {compression.get('ratio', '?')}, "
            f"similarity `{compression.get('similarity', '?')}`); "
            f"{100 * float(compression.get('remapped_share', 0)):.2f}% of corpus tokens were "
            "remapped. The tokenizer emits the new ids directly; `vocab_map.json` holds the map."
        )
        lines.append("")

    if evaluation and evaluation.get("models"):
        key = evaluation.get("primary_metric")
        lines += ["## Metrics", ""]
        lines.append(
            f"On `{evaluation.get('data')}` ({evaluation.get('split')}, "
            f"{evaluation.get('num_examples')} examples):"
        )
        lines += ["", "| model | metric | value | size MB |", "|---|---|---|---|"]
        for mname, rep in evaluation["models"].items():
            for k, v in (rep.get("metrics") or {}).items():
                mark = " (primary)" if k == key else ""
                lines.append(f"| {mname} | {k}{mark} | {_fmt(v)} | {_fmt(rep.get('size_mb'))} |")
        lines.append("")

    auto = _AUTO[tag]
    lines += ["## Usage", "", "```python", "import torch"]
    lines += [f"from transformers import AutoTokenizer, {auto}", ""]
    lines += [f'tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")']
    lines += [f'model = {auto}.from_pretrained("path/to/{name}").eval()']
    if tag == "text-generation":
        lines += [
            'inputs = tokenizer("The movie was", return_tensors="pt")',
            "out = model.generate(**inputs, max_new_tokens=20)",
            "print(tokenizer.decode(out[0]))",
        ]
    else:
        lines += [
            'inputs = tokenizer(["The movie was great."], return_tensors="pt")',
            "with torch.no_grad():",
        ]
        if tag == "text-classification":
            lines += [
                "    logits = model(**inputs).logits",
                "print(model.config.id2label[int(logits.argmax(-1))])",
            ]
        elif tag == "fill-mask":
            lines += ["    logits = model(**inputs).logits"]
        else:
            lines += ["    hidden = model(**inputs).last_hidden_state"]
    lines += ["```", ""]
    return "\n".join(lines)


# --- onnx ----------------------------------------------------------------------------------


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise DistillError(
            "ONNX export needs onnx and onnxruntime: pip install 'distill-cli[onnx]'"
        ) from None
    return onnxruntime


class _Wrapper(torch.nn.Module):
    """Positional inputs in, the main output tensor out (no cache, no tuples)."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names
        self.kwargs = {"use_cache": False} if is_causal(model.config) else {}

    def forward(self, *inputs):
        return main_output(self.model(**dict(zip(self.names, inputs, strict=True)), **self.kwargs))


def _onnx_export(model, names: list[str], path: Path) -> str:
    # a padded row, so that tracing records the attention-mask path rather than a shortcut
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    values = {"input_ids": torch.ones(2, 7, dtype=torch.long), "attention_mask": mask}
    dummy = tuple(values.get(n, torch.zeros(2, 7, dtype=torch.long)) for n in names)
    with torch.no_grad():
        out = model(**dict(zip(names, dummy, strict=True)), **_Wrapper(model, names).kwargs)
    output = _main_output_name(out)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    ndim = getattr(out, output).dim()
    axes[output] = {0: "batch", 1: "sequence"} if ndim == 3 else {0: "batch"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the legacy exporter's deprecation
            torch.onnx.export(
                _Wrapper(model, names).eval(),  # a fresh Module is in train mode: the exporter
                dummy,  # restores that mode afterwards, recursively, so it must be eval
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistillError(
            f"torch.onnx.export failed for {type(model).__name__}: {first}"
        ) from None
    return output


def _session(ort, path: Path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_session(sess, batch: dict):
    return sess.run(None, {k: v.numpy() for k, v in batch.items()})[0]


def _latency_ms(sess, batch: dict, repeats: int = 10) -> float:
    one = {k: v[:1] for k, v in batch.items()}
    _run_session(sess, one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _run_session(sess, one)
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)


def verify_onnx(sess, model, tokenizer, names) -> dict:
    """Compare on the padded batch and on each sentence alone (dynamic batch and length)."""
    batch = encode(tokenizer, SENTENCES, names)
    stats = _compare(
        _torch_outputs(model, batch), _run_session(sess, batch), batch["attention_mask"]
    )
    for text in SENTENCES:
        one = encode(tokenizer, [text], names)
        s = _compare(_torch_outputs(model, one), _run_session(sess, one), one["attention_mask"])
        stats["max_abs_diff"] = max(stats["max_abs_diff"], s["max_abs_diff"])
    return stats


def _export_onnx(model, tokenizer, tmp: Path, int8: bool) -> dict:
    ort = _require_onnx()
    model = model.float().eval()
    if hasattr(model, "set_attn_implementation"):
        try:  # eager attention traces to plain ops that export and run everywhere
            model.set_attn_implementation("eager")
        except Exception:  # noqa: BLE001 - keep the model's own attention
            pass
    names = _input_names(model, tokenizer)
    scratch = Path(tempfile.mkdtemp(dir=tmp.parent, prefix=f".{tmp.name}.fp32-"))
    try:
        fp32_path = (scratch if int8 else tmp) / "model.onnx"
        log(f"exporting {type(model).__name__} to ONNX (opset {OPSET}, inputs {', '.join(names)})")
        output = _onnx_export(model, names, fp32_path)
        model.eval()  # the exporter restores train/eval modes; keep dropout off regardless
        sess = _session(ort, fp32_path)
        stats = verify_onnx(sess, model, tokenizer, names)
        log(f"onnx fp32: max abs diff {stats['max_abs_diff']:.3g} vs PyTorch")
        if not stats["max_abs_diff"] <= FP32_TOLERANCE:
            raise DistillError(
                f"ONNX export differs from the PyTorch model by {stats['max_abs_diff']:.3g} "
                f"(> {FP32_TOLERANCE}); the export is not written"
            )
        result = {
            "opset": OPSET,
            "inputs": names,
            "output": output,
            "num_test_sentences": len(SENTENCES),
            "onnxruntime": ort.__version__,
        }
        if not int8:
            result.update(
                stats, latency_ms_b1=_latency_ms(sess, encode(tokenizer, SENTENCES, names))
            )
        else:
            result.update(
                _quantize(ort, sess, fp32_path, tmp / "model.onnx", model, tokenizer, names)
            )
            result["fp32_max_abs_diff"] = stats["max_abs_diff"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    model.config.save_pretrained(tmp)
    return result


def _quantize(ort, fp32_sess, fp32_path: Path, int8_path: Path, model, tokenizer, names) -> dict:
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
    sess = _session(ort, int8_path)
    stats = verify_onnx(sess, model, tokenizer, names)
    before, after = fp32_path.stat().st_size / MB, int8_path.stat().st_size / MB
    batch = encode(tokenizer, SENTENCES, names)
    log(
        f"onnx int8: {before:.2f} MB → {after:.2f} MB, max abs diff {stats['max_abs_diff']:.3g}, "
        f"argmax agreement {100 * stats['argmax_agreement']:.1f}%"
    )
    return {
        **stats,
        "fp32_mb": round(before, 4),
        "int8_mb": round(after, 4),
        "size_ratio": round(after / before, 4),
        "latency_ms_b1_fp32": _latency_ms(fp32_sess, batch),
        "latency_ms_b1": _latency_ms(sess, batch),
    }

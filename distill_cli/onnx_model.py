"""An ONNX export as evaluate sees a model: called with tokenizer tensors, returns .logits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig

from distill_cli.errors import DistillError
from distill_cli.user_files import reading


def is_onnx_folder(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / "model.onnx").is_file() and not any(folder.glob("*.safetensors"))


class OnnxClassifier:
    """onnxruntime on the CPU behind the small part of the transformers API evaluate uses."""

    def __init__(self, folder: str | Path):
        try:
            import onnx
            import onnxruntime as ort
        except ImportError:
            raise DistillError(
                "evaluating an ONNX export needs onnxruntime: pip install 'distill-cli[onnx]'"
            ) from None
        path = Path(folder) / "model.onnx"
        fix = "export the model again with distill export --format onnx"
        with reading(path, "ONNX model", fix, errors=(Exception,)):  # onnxruntime's own types
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            graph = onnx.load(str(path), load_external_data=False).graph
        self.inputs = {i.name for i in self.session.get_inputs()}
        with reading(Path(folder) / "config.json", "model config", fix):
            self.config = AutoConfig.from_pretrained(folder)
        self._params = sum(int(torch.tensor(t.dims).prod()) for t in graph.initializer)

    def num_parameters(self) -> int:
        return self._params

    def eval(self):
        return self

    def __call__(self, **inputs) -> SimpleNamespace:
        feed = {k: v.cpu().numpy() for k, v in inputs.items() if k in self.inputs}
        logits = self.session.run(None, feed)[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))

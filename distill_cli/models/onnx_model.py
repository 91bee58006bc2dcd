"""An ONNX export as evaluate sees a model: called with tokenizer tensors, returns its graph's
outputs by name (.logits; .start_logits and .end_logits for a QA head; .sentence_embedding for
a sentence embedder, which OnnxEmbedder runs like distill_cli.models.embedder.Embedder)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig

from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.evaluation.latency import timing_threads
from distill_cli.tasks.sentence_embedding import OUTPUT as SENTENCE_EMBEDDING
from distill_cli.user_files import reading

FILL = {
    "input_ids": lambda ids: ids,
    "attention_mask": torch.ones_like,
    "token_type_ids": torch.zeros_like,
    "position_ids": lambda ids: torch.arange(ids.shape[1]).expand_as(ids),
}


def is_onnx_folder(path: str | Path) -> bool:
    folder = Path(path)
    return (folder / "model.onnx").is_file() and not any(folder.glob("*.safetensors"))


def is_onnx_embedder(path: str | Path) -> bool:
    """An ONNX folder whose graph outputs a sentence embedding (distill export of a
    sentence-transformers folder); False without onnx installed or for a file it cannot read."""
    if not is_onnx_folder(path):
        return False
    try:
        import onnx

        graph = onnx.load(str(Path(path) / "model.onnx"), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - not ours to judge here: OnnxClassifier names the problem
        return False
    return any(o.name == SENTENCE_EMBEDDING for o in graph.output)


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
            options = ort.SessionOptions()
            options.intra_op_num_threads = timing_threads()  # the threads evaluate times torch at
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
            graph = onnx.load(str(path), load_external_data=False).graph
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        with reading(Path(folder) / "config.json", "model config", fix):
            self.config = AutoConfig.from_pretrained(folder)
        unknown = [n for n in self.inputs if n not in FILL]
        if unknown:
            raise UnsupportedModel(
                self.config.model_type, "evaluate", f"its ONNX graph takes {', '.join(unknown)}"
            )
        self._params = sum(int(torch.tensor(t.dims).prod()) for t in graph.initializer)

    def num_parameters(self) -> int:
        return self._params

    def eval(self):
        return self

    def __call__(self, **inputs) -> SimpleNamespace:
        """Feeds the inputs the graph declares; a declared input the tokenizer does not give is
        filled (token types 0, positions 0..n-1). Returns every graph output as an attribute
        of its name, as a transformers output would hold it."""
        ids = inputs["input_ids"]
        feed = {n: (inputs[n] if n in inputs else FILL[n](ids)).cpu().numpy() for n in self.inputs}
        values = self.session.run(None, feed)
        return SimpleNamespace(
            **{n: torch.from_numpy(v) for n, v in zip(self.outputs, values, strict=True)}
        )


class OnnxEmbedder:
    """An ONNX sentence-embedder export called like distill_cli.models.embedder.Embedder:
    ``embedder(input_ids, attention_mask, token_type_ids=None)`` → [batch, embedding_dim]."""

    def __init__(self, folder: str | Path):
        self.graph = OnnxClassifier(folder)
        self.config = self.graph.config
        shapes = {o.name: o.shape for o in self.graph.session.get_outputs()}
        if SENTENCE_EMBEDDING not in shapes:
            raise DistillError(
                f"{Path(folder) / 'model.onnx'} has no {SENTENCE_EMBEDDING} output, so it is no "
                "sentence embedder; export a sentence-transformers folder with distill export "
                "--format onnx"
            )
        self.embedding_dim = shapes[SENTENCE_EMBEDDING][-1]

    def num_parameters(self) -> int:
        return self.graph.num_parameters()

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return getattr(self.graph(**inputs), SENTENCE_EMBEDDING)

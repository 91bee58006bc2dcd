"""evaluate for sentence embedders: agreement and neighbour recall against the teacher, a linear
probe on labelled data, STS Spearman on scored sentence pairs; size and latency as for every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill_cli import tasks
from distill_cli.errors import DistillError
from distill_cli.evaluation import embedding_metrics as em
from distill_cli.models.embedder import is_sentence_transformers_folder, load_embedder
from distill_cli.models.load import load_tokenizer
from distill_cli.recipe import DataConfig
from distill_cli.reporting import log

NEIGHBOURS = 10


@dataclass
class EmbeddingData:
    texts: list[str]  # what agreement and neighbour recall compare (the first text column)
    pairs: tuple[list[str], list[str]] | None = None  # STS sentence pairs, with ``scores``
    scores: np.ndarray | None = None
    probe_texts: list[str] | None = None  # the train split, for the linear probe
    probe_labels: np.ndarray | None = None
    labels: np.ndarray | None = None  # the evaluated split's labels

    @property
    def primary(self) -> str:
        if self.probe_texts is not None:
            return em.PROBE_ACCURACY
        return em.STS_SPEARMAN if self.pairs is not None else em.AGREEMENT


def load_data(cfg: DataConfig, split: str) -> EmbeddingData:
    """The split's texts; scored pairs (regression on two text columns) for STS; labels and the
    train split for the probe (classification)."""
    train = cfg.train_split
    task = tasks.load_task_data(cfg, splits=[split], optional=(train,) if train != split else ())
    kind = tasks.of(task)
    if not kind.one_label_per_text:
        raise DistillError(
            f"an embedding model is evaluated on sentences (labelled, scored pairs, or with "
            f"--teacher any), not {kind.description} data; pass other --data"
        )
    rows = task.splits[split]
    first = task.text_columns[0]
    data = EmbeddingData(texts=list(rows[first]))
    if not kind.class_logits and len(task.text_columns) == 2:
        data.pairs = (list(rows[first]), list(rows[task.text_columns[1]]))
        data.scores = em.sts_scores(rows["label"])
    elif kind.class_logits and train in task.splits and train != split:
        data.probe_texts = list(task.splits[train][first])
        data.probe_labels = np.array(task.splits[train]["label"])
        data.labels = np.array(rows["label"])
    return data


def encode(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64):
    """Sentence embeddings [texts, dim] as float32 numpy."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size], truncation=True, max_length=max_length,
                padding=True, return_tensors="pt",
            )  # fmt: skip
            out.append(model(**batch).float().cpu().numpy())
    return np.concatenate(out)


def own_metrics(model, tokenizer, data: EmbeddingData, max_length: int):
    """A model's embeddings of the split, and the metrics that need no teacher."""
    vectors = encode(model, tokenizer, data.texts, max_length)
    metrics = {}
    if data.probe_texts is not None:
        train = encode(model, tokenizer, data.probe_texts, max_length)
        metrics[em.PROBE_ACCURACY] = em.probe_accuracy(
            train, data.probe_labels, vectors, data.labels
        )
    if data.pairs is not None:
        a, b = (encode(model, tokenizer, side, max_length) for side in data.pairs)
        metrics[em.STS_SPEARMAN] = em.sts_spearman(a, b, data.scores)
    return vectors, metrics


def against_teacher(student: np.ndarray, teacher: np.ndarray) -> dict:
    """Agreement (None when the widths differ) and neighbour recall@10."""
    same_width = student.shape[1] == teacher.shape[1]
    return {
        em.AGREEMENT: em.agreement(student, teacher) if same_width else None,
        em.NEIGHBOUR_RECALL: em.neighbour_recall(student, teacher, NEIGHBOURS),
    }


def is_embedder(path) -> bool:
    """A sentence-transformers folder, or the ONNX export of one."""
    from distill_cli.models.onnx_model import is_onnx_embedder

    return is_sentence_transformers_folder(path) or is_onnx_embedder(path)


def load(path: str, role: str):
    """An embedder (PyTorch, or its ONNX export run by onnxruntime) and its tokenizer."""
    from distill_cli.models.onnx_model import OnnxEmbedder, is_onnx_embedder

    if is_onnx_embedder(path):
        return OnnxEmbedder(path), load_tokenizer(path, role)
    return load_embedder(path, role)


def parameters(model) -> int:
    if hasattr(model, "num_parameters"):  # an ONNX export counts its initialisers
        return model.num_parameters()
    return sum(p.numel() for p in model.parameters())


def size_mb(path: Path) -> float:
    """Weights at the top of the folder and in its Dense module."""
    files = [*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.onnx")]
    files += path.glob("2_Dense/*")
    return sum(p.stat().st_size for p in files if p.is_file()) / 2**20


def log_metrics(role: str, metrics: dict) -> None:
    shown = {k: v for k, v in metrics.items() if v is not None}
    log(f"{role}: {', '.join(f'{k} {v:.4f}' for k, v in shown.items())}")

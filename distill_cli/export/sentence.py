"""A sentence embedder as export sees a model: token inputs in, one output out, the sentence
embedding (transformer, pooling, optional Dense, normalisation), so that onnx.py and int8.py
trace and check it as one graph like any other model."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from distill_cli.models.embedder import IDENTITY, Embedder
from distill_cli.tasks import sentence_embedding

SENTENCE_EMBEDDING = sentence_embedding.OUTPUT  # the output's name
TAG = sentence_embedding.PIPELINE  # the Hub's pipeline tag for sentence embedders


@dataclass
class SentenceEmbeddingOutput(ModelOutput):
    sentence_embedding: torch.FloatTensor | None = None


class SentenceEmbedding(torch.nn.Module):
    """``embedder`` behind a transformers-style forward that returns ``.sentence_embedding``.
    Token types reach the transformer only when its forward takes them; extra keywords
    (``use_cache``) go to the transformer."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder
        params = inspect.signature(embedder.model.forward).parameters
        self.takes_token_types = "token_type_ids" in params

    @property
    def config(self):
        return self.embedder.model.config

    def set_attn_implementation(self, implementation: str) -> None:
        self.embedder.model.set_attn_implementation(implementation)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **kwargs):
        if token_type_ids is not None and self.takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        out = self.embedder.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        vectors = self.embedder.pool(out.last_hidden_state, attention_mask)
        # a fixed width, so that the graph declares the embedding size (gathers leave it open)
        return SentenceEmbeddingOutput(vectors.reshape(-1, self.embedder.embedding_dim))


def embedding_facts(embedder: Embedder) -> dict:
    """What export.json records about an embedder: its pooling, Dense, normalisation, size."""
    dense = embedder.dense
    return {
        "pooling": embedder.pooling,
        "dense": None
        if dense is None
        else {
            "in_features": dense.in_features,
            "out_features": dense.out_features,
            "bias": dense.bias is not None,
            "activation_function": embedder.dense_activation,
        },
        "normalize": embedder.normalize,
        "embedding_dim": embedder.embedding_dim,
    }


def dense_activation_code(embedder: Embedder) -> str | None:
    """The Dense activation as Python a model card can show (``torch.nn.Tanh()``), or None for
    the identity."""
    name = embedder.dense_activation
    if name == IDENTITY:
        return None
    cls = type(embedder.activation)
    short = f"torch.nn.{cls.__name__}"
    return f"{short}()" if getattr(torch.nn, cls.__name__, None) is cls else f"{name}()"


def cosines(reference: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two [batch, dim] embedding matrices."""
    return torch.nn.functional.cosine_similarity(reference.float(), got.float(), dim=-1)

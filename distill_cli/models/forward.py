"""What a forward pass gives the losses: classifier logits, hidden states, attentions, and the
word-prediction features and vocabulary matrix of GLMD (Z = H·Wᵀ + b, never built here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill_cli.errors import UnsupportedModel
from distill_cli.models.kinds import is_causal, saved_with_lm_head
from distill_cli.tasks import head_logits

__all__ = ["is_causal"]


def _widths(model) -> tuple[int, int]:
    """(embedding width, hidden width): they differ when embeddings are factorised (ALBERT)."""
    return model.get_input_embeddings().weight.shape[1], model.config.hidden_size


def lm_head(model):
    """The trained vocabulary projection of an LM head, or None (base model, classifier, or an
    output module that is not one row per token)."""
    head = model.get_output_embeddings()
    vocab = model.get_input_embeddings().weight.shape[0]
    if head is None or getattr(head, "weight", None) is None or head.weight.shape[0] != vocab:
        return None
    return head


def embedding_projection(model):
    """The model's own embedding→hidden projection (ALBERT, ELECTRA): the linear map from the
    embedding width to the hidden width outside the blocks (no numbered module above it)."""
    e, h = _widths(model)
    for name, module in model.base_model.named_modules():
        in_blocks = any(part.isdigit() for part in name.split("."))
        if isinstance(module, torch.nn.Linear) and not in_blocks:
            if (module.in_features, module.out_features) == (e, h):
                return module
    return None


def word_mode(requested: str, model, prefer_head: bool = False) -> str:
    """embeddings | lm_head for a model whose word logits a loss term reads.

    ``auto`` is lm_head for causal LMs and for encoders with factorised embeddings, when they have
    a trained LM head; else embeddings: Z = H·Eᵀ, through the model's own embedding→hidden
    projection (transposed) when the embedding width differs from the hidden width.
    ``prefer_head`` (a task read through the word head: cloze) makes ``auto`` lm_head for any
    model saved with a trained LM head (a masked LM too; a causal LM always, as a GGUF file's
    config names no architecture), embeddings for one without.
    """
    e, h = _widths(model)
    factorised = e != h and not is_causal(model.config)
    if requested == "auto":
        wants_head = is_causal(model.config) or factorised
        if prefer_head:
            wants_head = is_causal(model.config) or saved_with_lm_head(model.config)
        requested = "lm_head" if wants_head and lm_head(model) is not None else "embeddings"
    if requested == "lm_head" and lm_head(model) is None:
        raise UnsupportedModel(
            model.config.model_type,
            "word_logits: lm_head",
            f"{type(model).__name__} has no LM head; set word_logits: auto or embeddings",
        )
    if requested == "embeddings" and factorised and embedding_projection(model) is None:
        raise UnsupportedModel(
            model.config.model_type,
            f"word_logits: {requested}",
            f"its embeddings are {e} wide and its hidden states {h}, and {type(model).__name__} "
            "has neither a trained LM head nor an embedding projection to map one onto the "
            "other; distil from its masked-LM checkpoint (…ForMaskedLM) or drop word_kl",
        )
    return requested


@dataclass
class Needs:
    """Which outputs the phase's loss terms read."""

    logits: bool = False
    hidden: bool = False
    attentions: bool = False
    word: bool = False
    embedding: bool = False  # the sentence embedding (pooled, projected, normalised)
    teacher: bool = False  # whether the teacher runs at all


@dataclass
class Outputs:
    logits: torch.Tensor | None = None  # tasks.head_logits: QA start/end as [batch, 2, L]
    hidden: tuple[torch.Tensor, ...] = ()  # embeddings output, then every layer
    attentions: tuple[torch.Tensor, ...] = ()
    word_features: torch.Tensor | None = None  # H, H·P, or the LM head's transform of H
    word_weight: torch.Tensor | None = None  # W [V, d]
    word_bias: torch.Tensor | None = None
    embedding: torch.Tensor | None = None  # [batch, dim] sentence embeddings
    word_topk: object = None  # a cached teacher's stored word top-k (training.word_topk.TopK)


def vocabulary(model, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The matrix W [V, d] (and bias) that word features are multiplied with."""
    if mode == "embeddings":
        return model.get_input_embeddings().weight, None
    head = lm_head(model)
    return head.weight, getattr(head, "bias", None)


def embedding_features(model, hidden: torch.Tensor) -> torch.Tensor:
    """H, or H·P for factorised embeddings (P: the embedding→hidden projection's weight), so
    that H·P·Eᵀ scores each word's embedding as the model maps it into its hidden space."""
    if hidden.shape[-1] == model.get_input_embeddings().weight.shape[1]:
        return hidden
    return hidden @ embedding_projection(model).weight


def _run_to_lm_head(model, inputs: dict, needs: Needs):
    """The model's outputs and the input of its LM head's vocabulary projection: H after the
    head's own transform (dense, activation, norm, whatever it has). A hook keeps that input and
    hands the projection an empty sequence, so the [tokens, V] logits are never built."""
    seen = {}

    def keep_input(module, args):
        seen["features"] = args[0]
        return (args[0][..., :0, :], *args[1:])

    hook = lm_head(model).register_forward_pre_hook(keep_input)
    try:
        out = model(**inputs, output_hidden_states=needs.hidden, output_attentions=needs.attentions)
    finally:
        hook.remove()
    if "features" not in seen:
        raise UnsupportedModel(
            model.config.model_type,
            "word_logits: lm_head",
            f"{type(model).__name__} computes its logits without calling its output embeddings; "
            "set word_logits: embeddings",
        )
    return out, seen["features"]


@dataclass
class Blank:
    """Where a task reads its class logits from the word head (cloze): one position per row and
    the vocabulary ids of the classes (the verbalizers), scaled like the word logits."""

    positions: torch.Tensor  # [batch]
    ids: torch.Tensor  # [batch, classes]
    scale: float = 1.0


BLANK_COLUMNS = ("blank_position", "verbalizer_ids")  # a batch's columns for a Blank


def blank_of(batch: dict, scale: float = 1.0, prefix: str = "", id_remap=None) -> Blank | None:
    """The batch's Blank (``prefix``: the teacher's own columns when it tokenizes differently);
    ``id_remap`` maps a compressed student's verbalizer ids. None for a batch without one."""
    position, ids = (batch.get(prefix + c) for c in BLANK_COLUMNS)
    if position is None:
        return None if not prefix else blank_of(batch, scale, "", id_remap)
    if id_remap is not None:
        ids = id_remap[ids]
    return Blank(position, ids, scale)


def at_blank(features, blank: Blank) -> torch.Tensor:
    """Each row's features [batch, d] at its blank."""
    # a gather (not indexing by arange(len)): it traces with a dynamic batch (ONNX export)
    at = blank.positions.long().view(-1, 1, 1).expand(-1, 1, features.shape[-1])
    return features.gather(1, at).squeeze(1)


def blank_logits(features, weight, bias, blank: Blank) -> torch.Tensor:
    """Class logits [batch, classes]: each row's word features at its blank times only the
    verbalizer rows of W (plus their bias), scaled; the [batch, tokens, V] logits are never built.
    Equal to the full word logits at the blank, indexed at the verbalizer ids."""
    h = at_blank(features, blank)
    w = weight[blank.ids]  # [B, K, d]
    z = torch.einsum("bd,bkd->bk", h, w.to(h.dtype))
    if bias is not None:
        z = z + bias[blank.ids].to(z.dtype)
    return z * blank.scale


def forward(
    model, inputs: dict, needs: Needs, mode: str, pool=None, blank: Blank | None = None
) -> Outputs:
    """Run a model (classifier, base encoder, MLM or causal LM) for the outputs the losses need;
    ``pool(last_hidden_state, attention_mask)`` makes the sentence embedding when they read one.
    With a ``blank`` (cloze), the logits are the word logits there, at the verbalizer ids.

    LM logits are never computed here: the fused loss multiplies word features with W in chunks.
    """
    at_blank = needs.logits and blank is not None
    words = needs.word or at_blank
    hidden_wanted = needs.hidden or words
    features = None
    if needs.logits and not at_blank:  # a task model: classifier, tagger or QA reader
        out = model(
            **inputs, output_hidden_states=hidden_wanted, output_attentions=needs.attentions
        )
        result = Outputs(logits=head_logits(out))
        hidden = out.hidden_states if hidden_wanted else ()
        last = hidden[-1] if hidden_wanted else None
    elif words and mode == "lm_head":
        out, features = _run_to_lm_head(model, inputs, needs)
        result, hidden = Outputs(), out.hidden_states if needs.hidden else ()
    else:  # the base model under any head
        base = model.base_model
        out = base(**inputs, output_hidden_states=needs.hidden, output_attentions=needs.attentions)
        result = Outputs()
        hidden = out.hidden_states if needs.hidden else ()
        last = out.last_hidden_state
    # block-sparse BigBird returns its hidden states padded to whole blocks: cut to the input
    length = inputs["input_ids"].shape[1] if "input_ids" in inputs else None
    result.hidden = tuple(h[:, :length] for h in hidden) if needs.hidden else ()
    result.attentions = tuple(out.attentions) if needs.attentions else ()
    if needs.embedding:
        result.embedding = pool(last, inputs["attention_mask"])
    if words:
        features = features if features is not None else embedding_features(model, last)
        weight, bias = vocabulary(model, mode)
        if at_blank:
            result.logits = blank_logits(features, weight, bias, blank)
    if needs.word:
        result.word_features = features
        # returned from forward so that DDP sees the vocabulary matrix as used
        result.word_weight, result.word_bias = weight, bias
    return result


def read_blank(model, inputs: dict, blank: Blank, mode: str) -> Outputs:
    """A word model read as a classifier at its blank: Outputs whose ``logits`` are the class
    logits (what a scorer reads)."""
    return forward(model, inputs, Needs(logits=True), mode, blank=blank)


class StudentModule(torch.nn.Module):
    """The student plus the trainable modules its loss terms add, by term name (projections).

    Accelerate wraps this one module, so gradients of both are synchronised across processes;
    only ``model`` is saved.
    """

    def __init__(self, model, extras: torch.nn.ModuleDict | None = None):
        super().__init__()
        self.model = model
        self.extras = extras if extras is not None else torch.nn.ModuleDict()

    def forward(
        self, inputs: dict, needs: Needs, mode: str, blank: Blank | None = None, read=None
    ) -> Outputs:
        """``read``: a function like :func:`forward` to run the model with instead
        (data.windows.forward: a student read through windows, with gradients)."""
        head = self.extras["embedding"] if "embedding" in self.extras else None
        pool = head.pool if head is not None else None
        return (read or forward)(self.model, inputs, needs, mode, pool, blank)

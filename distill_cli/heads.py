"""What a forward pass gives the losses: classifier logits, hidden states, attentions, and the
word-prediction features and vocabulary matrix of GLMD (Z = H·Wᵀ + b, never built here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from distill_cli.errors import DistillError


def is_causal(config) -> bool:
    """A decoder-only LM (GPT-2, Llama, Gemma, ...), as opposed to a BERT-style encoder."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    if any(
        a.endswith(("ForMaskedLM", "ForPreTraining", "ForSequenceClassification")) for a in archs
    ):
        return False
    t = config.model_type
    return t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and t not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def word_mode(requested: str, config) -> str:
    """embeddings | lm_head; ``auto`` is embeddings for encoders and lm_head for causal LMs."""
    if requested == "auto":
        return "lm_head" if is_causal(config) else "embeddings"
    return requested


@dataclass
class Needs:
    """Which outputs the phase's loss terms read."""

    logits: bool = False
    hidden: bool = False
    attentions: bool = False
    word: bool = False
    teacher: bool = False  # whether the teacher runs at all


@dataclass
class Outputs:
    logits: torch.Tensor | None = None
    hidden: tuple[torch.Tensor, ...] = ()  # embeddings output, then every layer
    attentions: tuple[torch.Tensor, ...] = ()
    word_features: torch.Tensor | None = None  # H (or the LM head's transform of H)
    word_weight: torch.Tensor | None = None  # W [V, d]
    word_bias: torch.Tensor | None = None


def vocabulary(model, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The matrix W [V, d] (and bias) that word features are multiplied with."""
    if mode == "embeddings":
        return model.get_input_embeddings().weight, None
    head = model.get_output_embeddings()
    if head is None:
        raise DistillError(
            f"{type(model).__name__} has no LM head; set word_logits: embeddings in the recipe"
        )
    return head.weight, getattr(head, "bias", None)


def _lm_head_transform(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head up to its vocabulary projection."""
    if is_causal(model.config):
        return hidden
    if hasattr(model, "cls"):  # BERT family
        return model.cls.predictions.transform(hidden)
    head = getattr(model, "lm_head", None)
    if head is not None and hasattr(head, "dense"):  # RoBERTa family
        return head.layer_norm(F.gelu(head.dense(hidden)))
    raise DistillError(
        f"word_logits: lm_head is not supported for {type(model).__name__}; "
        "set word_logits: embeddings in the recipe"
    )


def forward(model, inputs: dict, needs: Needs, mode: str) -> Outputs:
    """Run a model (classifier, base encoder, MLM or causal LM) for the outputs the losses need.

    LM heads are skipped: word logits are computed by the fused loss, never here.
    """
    hidden_wanted = needs.hidden or needs.word
    if needs.logits:  # a sequence classifier
        out = model(
            **inputs, output_hidden_states=hidden_wanted, output_attentions=needs.attentions
        )
        result = Outputs(logits=out.logits)
        hidden = out.hidden_states if hidden_wanted else ()
    else:  # the base model under any head
        base = model.base_model
        out = base(**inputs, output_hidden_states=needs.hidden, output_attentions=needs.attentions)
        result = Outputs()
        hidden = out.hidden_states if needs.hidden else (out.last_hidden_state,)
        last = out.last_hidden_state
    if hidden_wanted and needs.logits:
        last = hidden[-1]
    result.hidden = tuple(hidden) if needs.hidden else ()
    result.attentions = tuple(out.attentions) if needs.attentions else ()
    if needs.word:
        result.word_features = last if mode == "embeddings" else _lm_head_transform(model, last)
        # returned from forward so that DDP sees the vocabulary matrix as used
        result.word_weight, result.word_bias = vocabulary(model, mode)
    return result


class StudentModule(torch.nn.Module):
    """The student plus the trainable modules its loss terms add, by term name (projections).

    Accelerate wraps this one module, so gradients of both are synchronised across processes;
    only ``model`` is saved.
    """

    def __init__(self, model, extras: torch.nn.ModuleDict | None = None):
        super().__init__()
        self.model = model
        self.extras = extras if extras is not None else torch.nn.ModuleDict()

    def forward(self, inputs: dict, needs: Needs, mode: str) -> Outputs:
        return forward(self.model, inputs, needs, mode)

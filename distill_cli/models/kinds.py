"""What kind of language model a config describes, decided from the config alone (no imports of
the rest of the package, so that task types can ask too)."""

from __future__ import annotations

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

LM_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForPreTraining")
# RoBERTa-style models count positions from padding_idx + 1 (model types ending in "roberta" too)
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "longformer", "camembert", "data2vec-text", "luke")


def position_offset(model_type: str, pad_token_id: int | None) -> int:
    """The position-embedding rows a model never reads, before its position 0: padding_idx + 1
    for RoBERTa-style models, none for BERT-style ones."""
    if model_type in OFFSET_POSITIONS or model_type.endswith("roberta"):
        return (pad_token_id or 0) + 1
    return 0


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


def saved_with_lm_head(config) -> bool:
    """Whether the checkpoint was saved with a trained word head (a masked or causal LM), as its
    config's architecture says; a bare encoder or a classifier loaded as an LM gets a new one."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(LM_HEAD_SUFFIXES) for a in archs)

"""Distillation loss math as plain functions, and the registry of loss terms recipes can name.

All math runs in fp32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distill_cli.errors import DistillError
from distill_cli.heads import Needs, Outputs
from distill_cli.word_kd import word_kl


def soft_label_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * t * t


def hard_label_loss(student_logits, labels) -> torch.Tensor:
    """Cross-entropy on hard labels, or MSE when the task is regression (one output)."""
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(student_logits.float(), labels)


def logit_mse(student_logits, teacher_logits) -> torch.Tensor:
    """MSE between student and teacher outputs: soft targets for regression tasks."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def layer_pairs(student_layers: int, teacher_layers: int, layer_map: list[int] | None):
    """(student layer, teacher layer) pairs, 1-based as in hidden_states (0 = embeddings).

    Uniform by default: student layer m learns from teacher layer m·L_t/L_s (TinyBERT).
    """
    if layer_map is None:
        layer_map = [
            round(m * teacher_layers / student_layers) for m in range(1, student_layers + 1)
        ]
    if len(layer_map) != student_layers or not all(1 <= t <= teacher_layers for t in layer_map):
        raise DistillError(
            f"layer_map {layer_map} must give one teacher layer (1..{teacher_layers}) "
            f"for each of the student's {student_layers} layers"
        )
    return list(zip(range(1, student_layers + 1), layer_map, strict=True))


def hidden_mse(student_hidden, teacher_hidden, mask, pairs, projections=None) -> torch.Tensor:
    """MSE between mapped hidden states over non-pad positions; projected when widths differ."""
    keep = mask.bool()
    total = 0.0
    for i, (s, t) in enumerate(pairs):
        hs = student_hidden[s][keep].float()
        if projections is not None and len(projections):
            hs = projections[i](hs.to(projections[i].weight.dtype)).float()
        total = total + F.mse_loss(hs, teacher_hidden[t][keep].float())
    return total / len(pairs)


def attention_kl(student_attn, teacher_attn, mask, pairs) -> torch.Tensor:
    """KL(teacher ‖ student) of head-averaged attention rows, averaged over non-pad queries."""
    keep = mask.bool()
    total = 0.0
    for s, t in pairs:
        p_s = student_attn[s - 1].float().mean(1)[keep]  # [queries, keys]
        p_t = teacher_attn[t - 1].float().mean(1)[keep]
        kl = torch.xlogy(p_t, p_t) - p_t * p_s.clamp_min(1e-12).log()
        total = total + kl.sum(-1).mean()
    return total / len(pairs)


@dataclass
class Step:
    """What one forward pass of student and teacher gives the loss terms."""

    student: Outputs
    teacher: Outputs | None = None
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # attention mask of the (shared) inputs
    vocab_index: torch.Tensor | None = None  # teacher rows of a compressed student vocabulary
    projections: torch.nn.ModuleList | None = None


@dataclass(frozen=True)
class LossTerm:
    fn: Callable[[Step, Any], torch.Tensor]
    needs_teacher: bool
    needs: Needs
    help: str


def _word_kl(step: Step, term) -> torch.Tensor:
    s, t = step.student, step.teacher
    return word_kl(
        s.word_features, s.word_weight, t.word_features, t.word_weight,
        mask=step.mask, temperature=term.temperature, b_s=s.word_bias, b_t=t.word_bias,
        vocab_index=step.vocab_index,
    )  # fmt: skip


def _pairs(step: Step, term) -> list[tuple[int, int]]:
    return layer_pairs(len(step.student.hidden) - 1, len(step.teacher.hidden) - 1, term.layer_map)


KD_LOSSES: dict[str, LossTerm] = {
    "soft_label_kl": LossTerm(
        lambda st, term: soft_label_kl(st.student.logits, st.teacher.logits, term.temperature),
        needs_teacher=True,
        needs=Needs(logits=True),
        help="T²·KL(teacher ‖ student) on the classifier logits",
    ),
    "ce": LossTerm(
        lambda st, term: hard_label_loss(st.student.logits, st.labels),
        needs_teacher=False,
        needs=Needs(logits=True),
        help="hard-label cross-entropy (MSE for regression)",
    ),
    "logit_mse": LossTerm(
        lambda st, term: logit_mse(st.student.logits, st.teacher.logits),
        needs_teacher=True,
        needs=Needs(logits=True),
        help="MSE between student and teacher logits",
    ),
    "word_kl": LossTerm(
        _word_kl,
        needs_teacher=True,
        needs=Needs(word=True),
        help="GLMD word-prediction KL, T²·KL(softmax(Z_t/T) ‖ softmax(Z_s/T)) over non-pad tokens",
    ),
    "hidden_mse": LossTerm(
        lambda st, term: hidden_mse(
            st.student.hidden, st.teacher.hidden, st.mask, _pairs(st, term), st.projections
        ),
        needs_teacher=True,
        needs=Needs(hidden=True),
        help="MSE between mapped hidden states (a learned projection when widths differ)",
    ),
    "attention_kl": LossTerm(
        lambda st, term: attention_kl(
            st.student.attentions, st.teacher.attentions, st.mask, _pairs(st, term)
        ),
        needs_teacher=True,
        needs=Needs(attentions=True, hidden=True),
        help="KL between mapped, head-averaged attention maps",
    ),
}

TERMS_NEED_TEACHER = {name: term.needs_teacher for name, term in KD_LOSSES.items()}
# Terms that read classifier logits: only the task stage has them.
TASK_ONLY_TERMS = {name for name, term in KD_LOSSES.items() if term.needs.logits}


def needs_of(terms: dict) -> Needs:
    """The union of what a phase's terms read."""
    needs = Needs()
    for name in terms:
        for key, value in vars(KD_LOSSES[name].needs).items():
            setattr(needs, key, getattr(needs, key) or value)
        needs.teacher |= KD_LOSSES[name].needs_teacher
    return needs


def loss_parts(terms: dict, step: Step) -> dict[str, torch.Tensor]:
    """Each named term of a phase, unweighted. ``terms`` maps names to recipe Terms."""
    return {name: KD_LOSSES[name].fn(step, term) for name, term in terms.items()}


def weighted_sum(terms: dict, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(term.weight * parts[name] for name, term in terms.items())

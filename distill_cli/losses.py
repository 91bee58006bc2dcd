"""Distillation loss math as plain functions, and the registry of loss terms recipes can name.

All math runs in fp32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


@dataclass
class StepOutputs:
    """What one forward pass gives the loss terms."""

    student_logits: torch.Tensor
    labels: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class LossTerm:
    fn: Callable[[StepOutputs, float], torch.Tensor]
    needs_teacher: bool
    help: str


KD_LOSSES: dict[str, LossTerm] = {
    "soft_label_kl": LossTerm(
        lambda o, t: soft_label_kl(o.student_logits, o.teacher_logits, t),
        needs_teacher=True,
        help="T²·KL(teacher ‖ student) on the classifier logits",
    ),
    "ce": LossTerm(
        lambda o, t: hard_label_loss(o.student_logits, o.labels),
        needs_teacher=False,
        help="hard-label cross-entropy (MSE for regression)",
    ),
    "logit_mse": LossTerm(
        lambda o, t: logit_mse(o.student_logits, o.teacher_logits),
        needs_teacher=True,
        help="MSE between student and teacher logits",
    ),
}

TERMS_NEED_TEACHER = {name: term.needs_teacher for name, term in KD_LOSSES.items()}


def loss_parts(terms: dict, outputs: StepOutputs) -> dict[str, torch.Tensor]:
    """Each named term of a phase, unweighted. ``terms`` maps names to recipe Terms."""
    return {name: KD_LOSSES[name].fn(outputs, term.temperature) for name, term in terms.items()}


def weighted_sum(terms: dict, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(term.weight * parts[name] for name, term in terms.items())

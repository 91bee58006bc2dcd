"""Distillation loss math as plain functions, and the registry of loss terms recipes can name.

Each registry entry declares the parameters it takes, what it reads and what it requires; the rest
of the code reads those declarations and never names a term, so adding a term means editing this
file only. All math runs in fp32 whatever the model's dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from distill_cli import tasks
from distill_cli.errors import DistillError
from distill_cli.models.forward import Needs, Outputs
from distill_cli.tasks import MASKED
from distill_cli.training.word_kd import DIVERGENCES, divergence_problems, word_kl
from distill_cli.training.word_topk import word_kl_topk


def soft_label_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), averaged over the rows (examples, tokens, or QA
    start and end distributions)."""
    if len(student_logits) == 0:
        return student_logits.float().sum() * 0.0
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * t * t


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


def embedding_mse(student, teacher) -> torch.Tensor:
    """MSE between sentence embeddings (Reimers & Gurevych, 2020)."""
    return F.mse_loss(student.float(), teacher.float())


def embedding_cosine(student, teacher) -> torch.Tensor:
    """1 − cosine between each text's student and teacher embeddings, averaged."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def similarity_logits(embeddings, temperature: float) -> torch.Tensor:
    """Cosine similarities within a batch over T, each text's own similarity left out."""
    e = F.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T / temperature
    return sim.masked_fill(torch.eye(len(e), dtype=torch.bool, device=e.device), MASKED)


def embedding_kl(student, teacher, temperature: float = 0.05) -> torch.Tensor:
    """Relational KD: KL(teacher ‖ student) between each text's softmax over its cosine
    similarities to the other texts of the batch, averaged over texts (0 for one text)."""
    if len(student) < 2:
        return student.float().sum() * 0.0
    log_p_s = F.log_softmax(similarity_logits(student, temperature), dim=-1)
    log_p_t = F.log_softmax(similarity_logits(teacher, temperature), dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


@dataclass
class Step:
    """What one forward pass of student and teacher gives the loss terms."""

    student: Outputs
    teacher: Outputs | None = None
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # attention mask of the (shared) inputs
    vocab_index: torch.Tensor | None = None  # teacher rows of a compressed student vocabulary
    word_scale: float = 1.0  # multiplies both models' word logits (the run's word_logit_scale)
    task: str = "sequence"  # the task's logits layout (tasks.LAYOUTS): sequence | token | span
    word_starts: tuple[torch.Tensor, torch.Tensor] | None = None  # (student, teacher) [batch, W]

    @property
    def layout(self) -> tasks.Layout:
        return tasks.LAYOUTS[self.task]

    def rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Student and teacher logits as rows of one distribution each, paired (the task's
        layout: examples, labelled tokens or words, QA start and end distributions)."""
        return self.layout.rows(self)


# ---------------------------------------------------------------- the parameters terms take


def _param(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Weighted:
    weight: float = _param(1.0, "Weight of this term in the phase's weighted sum.")


@dataclass
class Tempered(Weighted):
    temperature: float = _param(1.0, "Softmax temperature T; the KL is scaled by T².")


@dataclass
class WordTempered(Tempered):
    standardize: bool = _param(
        False,
        "Z-score each token's word logits before T (Sun et al., CVPR 2024); word_logit_scale "
        "then has no effect.",
    )


@dataclass
class WordDivergence(WordTempered):
    """word_kl's parameters: the divergence (and its own parameter) between p_t and p_s."""

    divergence: str = _param(
        "forward_kl",
        f"Divergence between the teacher's and the student's word distributions: "
        f"{' | '.join(DIVERGENCES)} (×T² like the KL).",
    )
    beta: float | None = _param(
        None, "jsd only: m = β·p_t + (1 − β)·p_s, β in (0, 1) weighting the teacher (default 0.5)."
    )
    alpha: float | None = _param(
        None, "skew_kl only: KL(p_t ‖ α·p_t + (1 − α)·p_s), α in [0, 1] (default 0.1)."
    )

    def problems(self) -> list[str]:
        return divergence_problems(self.divergence, self.beta, self.alpha)


@dataclass
class Relational(Weighted):
    temperature: float = _param(
        0.05, "Softmax temperature over the batch's cosine similarities (no T² scaling)."
    )


@dataclass
class LayerMapped(Weighted):
    layer_map: list[int] | None = _param(
        None, "Teacher layer (1-based) for each student layer (default: uniform, as TinyBERT)."
    )


def param_names(params: type) -> list[str]:
    return [f.name for f in dataclasses.fields(params)]


def param_problems(params) -> list[str]:
    """What is wrong with a term's parameter values, each as 'name must ...'."""
    problems = []
    if params.weight < 0:
        problems.append("weight must be >= 0")
    if getattr(params, "temperature", 1.0) <= 0:
        problems.append("temperature must be > 0")
    if hasattr(params, "problems"):  # a term's own rules for its own parameters
        problems += params.problems()
    return problems


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class LossTerm:
    """A loss term a recipe can name: what it computes, takes, reads, adds and requires."""

    fn: Callable[[Step, Any, torch.nn.Module | None], torch.Tensor]  # (step, params, extra)
    params: type  # the dataclass of the parameters it takes in a recipe
    help: str
    needs_teacher: bool
    needs: Needs  # the outputs it reads
    token_level: bool = False  # compares token positions: both models must read the same tokens
    eager_attention: bool = False  # reads attention maps, which fused kernels do not return
    class_logits: bool = False  # reads class probabilities: refused for regression tasks
    pairwise: bool = False  # compares the texts of a batch with each other (batch size >= 2)
    # trainable modules it adds to the student, from (teacher config, student config)
    extras: Callable[[Any, Any], torch.nn.Module | None] | None = None
    # raises DistillError when its parameters do not fit the two models (params, teacher, student)
    check: Callable[[Any, Any, Any], None] | None = None

    @property
    def task_only(self) -> bool:
        """It reads classifier logits (and labels), which only the task stage has."""
        return self.needs.logits


def _word_kl(step: Step, p: WordDivergence, extra) -> torch.Tensor:
    s, t = step.student, step.teacher
    if t.word_topk is not None:  # a cached teacher: its stored top-k and one tail bucket
        return word_kl_topk(
            s.word_features, s.word_weight, t.word_topk, mask=step.mask,
            temperature=p.temperature, b_s=s.word_bias, scale=step.word_scale,
            standardize=p.standardize, divergence=p.divergence, beta=p.beta, alpha=p.alpha,
        )  # fmt: skip
    return word_kl(
        s.word_features, s.word_weight, t.word_features, t.word_weight,
        mask=step.mask, temperature=p.temperature, b_s=s.word_bias, b_t=t.word_bias,
        vocab_index=step.vocab_index, scale=step.word_scale, standardize=p.standardize,
        divergence=p.divergence, beta=p.beta, alpha=p.alpha,
    )  # fmt: skip


def _pairs(step: Step, p: LayerMapped) -> list[tuple[int, int]]:
    return layer_pairs(len(step.student.hidden) - 1, len(step.teacher.hidden) - 1, p.layer_map)


def _hidden_mse(step: Step, p: LayerMapped, projections) -> torch.Tensor:
    s, t = step.student, step.teacher
    return hidden_mse(s.hidden, t.hidden, step.mask, _pairs(step, p), projections)


def _attention_kl(step: Step, p: LayerMapped, extra) -> torch.Tensor:
    s, t = step.student, step.teacher
    return attention_kl(s.attentions, t.attentions, step.mask, _pairs(step, p))


def _check_layer_map(p: LayerMapped, teacher_config, student_config) -> None:
    """The map (or the uniform one) gives each student layer a teacher layer that exists."""
    try:
        layer_pairs(student_config.num_hidden_layers, teacher_config.num_hidden_layers, p.layer_map)
    except DistillError as e:
        raise DistillError(f"{e}; fix layer_map, or leave it out for the uniform map") from None


def _projections(teacher_config, student_config) -> torch.nn.ModuleList | None:
    """Learned maps from student to teacher width, one per student layer, when widths differ."""
    d_s, d_t = student_config.hidden_size, teacher_config.hidden_size
    if d_s == d_t:
        return None
    n = student_config.num_hidden_layers
    return torch.nn.ModuleList(torch.nn.Linear(d_s, d_t) for _ in range(n))


KD_LOSSES: dict[str, LossTerm] = {
    "soft_label_kl": LossTerm(
        lambda st, p, _: soft_label_kl(*st.rows(), p.temperature),
        params=Tempered,
        help="T²·KL(teacher ‖ student) on the task logits (per token; QA start and end)",
        needs_teacher=True,
        needs=Needs(logits=True),
        class_logits=True,
    ),
    "ce": LossTerm(
        lambda st, p, _: st.layout.hard_loss(st),
        params=Weighted,
        help="hard-label cross-entropy (MSE for regression; per token; QA start and end)",
        needs_teacher=False,
        needs=Needs(logits=True),
    ),
    "logit_mse": LossTerm(
        lambda st, p, _: st.layout.logit_mse(st),
        params=Weighted,
        help="MSE between student and teacher logits",
        needs_teacher=True,
        needs=Needs(logits=True),
    ),
    "word_kl": LossTerm(
        _word_kl,
        params=WordDivergence,
        help="GLMD word-prediction KL, T²·KL(softmax(Z_t/T) ‖ softmax(Z_s/T)) over non-pad tokens "
        "(or another divergence: reverse_kl, jsd, tvd, skew_kl)",
        needs_teacher=True,
        needs=Needs(word=True),
        token_level=True,
    ),
    "embedding_mse": LossTerm(
        lambda st, p, _: embedding_mse(st.student.embedding, st.teacher.embedding),
        params=Weighted,
        help="MSE between student and teacher sentence embeddings",
        needs_teacher=True,
        needs=Needs(embedding=True),
    ),
    "embedding_cosine": LossTerm(
        lambda st, p, _: embedding_cosine(st.student.embedding, st.teacher.embedding),
        params=Weighted,
        help="1 − cosine between student and teacher sentence embeddings",
        needs_teacher=True,
        needs=Needs(embedding=True),
    ),
    "embedding_kl": LossTerm(
        lambda st, p, _: embedding_kl(st.student.embedding, st.teacher.embedding, p.temperature),
        params=Relational,
        help="KL between teacher and student similarity distributions within a batch",
        needs_teacher=True,
        needs=Needs(embedding=True),
        pairwise=True,
    ),
    "hidden_mse": LossTerm(
        _hidden_mse,
        params=LayerMapped,
        help="MSE between mapped hidden states (a learned projection when widths differ)",
        needs_teacher=True,
        needs=Needs(hidden=True),
        token_level=True,
        extras=_projections,
        check=_check_layer_map,
    ),
    "attention_kl": LossTerm(
        _attention_kl,
        params=LayerMapped,
        help="KL between mapped, head-averaged attention maps",
        needs_teacher=True,
        needs=Needs(attentions=True, hidden=True),
        token_level=True,
        eager_attention=True,
        check=_check_layer_map,
    ),
}

# A phase that names no terms trains on the labels alone.
DEFAULT_TERMS = ("ce",)


def default_terms() -> dict:
    return {name: KD_LOSSES[name].params() for name in DEFAULT_TERMS}


# ---------------------------------------------------------------- what a run's terms need


def needs_of(terms: dict) -> Needs:
    """The union of what a phase's terms read."""
    needs = Needs()
    for name in terms:
        for key, value in vars(KD_LOSSES[name].needs).items():
            setattr(needs, key, getattr(needs, key) or value)
        needs.teacher |= KD_LOSSES[name].needs_teacher
    return needs


def check_models(phases: list[dict], teacher_config, student_config) -> None:
    """Run each term's check against the two models (before step 1)."""
    for i, terms in enumerate(phases):
        for name, params in terms.items():
            check = KD_LOSSES[name].check
            if check is not None and teacher_config is not None:
                try:
                    check(params, teacher_config, student_config)
                except DistillError as e:
                    raise DistillError(f"phases.{i}.terms.{name}: {e}") from None


def word_terms(terms: dict) -> dict:
    """The terms of a phase that read word logits, with their parameters."""
    return {name: p for name, p in terms.items() if KD_LOSSES[name].needs.word}


def make_extras(names, teacher_config, student_config) -> torch.nn.ModuleDict:
    """The trainable modules the named terms add to the student, by term name."""
    extras = torch.nn.ModuleDict()
    for name in sorted(set(names)):
        make = KD_LOSSES[name].extras
        module = make(teacher_config, student_config) if make and teacher_config else None
        if module is not None:
            extras[name] = module
    return extras


def loss_parts(terms: dict, step: Step, extras=None) -> dict[str, torch.Tensor]:
    """Each named term of a phase, unweighted. ``terms`` maps names to their parameters."""
    extras = extras if extras is not None else {}
    return {
        name: KD_LOSSES[name].fn(step, params, extras[name] if name in extras else None)
        for name, params in terms.items()
    }


def weighted_sum(terms: dict, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(params.weight * parts[name] for name, params in terms.items())

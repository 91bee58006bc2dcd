"""A run's word signal: fit word_logit_scale and measure the teacher's word distributions
before step 1, and the student's (with its agreement with the teacher) after the last step.

The measurements themselves are ``word_signal``'s; this module runs them on a training run's
state (``train.State``) and logs and records what they find.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill_cli import tasks
from distill_cli.data.text import TokenMasker
from distill_cli.errors import DistillError
from distill_cli.reporting import log
from distill_cli.tasks import cloze
from distill_cli.training import losses, word_signal
from distill_cli.user_files import read_yaml

if TYPE_CHECKING:
    from distill_cli.training.train import PhasePlan, State


def make_probe(s: State, student: bool = False) -> tuple[word_signal.Probe, list]:
    """What word_signal measures a run's models on: the first batches of its training data."""
    b = s.built
    probe = word_signal.Probe(
        teacher=b.teacher,
        teacher_mode=b.teacher_mode,
        masker=TokenMasker(b.input_tokenizer or b.tokenizer, seed=0),
        causal=b.causal,
        student=s.accelerator.unwrap_model(s.student).model if student else None,
        student_mode=b.student_mode,
        vocab_index=s.vocab_index,
        id_remap=b.id_remap,
        teacher_window=b.teacher_window,
        student_window=b.student_window,
    )
    cfg = s.recipe.train
    batches = word_signal.probe_batches(b.train_ds, b.collate, cfg.batch_size, s.accelerator.device)
    return probe, batches


def word_phases(s: State) -> list[tuple[PhasePlan, dict]]:
    word = [(plan, losses.word_terms(plan.terms)) for plan in s.plans]
    return [(plan, terms) for plan, terms in word if terms]


def check_teacher(s: State) -> None:
    """Before step 1: fit word_logit_scale (or reuse the resumed run's), then measure the
    teacher's word distributions for every phase with a word term. Logged, written to
    metrics.jsonl, and a warning (recipe word_signal: error makes it exit 2) when near uniform."""
    phases = word_phases(s)
    if not phases:
        _blank_scale(s)
        return
    probe, batches = make_probe(s)
    s.word_scale = scale(s, probe, batches, phases)
    s.recipe.word_logit_scale = s.word_scale
    record = {"step": 0, "word_logit_scale": s.word_scale}
    for plan, terms in phases:
        for name, params in terms.items():
            cal = word_signal.calibration(params, s.word_scale)
            measured = word_signal.measure(probe, batches, cal, plan.mlm_probability)
            figures = measured["teacher"]
            s.word_figures.setdefault(plan.name, {})[name] = figures
            s.teacher_top1[plan.name] = measured["top1"]  # for the student's agreement
            record.update({f"signal/{plan.name}/{name}/{k}": v for k, v in figures.items()})
            if s.main:
                log(f"phase '{plan.name}' {name}: " + word_signal.describe("teacher", figures, cal))
            problem = word_signal.flat_warning(plan.name, figures, cal)
            if problem and s.recipe.word_signal == "error":
                raise DistillError(f"{problem} (word_signal: error)")
            if problem and s.main:
                log(f"warning: {problem}")
    if s.main and s.resume_from is None:
        s.writer.write(record)


def _blank_scale(s: State) -> None:
    """A cloze with no word term still reads word logits (its class logits at the blank): the
    scale is fitted (or given) as for word terms, on the teacher, or without one (prompt-based
    fine-tuning) on the model being fine-tuned, before step 1."""
    b = s.built
    if b.task is None or not tasks.of(b.task).word_head:
        return
    probe, batches = make_probe(s)
    if b.teacher is None:
        probe.teacher, probe.teacher_mode = b.student, b.student_mode
    s.word_scale = scale(s, probe, batches, [])
    if s.main and s.resume_from is None:
        s.writer.write({"step": 0, "word_logit_scale": s.word_scale})
    s.recipe.word_logit_scale = s.word_scale


def scale(s: State, probe, batches, phases) -> float:
    """recipe.word_logit_scale as a number: given, the resumed run's, or fitted (auto)."""
    value, b = s.recipe.word_logit_scale, s.built
    if value is None:
        mode = b.teacher_mode if b.teacher is not None else b.student_mode
        value = "auto" if mode == "embeddings" else 1.0
    standardized = bool(phases) and all(
        getattr(p, "standardize", False) for _, terms in phases for p in terms.values()
    )
    if value != "auto" or standardized:  # z-scored logits ignore the scale
        return float(value) if value != "auto" else 1.0
    if s.resume_from is not None:
        path = s.out / "resolved_recipe.yaml"
        fix = "start again with --overwrite"
        shape = {"word_logit_scale": (int, float)}
        stored = read_yaml(path, "the run's resolved recipe", fix, required=shape)
        return float(stored["word_logit_scale"])
    saved = _cloze_scale(s)
    if saved is not None:  # a cloze model keeps the scale its class logits were trained at
        if s.main:
            log(
                f"word_logit_scale: auto = {saved:.4g}, as in cloze.json "
                "(the scale its class logits were trained at)"
            )
        return saved
    scale, nll, nll_at_1 = word_signal.fit_teacher_scale(probe, batches)
    if s.main:
        log(
            f"word_logit_scale: auto = {scale:.4g} (teacher NLL of its unmasked input tokens "
            f"{nll:.3f}, against {nll_at_1:.3f} at scale 1)"
        )
    return scale


def _cloze_scale(s: State) -> float | None:
    """The cloze.json scale of the model the scale is fitted on (the teacher, or the model being
    fine-tuned without one), when this run reads its words through embeddings too."""
    b = s.built
    if b.teacher is not None:
        return cloze.saved_scale(s.recipe.teacher) if b.teacher_mode == "embeddings" else None
    return cloze.saved_scale(s.recipe.student.path) if b.student_mode == "embeddings" else None


def check_student(s: State) -> dict:
    """The student's word predictions at the last word phase's calibration, with its top-1
    agreement with the teacher, on the batches the teacher was measured on; logged, written to
    metrics.jsonl. Returns the summary's word_signal: the scale, the teacher's figures by phase,
    and the student's."""
    plan, terms = word_phases(s)[-1]
    name, params = next(iter(terms.items()))
    cal = word_signal.calibration(params, s.word_scale)
    probe, batches = make_probe(s, student=True)
    probe.student.eval()
    top1 = s.teacher_top1.get(plan.name)  # the teacher's, measured before a cache freed it
    figures = word_signal.measure(probe, batches, cal, plan.mlm_probability, top1)["student"]
    probe.student.train()
    if s.main:
        log(f"final {name}: " + word_signal.describe("student", figures, cal))
        s.writer.write({"step": s.pos.step, **{f"eval/word_{k}": v for k, v in figures.items()}})
    return {
        "word_logit_scale": s.word_scale,
        "teacher": s.word_figures,
        "student": {"phase": plan.name, "term": name, **figures},
    }

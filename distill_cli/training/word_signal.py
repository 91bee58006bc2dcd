"""How much signal GLMD's word-prediction KL carries, measured on a few fixed batches.

For a model's word logits Z = H·Wᵀ (+ b), scaled by s or z-scored, then divided by T:
- the mean entropy of its word distributions, as a share of log V (1.0 = uniform: no signal);
- its top-1 accuracy on the input tokens at masked and at unmasked positions (for causal LMs: the
  next token); for a student, its top-1 agreement with the teacher there too.
And the maximum-likelihood scale s of a model's word logits for its own input tokens, which makes
embedding-derived logits (no trained word head) a distribution worth matching.
Logits are built a chunk of rows at a time, as in the fused loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distill_cli.data import windows
from distill_cli.data.batching import split_inputs
from distill_cli.models.forward import Needs
from distill_cli.training.word_kd import standardized

ROWS_PER_CHUNK = 2**22  # [chunk, V] fp32 logits of about this many elements
FLAT_SHARE = 0.99  # above this share of log V the teacher's words carry no signal
SCALE_BOUNDS = (1e-3, 1e3)


@dataclass(frozen=True)
class Calibration:
    """How word logits become a distribution: (Z·scale or z-score(Z)) / temperature."""

    temperature: float = 1.0
    scale: float = 1.0
    standardize: bool = False

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            z = standardized(z)
        elif self.scale != 1.0:
            z = z * self.scale
        return z / self.temperature


def _chunks(n: int, vocab: int):
    step = max(1, ROWS_PER_CHUNK // max(vocab, 1))
    for i in range(0, n, step):
        yield slice(i, min(i + step, n))


def _logits(features, weight, bias, rows: slice) -> torch.Tensor:
    z = features[rows].float() @ weight.float().t()
    return z if bias is None else z + bias.float()


@dataclass
class Positions:
    """Flattened [n] views of one batch's scored positions."""

    targets: torch.Tensor  # the token each position should predict (teacher ids)
    scored: torch.Tensor  # counts for top-1 accuracy (not special, has a target)
    masked: torch.Tensor  # was masked in the input


def positions(original_ids, attention_mask, chosen, special_ids, causal: bool) -> Positions:
    """Which non-pad positions count, and what each should predict.

    Encoders predict the original token at every position (masked or not); causal LMs the next
    token. Special tokens are not scored.
    """
    keep = attention_mask.bool()
    special = torch.isin(original_ids, special_ids.to(original_ids.device))
    targets, scored = original_ids, keep & ~special
    if causal:
        targets = torch.roll(original_ids, -1, dims=1)
        nxt = torch.roll(keep & ~special, -1, dims=1)
        nxt[:, -1] = False
        scored = keep & nxt
    return Positions(targets[keep], scored[keep], chosen.bool()[keep] & scored[keep])


@dataclass
class Tally:
    """Running sums over batches; ``result`` turns them into the reported figures."""

    log_v: float = 1.0
    entropy: float = 0.0
    tokens: int = 0
    hits: tuple = (0, 0)  # masked, unmasked
    counts: tuple = (0, 0)
    agree: tuple | None = None  # masked, unmasked; counted when a teacher's top-1 is given

    def result(self) -> dict:
        def share(a, n):
            return round(a / n, 4) if n else None

        out = {
            "entropy_share": share(self.entropy / max(self.tokens, 1), self.log_v),
            "top1_masked": share(self.hits[0], self.counts[0]),
            "top1_unmasked": share(self.hits[1], self.counts[1]),
        }
        if self.agree is not None:
            out["agreement_masked"] = share(self.agree[0], self.counts[0])
            out["agreement_unmasked"] = share(self.agree[1], self.counts[1])
        return out


def _add(pair: tuple, hits: torch.Tensor, masked: torch.Tensor) -> tuple:
    return pair[0] + int((hits & masked).sum()), pair[1] + int((hits & ~masked).sum())


def tally_batch(tally: Tally, out, pos: Positions, cal: Calibration, vocab_index=None,
                teacher_top1=None) -> torch.Tensor:  # fmt: skip
    """Add one batch's figures; returns the model's top-1 ids (teacher ids) per position.

    ``out`` holds flattened features [n, d] and the vocabulary; ``vocab_index`` maps a compressed
    vocabulary's rows to teacher ids; ``teacher_top1`` adds the agreement counts.
    """
    w, b = out.word_weight, out.word_bias
    tally.log_v = math.log(w.shape[0])
    top1 = torch.empty(len(pos.targets), dtype=torch.long, device=w.device)
    for rows in _chunks(len(pos.targets), w.shape[0]):
        z = cal.apply(_logits(out.word_features, w, b, rows))
        log_p = torch.log_softmax(z, -1)
        tally.entropy -= float((log_p.exp() * log_p).sum())
        top1[rows] = z.argmax(-1)
    if vocab_index is not None:
        top1 = vocab_index[top1]
    tally.tokens += len(pos.targets)
    s, m = pos.scored, pos.masked[pos.scored]
    tally.hits = _add(tally.hits, (top1 == pos.targets)[s], m)
    tally.counts = (tally.counts[0] + int(m.sum()), tally.counts[1] + int((~m).sum()))
    if teacher_top1 is not None:
        tally.agree = _add(tally.agree or (0, 0), (top1 == teacher_top1)[s], m)
    return top1


def word_outputs(model, inputs: dict, mode: str, window=None):
    """The model's word features, flattened over non-pad positions, and its vocabulary;
    ``window``: a model with fewer positions reads the inputs through windows."""
    out = windows.forward(model, inputs, Needs(word=True), mode, spec=window)
    keep = inputs["attention_mask"].bool()
    out.word_features = out.word_features[keep]
    return out


# ---------------------------------------------------------------- maximum-likelihood scale


def _nll_derivatives(features, weight, bias, targets, s: float) -> tuple[float, float, float]:
    """Mean NLL of ``targets`` under softmax(s·Z), and its first and second derivative in s."""
    nll = d1 = d2 = 0.0
    for rows in _chunks(len(targets), weight.shape[0]):
        z = _logits(features, weight, bias, rows).double()
        log_p = torch.log_softmax(s * z, -1)
        p = log_p.exp()
        mean_z = (p * z).sum(-1)
        z_y = z.gather(1, targets[rows, None]).squeeze(1)
        nll -= float(log_p.gather(1, targets[rows, None]).sum())
        d1 += float((mean_z - z_y).sum())
        d2 += float((p * (z - mean_z[:, None]) ** 2).sum())
    n = max(len(targets), 1)
    return nll / n, d1 / n, d2 / n


def fit_scale(features, weight, bias, targets, tol: float = 1e-4) -> tuple[float, float, float]:
    """The s > 0 that minimises the mean NLL of ``targets`` under softmax(s·Z).

    The NLL is convex in s; Newton steps, kept inside a shrinking bracket, find where its
    derivative is zero. Returns (s, NLL at s, NLL at s = 1); s stops at the bracket's ends
    (1e-3, 1e3) when the optimum lies beyond.
    """
    lo, hi = SCALE_BOUNDS
    s, nll_at_1 = 1.0, None
    for _ in range(100):
        nll, d1, d2 = _nll_derivatives(features, weight, bias, targets, s)
        nll_at_1 = nll if nll_at_1 is None else nll_at_1
        if d1 > 0:
            hi = s
        else:
            lo = s
        step = s - d1 / d2 if d2 > 0 else math.nan
        new = step if lo < step < hi else math.sqrt(lo * hi)
        if abs(new - s) <= tol * s or hi - lo <= tol * lo:
            s = new
            break
        s = new
    nll, _, _ = _nll_derivatives(features, weight, bias, targets, s)
    return s, nll, nll_at_1


# ---------------------------------------------------------------- measuring a run's models

PROBE_BATCHES = 4
FIT_TOKENS = 4096  # positions the scale is fitted on, at most


def probe_batches(dataset, collate, batch_size: int, device, n: int = PROBE_BATCHES) -> list:
    """The first ``n`` batches of a dataset, in order: the same rows in every process and every
    run (resumed or not), and no draw from any random generator."""
    rows = min(len(dataset), n * batch_size)
    batches = []
    for i in range(0, rows, batch_size):
        batch = collate([dataset[j] for j in range(i, min(i + batch_size, rows))])
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


@dataclass
class Probe:
    """What measuring needs to know about a run's models and inputs."""

    teacher: torch.nn.Module
    teacher_mode: str
    masker: object  # a TokenMasker (its generator is reseeded for every measurement)
    causal: bool = False
    student: torch.nn.Module | None = None
    student_mode: str = "embeddings"
    vocab_index: torch.Tensor | None = None  # teacher ids of a compressed student's rows
    id_remap: torch.Tensor | None = None  # teacher ids → compressed student ids
    teacher_window: object = None  # data.windows.Spec: a model read through windows
    student_window: object = None


def _inputs(probe: Probe, batch: dict, mlm_probability: float):
    s_in, t_in = split_inputs(batch)
    shared = s_in is t_in  # word terms need one tokenization, so it always is
    original, keep = t_in["input_ids"], t_in["attention_mask"]
    chosen = torch.zeros_like(original, dtype=torch.bool)
    if mlm_probability > 0 and not probe.causal:
        masked, chosen = probe.masker(original, keep, mlm_probability)
        t_in = {**t_in, "input_ids": masked}
        s_in = t_in if shared else s_in
    if probe.id_remap is not None:
        s_in = {**s_in, "input_ids": probe.id_remap[t_in["input_ids"]]}
    pos = positions(original, keep, chosen, probe.masker.special_ids, probe.causal)
    return s_in, t_in, pos


@torch.no_grad()
def measure(
    probe: Probe, batches: list, cal: Calibration, mlm_probability: float, top1=None
) -> dict:
    """The teacher's figures (and the student's, with its agreement) over the probe batches,
    and the teacher's top-1 ids per batch (``top1``: those of an earlier measurement, when the
    teacher is no longer loaded)."""
    teacher, student, tops = Tally(), Tally(), []
    probe.masker.generator.manual_seed(0)  # the same masks in every measurement
    for i, batch in enumerate(batches):
        s_in, t_in, pos = _inputs(probe, batch, mlm_probability)
        if probe.teacher is not None:
            t_out = word_outputs(probe.teacher, t_in, probe.teacher_mode, probe.teacher_window)
            tops.append(tally_batch(teacher, t_out, pos, cal))
        else:
            tops.append(top1[i])
        if probe.student is not None:
            s_out = word_outputs(probe.student, s_in, probe.student_mode, probe.student_window)
            tally_batch(student, s_out, pos, cal, probe.vocab_index, teacher_top1=tops[-1])
    result = {"teacher": teacher.result() if probe.teacher is not None else None, "top1": tops}
    if probe.student is not None:
        result["student"] = student.result()
    return result


@torch.no_grad()
def fit_teacher_scale(probe: Probe, batches: list) -> tuple[float, float, float]:
    """``fit_scale`` on the teacher's unmasked inputs over the probe batches."""
    features, targets, weight, bias = [], [], None, None
    for batch in batches:
        _, t_in, pos = _inputs(probe, batch, 0.0)
        out = word_outputs(probe.teacher, t_in, probe.teacher_mode, probe.teacher_window)
        features.append(out.word_features[pos.scored])
        targets.append(pos.targets[pos.scored])
        weight, bias = out.word_weight, out.word_bias
    features = torch.cat(features)[:FIT_TOKENS]
    return fit_scale(features, weight, bias, torch.cat(targets)[:FIT_TOKENS])


# ---------------------------------------------------------------- a training run's policy


def calibration(params, scale: float) -> Calibration:
    """A word term's calibration from its parameters (temperature, standardize)."""
    return Calibration(
        getattr(params, "temperature", 1.0), scale, getattr(params, "standardize", False)
    )


def describe(name: str, figures: dict, cal: Calibration) -> str:
    """One log line: a model's word distributions at a phase's calibration."""
    how = "z-scored" if cal.standardize else f"scale {cal.scale:.4g}"
    parts = [f"entropy {figures['entropy_share']:.1%} of log V"]
    for key, label in (("top1_masked", "masked"), ("top1_unmasked", "unmasked")):
        if figures.get(key) is not None:
            parts.append(f"top-1 {label} {figures[key]:.1%}")
    for key, label in (("agreement_masked", "masked"), ("agreement_unmasked", "unmasked")):
        if figures.get(key) is not None:
            parts.append(f"agrees with the teacher {label} {figures[key]:.1%}")
    return f"{name} word predictions at T={cal.temperature:g} ({how}): {', '.join(parts)}"


def flat_warning(phase: str, figures: dict, cal: Calibration) -> str | None:
    """The one-line problem when the teacher's word distributions are near uniform, or None."""
    share = figures["entropy_share"]
    if share is None or share <= FLAT_SHARE:
        return None
    fixes = "lower the word_kl temperature"
    if not cal.standardize and cal.scale == 1.0:
        fixes = f"set word_logit_scale: auto, or {fixes}"
    return (
        f"phase '{phase}': the teacher's word distributions carry no signal at "
        f"T={cal.temperature:g} (entropy {share:.2%} of log V, near uniform): its word logits "
        f"are too flat for this temperature (no trained word head, or uncalibrated logits); "
        f"{fixes}, or use word_logits: lm_head on a teacher with a trained LM head"
    )

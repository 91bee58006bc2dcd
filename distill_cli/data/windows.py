"""Long inputs read through overlapping windows by a model with fewer positions (issue 22).

Each row is prefix + body + suffix: the prefix its leading special tokens ([CLS]; BOS), through
the last special token before the body for pairs ([CLS] question [SEP]; <s> q </s></s>), the
suffix its trailing special tokens ([SEP]). The body is cut into chunks that share ``overlap``
tokens; each window is prefix + chunk + suffix. All rows' windows run as one batch (in bounded
sub-batches) and their outputs are combined back into the shapes of a whole-row forward:
sequence logits by the mean (or max) over the row's windows; per-position outputs (token logits,
QA start/end logits, word features) by taking each body position from the window where it sits
most centrally (causal models: where it has the most tokens before it).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from distill_cli import tasks
from distill_cli.errors import DistillError
from distill_cli.models import forward as heads
from distill_cli.models.kinds import position_offset

# outputs no window combination makes (models.forward.Needs fields)
REFUSED_NEEDS = {
    "hidden": "hidden states",
    "attentions": "attentions",
    "embedding": "sentence embeddings",
}


def positions(config) -> int | None:
    """How many positions a model reads: max_position_embeddings, less the unused rows of
    RoBERTa-style position embeddings (padding_idx + 1). None where the config names none."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    return n - position_offset(config.model_type, getattr(config, "pad_token_id", None))


@dataclass(frozen=True)
class Spec:
    """How one model reads rows longer than it can: windows of ``size`` tokens sharing
    ``overlap``; logits with one row per input combine by ``combine`` (mean | max), those with
    a ``position_dim`` (the task's Layout says) position by position. ``specials``: the ids
    that end a prefix or make a suffix."""

    size: int
    overlap: int
    combine: str = "mean"
    causal: bool = False
    position_dim: int | None = None
    logits: bool = True  # the task's logits combine over windows (its Layout says)
    output_names: tuple[str, ...] = ("logits",)  # the model outputs its logits come from
    specials: frozenset = frozenset()
    pairs: bool = False  # the prefix runs through the last special token before the body
    pad_id: int = 0
    batch: int = 64  # windows per forward

    def describe(self) -> str:
        return f"windows of {self.size} tokens overlapping {self.overlap}"


def keeps_first_text(task) -> bool:
    """Whether every window keeps a row's first text: a QA question, a pair's first text."""
    return tasks.of(task).compares_positions or len(task.text_columns or ()) > 1


def special_ids(tokenizer) -> frozenset:
    """The tokenizer's sentence markers (not [UNK] or [MASK], which sit inside a body)."""
    names = ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id")
    return frozenset(i for n in names if (i := getattr(tokenizer, n, None)) is not None)


def spec_for(model, tokenizer, d, kind, causal: bool, pairs=False, teacher=False) -> Spec | None:
    """The window spec of ``model`` reading data ``d``, or None when it reads d.max_length
    itself. A model reads windows when its positions are fewer than d.max_length; a teacher
    also when data.teacher_window is. Windows are data.teacher_window tokens (at most, and by
    default, the model's positions) and share data.doc_stride tokens. ``kind``: the task type
    whose logits are combined (None: word features only)."""
    limit = positions(model.config)
    if limit is None:
        return None
    if teacher and d.teacher_window is not None and d.teacher_window > limit:
        raise DistillError(
            f"data.teacher_window ({d.teacher_window}) is longer than the {limit} positions the "
            f"teacher reads; set data.teacher_window to at most {limit}"
        )
    size = min(d.teacher_window or limit, limit)
    if d.max_length <= (size if teacher else limit):
        return None
    if d.doc_stride + 2 >= size:
        raise DistillError(
            f"windows of {size} tokens cannot overlap by data.doc_stride={d.doc_stride}; "
            f"lower data.doc_stride below {size // 2}"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layout = kind.layout if kind is not None else None
    return Spec(
        size,
        d.doc_stride,
        d.window_combine,
        causal,
        position_dim=layout.position_dim if layout else None,
        logits=bool(layout and layout.windows),
        output_names=kind.output_names if kind is not None else ("logits",),
        specials=special_ids(tokenizer),
        pairs=pairs,
        pad_id=pad,
    )


def unreadable(needs, blank: bool, logits: bool = True) -> list[str]:
    """What a model read through windows cannot give a reader of ``needs``: hidden states,
    attentions, sentence embeddings, a cloze ``blank``, or logits that do not combine."""
    what = [REFUSED_NEEDS[n] for n in REFUSED_NEEDS if getattr(needs, n)]
    what += ["a cloze blank"] if blank else []
    if needs.logits and not logits and not blank:
        what.append("this task's logits")
    return what


def refuse(needs, blank: bool, who: str, logits: bool = True, terms=()) -> None:
    """One line naming what a windowed model cannot give (and the ``terms`` that read it), and
    the fix."""
    what = unreadable(needs, blank, logits)
    if what:
        named = f"{', '.join(terms)} read " if terms else "reading "
        raise DistillError(
            f"{named}{', '.join(what)} of the {who}, which reads long inputs through windows "
            "and cannot give them; drop those terms, raise data.teacher_window (up to the "
            "model's positions) or shorten data.max_length"
        )


@dataclass
class Cut:
    """The windows of a batch: model inputs [W, ≤ size], each window's row, and for every row
    position the (window, window position) it is read from ([B, L] each)."""

    inputs: dict
    rows: torch.Tensor
    source_window: torch.Tensor
    source_pos: torch.Tensor
    tokens: tuple[int, int] = (0, 0)  # tokens the windows hold, and the rows


def _frame(ids: list[int], spec: Spec) -> tuple[int, int]:
    """(prefix length, suffix length) of one unpadded row."""
    n, suffix = len(ids), 0
    while suffix < n - 1 and ids[n - 1 - suffix] in spec.specials:
        suffix += 1
    prefix = 0
    while prefix < n - suffix and ids[prefix] in spec.specials:
        prefix += 1
    if spec.pairs:  # through the last special token before the body
        last = [i for i in range(n - suffix) if ids[i] in spec.specials]
        prefix = max(prefix, last[-1] + 1 if last else 0)
    return prefix, suffix


def _starts(body: int, chunk: int, overlap: int) -> list[int]:
    """Where each chunk of the body starts: every chunk - overlap tokens until the end is in."""
    if body <= chunk:
        return [0]
    step = chunk - overlap
    starts = [0]
    while starts[-1] + chunk < body:
        starts.append(starts[-1] + step)
    return starts


@functools.lru_cache(maxsize=256)  # rows of one batch mostly share their lengths
def _plan(body: int, chunk: int, overlap: int, causal: bool):
    """The chunks' starts, and for each body position the chunk in which it sits most centrally
    (causal: with the most tokens before it, i.e. the first chunk holding it; ties go to the
    earlier chunk) and its offset there."""
    starts = _starts(body, chunk, overlap)
    j = torch.arange(body).unsqueeze(1)  # [body, 1]
    s = torch.tensor(starts).unsqueeze(0)  # [1, K]
    end = (s + chunk).clamp(max=body)
    centre = (j - s) if causal else torch.minimum(j - s, end - 1 - j)
    centre = centre.masked_fill((j < s) | (j >= end), -(body + 1))
    best = centre.argmax(1)  # the first of equal maxima
    return starts, best, torch.arange(body) - s[0, best]


def cut(inputs: dict, spec: Spec) -> Cut:
    """Cut a padded batch into right-padded windows (token_type_ids follow their tokens)."""
    device = inputs["input_ids"].device  # cut on the CPU: one copy, no sync per row
    ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].cpu()
    types = inputs.get("token_type_ids")
    types = types.cpu() if types is not None else None
    batch, length = ids.shape
    windows, rows = [], []
    src_w = torch.zeros(batch, length, dtype=torch.long)
    src_p = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        real = mask[b].nonzero().squeeze(1)  # the row's tokens (right or left padded)
        n = len(real)
        row = ids[b, real].tolist()
        prefix, suffix = _frame(row, spec)
        body = n - prefix - suffix
        chunk = spec.size - prefix - suffix
        if body > chunk and chunk <= spec.overlap:
            raise DistillError(
                f"a row's {prefix + suffix} fixed tokens (prefix and suffix: a question, a first "
                f"text) leave windows of {spec.size} tokens no room past data.doc_stride="
                f"{spec.overlap}; lower data.doc_stride or shorten the first text"
            )
        starts, best, offset = _plan(body, chunk, spec.overlap, spec.causal)
        first = len(windows)
        ends = (torch.arange(prefix), torch.arange(n - suffix, n))
        for s in starts:
            piece = torch.arange(prefix + s, prefix + min(s + chunk, body))
            windows.append(real[torch.cat([ends[0], piece, ends[1]])])
            rows.append(b)
        # where each of the row's tokens is read from: (window, position in it)
        w = torch.full((n,), first, dtype=torch.long)
        p = torch.arange(n)  # prefix: the first window's
        last = len(windows[-1])
        w[n - suffix :] = first + len(starts) - 1  # suffix: the last window's
        p[n - suffix :] = torch.arange(last - suffix, last)
        w[prefix : prefix + body] = first + best
        p[prefix : prefix + body] = prefix + offset
        src_w[b] = first  # padding: the first window's position 0 (masked by every reader)
        src_w[b, real], src_p[b, real] = w, p
    # one gather: each window's row positions, right-padded
    take = torch.nn.utils.rnn.pad_sequence(windows, batch_first=True)
    keep = torch.nn.utils.rnn.pad_sequence([torch.ones_like(t) for t in windows], batch_first=True)
    of = torch.tensor(rows).unsqueeze(1)
    out = {
        "input_ids": ids[of, take].masked_fill(keep == 0, spec.pad_id),
        "attention_mask": keep.to(mask.dtype),
    }
    if types is not None:
        out["token_type_ids"] = types[of, take].masked_fill(keep == 0, 0)
    out = {k: v.to(device) for k, v in out.items()}
    counts = (sum(len(take) for take in windows), int(mask.sum()))
    return Cut(out, torch.tensor(rows, device=device), src_w.to(device), src_p.to(device), counts)


def combine_sequence(logits: torch.Tensor, rows: torch.Tensor, batch: int, how: str):
    """[W, C] window logits → [B, C]: the mean (or max) over each row's windows."""
    if how == "max":
        return torch.stack([logits[rows == b].max(0).values for b in range(batch)])
    return torch.stack([logits[rows == b].mean(0) for b in range(batch)])


def combine_positions(values: torch.Tensor, c: Cut) -> torch.Tensor:
    """[W, Lw, ...] per-position window outputs → [B, L, ...], each position from its source."""
    return values[c.source_window, c.source_pos]


def combine_logits(logits: torch.Tensor, c: Cut, spec: Spec) -> torch.Tensor:
    """Window logits in the layout of a whole-row forward (token: [B, L, C]; QA: [B, 2, L])."""
    if spec.position_dim is None:
        return combine_sequence(logits, c.rows, c.source_window.shape[0], spec.combine)
    by_position = logits.movedim(spec.position_dim, 1)  # [W, Lw, ...]
    return combine_positions(by_position, c).movedim(1, spec.position_dim)


@dataclass
class Tally:
    """What windowed reading cost: rows, windows, tokens read and the document's, and seconds."""

    rows: int = 0
    windows: int = 0
    window_tokens: int = 0
    row_tokens: int = 0
    seconds: float = 0.0

    def add(self, c: Cut, inputs: dict, seconds: float) -> None:
        self.rows += inputs["input_ids"].shape[0]
        self.windows += c.inputs["input_ids"].shape[0]
        self.window_tokens += c.tokens[0]
        self.row_tokens += c.tokens[1]
        self.seconds += seconds

    def figures(self) -> dict:
        return {
            "windows_per_row": self.windows / max(self.rows, 1),
            "tokens_read_ratio": self.window_tokens / max(self.row_tokens, 1),
        }

    def describe(self) -> str:
        f = self.figures()
        return (
            f"{f['windows_per_row']:.2f} windows per input, "
            f"{f['tokens_read_ratio']:.2f}x the input's tokens"
        )


def _chunks(c: Cut, size: int):
    n = c.inputs["input_ids"].shape[0]
    for lo in range(0, n, size):
        yield {k: v[lo : lo + size] for k, v in c.inputs.items()}


def forward(model, inputs, needs, mode, pool=None, blank=None, spec=None, tally=None):
    """models.forward.forward through windows when ``spec`` says so (same outputs, same shapes)."""
    if spec is None:
        return heads.forward(model, inputs, needs, mode, pool, blank)
    refuse(needs, blank is not None, "model", spec.logits)
    t0 = time.perf_counter()
    c = cut(inputs, spec)
    outs = [heads.forward(model, sub, needs, mode) for sub in _chunks(c, spec.batch)]
    result = heads.Outputs()
    if needs.logits:
        result.logits = combine_logits(torch.cat([o.logits for o in outs]), c, spec)
    if needs.word:
        result.word_features = combine_positions(torch.cat([o.word_features for o in outs]), c)
        result.word_weight, result.word_bias = outs[0].word_weight, outs[0].word_bias
    if tally is not None:
        tally.add(c, inputs, time.perf_counter() - t0)
    return result


def call(model, inputs: dict, spec: Spec | None, tally: Tally | None = None):
    """``model(**inputs)`` through windows: an object with the attributes a model output has
    (``logits``, or QA's ``start_logits`` and ``end_logits``), for scoring."""
    if spec is None:
        return model(**inputs)
    t0 = time.perf_counter()
    c = cut(inputs, spec)
    names = spec.output_names
    logits = [tasks.outputs_logits(model(**sub), names) for sub in _chunks(c, spec.batch)]
    logits = combine_logits(torch.cat(logits), c, spec)
    if tally is not None:
        tally.add(c, inputs, time.perf_counter() - t0)
    if len(names) == 1:
        return SimpleNamespace(**{names[0]: logits})
    return SimpleNamespace(**{n: logits[:, i] for i, n in enumerate(names)})  # stacked on dim 1

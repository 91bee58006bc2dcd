"""Extractive QA features: contexts cut into overlapping windows, and answers read back from logits.

Each window holds the question first and a slice of the context second (truncation only_second);
consecutive windows of one context share ``doc_stride`` tokens. Rows are not padded. A question too
long to leave room for a window is cut to its first tokens (counted in the log), as a few long
questions should not stop a run. Needs a fast tokenizer (offset mappings).
"""

from __future__ import annotations

import math
from collections import Counter

import datasets
import numpy as np

from distill_cli.errors import DistillError
from distill_cli.reporting import log

NOT_CONTEXT = [-1, -1]  # offset of a token outside the context in eval features


def _room_for_question(tokenizer, max_length: int, doc_stride: int) -> int:
    """Check the tokenizer and lengths; return the most question tokens a window leaves room for."""
    if not getattr(tokenizer, "is_fast", False):
        raise DistillError(
            f"question answering needs a fast tokenizer (offset mappings), not "
            f"{type(tokenizer).__name__}; use a model folder with a tokenizer.json"
        )
    if doc_stride >= max_length:
        raise DistillError(
            f"data.doc_stride ({doc_stride}) must be below data.max_length ({max_length}); "
            f"lower data.doc_stride (e.g. to {max_length // 3}) or raise data.max_length"
        )
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride - 1
    if room < 1:
        raise DistillError(
            f"data.max_length ({max_length}) leaves no room for a question beside a window that "
            f"overlaps the next by data.doc_stride ({doc_stride}) tokens; lower data.doc_stride"
        )
    return room


def _fit_questions(questions: list[str], tokenizer, room: int) -> tuple[list[str], int]:
    """Questions without leading spaces, cut to ``room`` tokens; and how many were cut."""
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    cut = 0
    for i, offsets in enumerate(enc["offset_mapping"]):
        if len(offsets) > room:
            questions[i] = questions[i][: offsets[room - 1][1]]
            cut += 1
            if len(tokenizer(questions[i], add_special_tokens=False)["input_ids"]) > room:
                raise DistillError(
                    f"question {questions[i][:40]!r}... is longer than data.max_length allows; "
                    "raise data.max_length or lower data.doc_stride"
                )
    return questions, cut


def _windows(ds: datasets.Dataset, tokenizer, max_length: int, doc_stride: int, what: str, fn):
    """Map batches of ``ds`` to windows; ``fn(batch, enc, first_row)`` adds the label columns."""
    room = _room_for_question(tokenizer, max_length, doc_stride)
    counts = Counter()

    def encode(batch, rows):
        questions, cut = _fit_questions(batch["question"], tokenizer, room)
        enc = tokenizer(
            questions,
            batch["context"],
            truncation="only_second",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        windows = Counter(enc["overflow_to_sample_mapping"])
        counts.update(cut=cut, cut_contexts=sum(n > 1 for n in windows.values()))
        out = {
            key: enc[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc
        }
        return {**out, **fn(batch, enc, rows[0])}

    features = ds.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        load_from_cache_file=False,  # the counts below come from this run
    )
    log(
        f"{what}: {len(ds)} questions in {len(features)} windows of up to {max_length} tokens; "
        f"{counts['cut_contexts']} questions with a context cut into more than one window"
        + (f"; {counts['cut']} questions cut to {room} tokens" if counts["cut"] else "")
    )
    return features


def _answer_span(offsets, sequence_ids, answers) -> tuple[int, int] | None:
    """Token start and end of the first answer when the window holds all of it."""
    if not answers["text"]:
        return None
    text, start = answers["text"][0], answers["answer_start"][0]
    first_char = start + len(text) - len(text.lstrip())  # answers may start with a space
    end_char = start + len(text.rstrip())
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > first_char or offsets[context[-1]][1] < end_char:
        return None
    first = next(i for i in context if offsets[i][1] > first_char)
    last = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return first, last


def qa_train_features(
    ds: datasets.Dataset, tokenizer, max_length: int, doc_stride: int
) -> datasets.Dataset:
    """Windows with start_positions / end_positions; both at the CLS token (the null answer)
    when the window doesn't hold the whole answer or the question is unanswerable."""
    cls_id = getattr(tokenizer, "cls_token_id", None)

    def labels(batch, enc, first_row):
        starts, ends = [], []
        for i, row in enumerate(enc["overflow_to_sample_mapping"]):
            ids = enc["input_ids"][i]
            cls = ids.index(cls_id) if cls_id in ids else 0
            span = _answer_span(
                enc["offset_mapping"][i], enc.sequence_ids(i), batch["answers"][row]
            )
            starts.append(span[0] if span else cls)
            ends.append(span[1] if span else cls)
        return {"start_positions": starts, "end_positions": ends}

    return _windows(ds, tokenizer, max_length, doc_stride, "train windows", labels)


def qa_eval_features(
    ds: datasets.Dataset, tokenizer, max_length: int, doc_stride: int
) -> datasets.Dataset:
    """Windows with example_index (the row of ``ds``) and offset_mapping (character [start, end]
    per token; [-1, -1] outside the context), for :func:`postprocess`."""

    def keys(batch, enc, first_row):
        offsets = []
        for i, pairs in enumerate(enc["offset_mapping"]):
            pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
            pairs[[s != 1 for s in enc.sequence_ids(i)]] = NOT_CONTEXT
            offsets.append(pairs)
        rows = [first_row + r for r in enc["overflow_to_sample_mapping"]]
        return {"example_index": rows, "offset_mapping": offsets}

    return _windows(ds, tokenizer, max_length, doc_stride, "eval windows", keys)


def _best_span(start, end, offsets, max_answer_length: int, n_best: int):
    """(score, first token, last token) of the best valid span in one window, or None."""
    n = min(len(offsets), len(start), len(end))
    start, end = np.asarray(start[:n], dtype=np.float64), np.asarray(end[:n], dtype=np.float64)
    valid = offsets[:n, 0] >= 0
    if not valid.any():
        return None
    k = min(n_best, int(valid.sum()))
    starts = np.argsort(np.where(valid, start, -np.inf))[::-1][:k]
    ends = np.argsort(np.where(valid, end, -np.inf))[::-1][:k]
    length = ends[None, :] - starts[:, None] + 1
    scores = start[starts][:, None] + end[ends][None, :]
    scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
    s, e = np.unravel_index(np.argmax(scores), scores.shape)
    if not np.isfinite(scores[s, e]):
        return None
    return float(scores[s, e]), int(starts[s]), int(ends[e])


def _offsets(features: datasets.Dataset, batch_size: int = 1024):
    """(example_index, offsets as an (n, 2) array) per feature, read from Arrow in batches."""
    columns = features.select_columns(["example_index", "offset_mapping"]).with_format("arrow")
    for batch in columns.iter(batch_size=batch_size):
        rows = batch["example_index"].to_numpy()
        lists = batch["offset_mapping"].combine_chunks()
        bounds = lists.offsets.to_numpy()
        pairs = lists.flatten().flatten().to_numpy().reshape(-1, 2)
        for i, row in enumerate(rows):
            yield int(row), pairs[bounds[i] - bounds[0] : bounds[i + 1] - bounds[0]]


def postprocess(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    max_answer_length: int = 30,
    with_negative: bool = False,
    n_best: int = 20,
) -> dict[str, str]:
    """The predicted answer text by example id.

    For each example, the best span over all its windows by start + end logit, among the
    ``n_best`` highest start and end logits of each window's context tokens, with start <= end
    and at most ``max_answer_length`` tokens (as HF's run_qa post-processing). One logits array
    per feature; positions past its offsets (padding) are ignored. ``with_negative`` (squad_v2):
    "" when the null score (start + end logit at position 0, the CLS token, lowest over the
    windows) beats the best span.
    """
    best: dict[int, tuple[float, int, int]] = {}  # example row -> (score, first char, end char)
    null: dict[int, float] = {}
    f = 0
    for row, offsets in _offsets(features):
        start, end = start_logits[f], end_logits[f]
        null[row] = min(null.get(row, math.inf), float(start[0] + end[0]))
        span = _best_span(start, end, offsets, max_answer_length, n_best)
        if span and (row not in best or span[0] > best[row][0]):
            best[row] = (span[0], int(offsets[span[1], 0]), int(offsets[span[2], 1]))
        f += 1
    out = {}
    for row, (qid, context) in enumerate(zip(examples["id"], examples["context"], strict=True)):
        if row not in best or (with_negative and null[row] > best[row][0]):
            out[qid] = ""
        else:
            out[qid] = context[best[row][1] : best[row][2]]
    return out


def references(examples: datasets.Dataset) -> dict[str, list[str]]:
    """The answer texts by example id (empty: unanswerable), for metrics.squad_metrics."""
    pairs = zip(examples["id"], examples["answers"], strict=True)
    return {qid: list(answers["text"]) for qid, answers in pairs}

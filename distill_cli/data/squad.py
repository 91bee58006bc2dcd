"""Extractive question answering data: every split as rows of id, question, context and answers.

``answers`` is ``{"text": [...], "answer_start": [...]}`` (character offsets into the context;
empty lists: unanswerable). ``cfg.name`` is resolved in this order: a built-in (``squad_dev``,
``squad_long``, ``squadshifts_new_wiki``, ``squadshifts_nyt``, ``squadshifts_reddit``,
``squadshifts_amazon``: see squad_archive.py); a preset (``squad``, ``squad_v2``: the Hub's
rajpurkar/squad and rajpurkar/squad_v2); a local file or folder of split files: SQuAD JSON (data →
paragraphs → context, qas → id, question, answers[text, answer_start], is_impossible), or JSON,
JSONL or Parquet rows with context, question and answers; else a Hub dataset name.

An answer whose answer_start doesn't point at its text is skipped (counted); a question left
without answers is dropped (counted). The metric is squad_v2 for the squad_v2 preset and for data
with unanswerable questions, else squad.

squad_dev (the SQuAD v1.1 dev set: 48 articles, 10,565 questions), split by article
(squad_archive.SPLIT_SEED 12): train 38 articles / 8,239 questions, validation 5 / 1,027, test 5 /
1,299; 15 answers skipped (8 in train, 7 in test), no question dropped. squad_long asks the same
questions, in the same splits, of their whole article (its paragraphs joined by ARTICLE_JOIN).
SquadShifts test sets (questions; answers skipped, questions dropped): new_wiki 7,936 (8, 0), nyt
10,055 (10, 1), reddit 9,763 (22, 4), amazon 9,566 (947, 311). The BIG-bench files carry a canary
asking that they never appear in training corpora: models trained on them stay local.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa

from distill_cli.data import squad_archive
from distill_cli.data.tables import (
    TaskData,
    _load_hub,
    _Source,
    keep_long,
    looks_like_path,
    split_files,
    word_count,
)
from distill_cli.errors import DistillError
from distill_cli.reporting import log
from distill_cli.user_files import read_text, reading

if TYPE_CHECKING:
    from distill_cli.recipe import DataConfig

TASK = "question_answering"
SUFFIXES = (".json", ".jsonl", ".parquet")
PRESETS = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}
SQUAD_SHAPE = (
    "SQuAD JSON holds data → paragraphs → context, qas → id, question, answers[text, answer_start]"
)
ANSWERS_SHAPE = "{text: [...], answer_start: [...]} or a list of {text, answer_start}"
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "context": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)
# built-in -> the built-in whose questions it asks of whole articles
LONG = {"squad_long": "squad_dev"}
BUILTINS = (*squad_archive.FILES, *LONG)
ARTICLE_JOIN = "\n\n"  # between the paragraphs of a squad_long context
PEEK = 1 << 16  # bytes read to tell what a local file holds

Rows = tuple[list[dict], bool]  # rows, and whether the source marks unanswerable questions


def _columns(cfg: DataConfig) -> tuple[str, str, str]:
    question, context = cfg.text_columns or ("question", "context")
    return question, context, cfg.label_column or "answers"


# ---------------------------------------------------------------- claims


def _peek_file(path: Path, columns: tuple[str, ...]) -> bool:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(columns) <= set(pq.read_schema(path).names)
    if suffix not in (".json", ".jsonl"):
        return False
    with path.open("rb") as f:
        head = f.read(PEEK).decode("utf-8", errors="ignore").lstrip()
    first = head.split("\n", 1)[0]
    try:
        row = json.loads(first)  # a JSON lines row, or a whole file on one short line
    except ValueError:
        row = None
    if isinstance(row, dict) and set(columns) <= set(row):
        return True
    if head.startswith("{"):
        return '"data"' in head and '"paragraphs"' in head and '"qas"' in head
    return head.startswith("[") and all(f'"{c}"' in head for c in columns)


def looks_like(cfg: DataConfig) -> bool:
    """Whether ``cfg`` names question answering data: set in the recipe, a preset or built-in,
    or a local file / folder that looks like QA data (its first bytes only)."""
    if cfg.metric in ("squad", "squad_v2"):
        return True
    name = cfg.name or ""
    if not name:
        return False
    if name in PRESETS or name in PRESETS.values() or name in BUILTINS:
        return True
    try:
        path = Path(name).expanduser()
        if path.is_dir():
            files = split_files(path, SUFFIXES, ".json")
            path = files.get("train") or next(iter(files.values()))
        return path.is_file() and _peek_file(path, _columns(cfg))
    except Exception:  # not readable as QA data: the classification loader reports it
        return False


# ---------------------------------------------------------------- reading


def squad_rows(data, where: str) -> list[dict]:
    """SQuAD JSON flattened to one row per question; ``article`` is its index in data."""

    def bad(at: str, what: str) -> DistillError:
        return DistillError(f"{where}: {at} {what}; {SQUAD_SHAPE}")

    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise bad("the top level", "is not an object with a 'data' list")
    rows = []
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise bad(f"data[{a}]", "has no 'paragraphs' list")
        for p, para in enumerate(paragraphs):
            at = f"data[{a}].paragraphs[{p}]"
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise bad(at, "has no 'qas' list")
            for q, qa in enumerate(para["qas"]):
                if not isinstance(qa, dict):
                    raise bad(f"{at}.qas[{q}]", "is not an object")
                row = {**qa, "context": para.get("context"), "article": a}
                rows.append({**row, "where": f"{at}.qas[{q}]"})
    return rows


def _read_json(path: Path) -> Rows:
    fix = f"fix the file: {SQUAD_SHAPE}, or JSON lines rows with context, question and answers"
    text = read_text(path, "data file", fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole:
        lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
        rows = []
        for i, line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                at = whole if i == lines[0][0] else e  # a broken first line: report the file
                where = f"line {at.lineno if at is whole else i} column {at.colno}"
                raise DistillError(
                    f"data file {path} is not valid JSON ({where}: {at.msg}); {fix}"
                ) from None
        return rows, _marked(rows)
    if isinstance(data, dict) and "data" in data:
        rows = squad_rows(data, f"data file {path}")
        return rows, str(data.get("version", "")).startswith("v2") or _marked(rows)
    rows = data if isinstance(data, list) else [data]
    return rows, _marked(rows)


def _marked(rows: list) -> bool:
    return any(isinstance(row, dict) and "is_impossible" in row for row in rows)


def _read_parquet(path: Path) -> Rows:
    with reading(path, "data file", "fix the file (it must be valid Parquet) or pass another"):
        df = pd.read_parquet(path)
    return df.to_dict("records"), "is_impossible" in df.columns


def _file_reader(path: Path) -> Callable[[], Rows]:
    return lambda: _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_json(path)


def _hub(dd: datasets.DatasetDict, name: str, v2: bool = False) -> _Source:
    def reader(ds: datasets.Dataset) -> Callable[[], Rows]:
        return lambda: (ds.to_list(), v2 or "is_impossible" in ds.column_names)

    return _Source(name, {split: reader(ds) for split, ds in dd.items()})


def whole_articles(data: dict, where: str) -> dict:
    """SQuAD JSON with one paragraph per article: its paragraphs' contexts joined by
    ARTICLE_JOIN, each answer_start shifted by its paragraph's offset in the joined context."""
    articles = []
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list) or not all(isinstance(p, dict) for p in paragraphs):
            raise DistillError(f"{where}: data[{a}] has no 'paragraphs' list; {SQUAD_SHAPE}")
        contexts, qas, offset = [], [], 0
        for para in paragraphs:
            context = para.get("context")
            if not isinstance(context, str):
                raise DistillError(f"{where}: data[{a}] has a context that is not text")
            for qa in para.get("qas") or []:
                answers = qa.get("answers") if isinstance(qa, dict) else None
                if isinstance(answers, list):
                    answers = [_shifted(answer, offset) for answer in answers]
                    qa = {**qa, "answers": answers}
                qas.append(qa)
            contexts.append(context)
            offset += len(context) + len(ARTICLE_JOIN)
        joined = {"context": ARTICLE_JOIN.join(contexts), "qas": qas}
        articles.append({**article, "paragraphs": [joined]})
    return {**data, "data": articles}


def _shifted(answer, offset: int):
    start = answer.get("answer_start") if isinstance(answer, dict) else None
    if not isinstance(start, numbers.Integral) or isinstance(start, bool):
        return answer  # _split reports it
    return {**answer, "answer_start": int(start) + offset}


def _builtin(name: str) -> _Source:
    data = squad_archive.squad_file(LONG.get(name, name))
    if name in LONG:
        data = whole_articles(data, f"built-in {name}")
    rows = squad_rows(data, f"built-in {name}")
    if name not in ("squad_dev", *LONG):  # SquadShifts: one out-of-domain test set
        return _Source(name, {"test": lambda: (rows, False)})
    titles = [str(article.get("title", "")) for article in data["data"]]
    by_article = squad_archive.article_splits(titles)
    readers = {}
    for split, articles in by_article.items():
        keep = set(articles)
        readers[split] = lambda keep=keep: ([r for r in rows if r["article"] in keep], False)
    return _Source(name, readers)


def _open(name: str) -> _Source:
    if name in BUILTINS:
        return _builtin(name)
    if name in PRESETS:
        return _hub(_load_hub(PRESETS[name]), f"{name} ({PRESETS[name]})", v2=name == "squad_v2")
    if name in PRESETS.values():
        return _hub(_load_hub(name), name, v2=name == PRESETS["squad_v2"])
    path = Path(name).expanduser()
    if path.is_dir():
        files = split_files(path, SUFFIXES, ".json")
        return _Source(str(path), {split: _file_reader(p) for split, p in files.items()})
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DistillError(
                f"unsupported question answering file {path}; use one of {', '.join(SUFFIXES)}"
            )
        return _Source(str(path), {path.stem: _file_reader(path)}, single=True)
    if looks_like_path(name):
        raise DistillError(f"data file not found: {path}; pass an existing file or folder")
    return _hub(_load_hub(name), name)


# ---------------------------------------------------------------- rows to a split


def _answers(value, where: str) -> tuple[list, list]:
    """(texts, starts) from HF's dict of lists or SQuAD's list of {text, answer_start}."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return [], []
    if isinstance(value, dict) and {"text", "answer_start"} <= set(value):
        texts, starts = list(value["text"]), list(value["answer_start"])
    elif isinstance(value, (list, np.ndarray)) and all(
        isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in value
    ):
        texts, starts = [a["text"] for a in value], [a["answer_start"] for a in value]
    else:
        raise DistillError(f"{where}: answers must be {ANSWERS_SHAPE}; fix the data")
    ok = len(texts) == len(starts) and all(isinstance(t, str) for t in texts)
    if not ok or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in starts
    ):
        raise DistillError(
            f"{where}: answers need as many texts (strings) as answer_start values (integers); "
            "fix the data"
        )
    return texts, [int(s) for s in starts]


def _split(rows: list[dict], cfg: DataConfig, split: str, name: str):
    """The split's columns, and counts: skipped answers, dropped questions, unanswerable ones."""
    question_col, context_col, answers_col = _columns(cfg)
    if not all(isinstance(row, dict) for row in rows):
        raise DistillError(
            f"split '{split}' of {name} is not rows of context, question and answers; "
            f"fix the data ({SQUAD_SHAPE})"
        )
    for column in (question_col, context_col, answers_col):
        if rows and "where" not in rows[0] and column not in rows[0]:
            raise DistillError(
                f"column '{column}' not found in split '{split}' of {name}; columns: "
                f"{', '.join(map(str, rows[0]))}; question answering needs context, question and "
                f"answers ({ANSWERS_SHAPE}): rename them, or set data.text_columns "
                "[question, context] and data.label_column"
            )
    squad = bool(rows) and "where" in rows[0]
    if squad:
        question_col, context_col, answers_col = "question", "context", "answers"
    out = {"id": [], "question": [], "context": [], "answers": []}
    skipped = total = dropped = unanswerable = 0
    for i, row in enumerate(rows):
        where = f"{name}, split '{split}', " + row.get("where", f"row {i + 1}")
        question, context = row.get(question_col), row.get(context_col)
        if not isinstance(question, str) or not isinstance(context, str):
            raise DistillError(f"{where}: question and context must be text; fix the data")
        impossible = row.get("is_impossible")
        if isinstance(impossible, (bool, np.bool_)) and impossible:
            texts, starts = [], []
        elif squad and "answers" not in row:
            raise DistillError(f"{where} has no 'answers'; {SQUAD_SHAPE}")
        else:
            texts, starts = _answers(row.get(answers_col), where)
        good = [
            (t, s)
            for t, s in zip(texts, starts, strict=True)
            if t and s >= 0 and context[s : s + len(t)] == t
        ]
        total += len(texts)
        skipped += len(texts) - len(good)
        if texts and not good:
            dropped += 1
            continue
        unanswerable += not good
        qid = row.get("id")
        out["id"].append(str(qid) if qid is not None and qid == qid else f"{split}-{i}")
        out["question"].append(question)
        out["context"].append(context)
        out["answers"].append({"text": [t for t, _ in good], "answer_start": [s for _, s in good]})
    if total and skipped == total:
        raise DistillError(
            f"split '{split}' of {name}: none of its {total} answers is found at its "
            "answer_start; answer_start must be the 0-based character offset of the answer text "
            "in the context"
        )
    seen = set()
    for qid in out["id"]:
        if qid in seen:
            raise DistillError(
                f"id '{qid}' appears twice in split '{split}' of {name}; make the ids unique "
                "(or leave them out to number the rows)"
            )
        seen.add(qid)
    return out, skipped, dropped, unanswerable


def load_qa_data(
    cfg: DataConfig, splits: list[str] | None = None, optional: tuple[str, ...] = ()
) -> TaskData:
    """Load ``splits`` (default: all) of ``cfg.name`` as question answering :class:`TaskData`.

    As data.load_task_data: ``max_train_samples`` keeps the first questions of
    ``cfg.train_split``, ``max_eval_samples`` those of other splits; ``optional`` splits are
    added when the source has them (never from a single file).
    """
    if not cfg.name:
        raise DistillError("no data: pass --data NAME_OR_PATH")
    if cfg.metric is not None and cfg.metric not in ("squad", "squad_v2"):
        raise DistillError(
            f"metric '{cfg.metric}' does not fit a question answering task; use squad or squad_v2"
        )
    source = _open(cfg.name)
    wanted = list(splits) if splits else source.split_names()
    wanted += [s for s in optional if s not in wanted and not source.single and source.has(s)]
    cache: dict[str, Rows] = {}
    out, dropped, v2 = {}, {}, False
    for split in wanted:
        key = source.key(split)
        if key not in cache:
            cache[key] = source.readers[key]()
        rows, marked = cache[key]
        columns, skipped, dropped[split], unanswerable = _split(rows, cfg, split, source.name)
        v2 |= marked or unanswerable > 0
        if cfg.min_words is not None:
            words = [word_count(c) for c in columns["context"]]
            long = keep_long(words, cfg.min_words, split, source.name, "questions")
            rows_kept = np.flatnonzero(long)
            columns = {c: [values[i] for i in rows_kept] for c, values in columns.items()}
        limit = cfg.max_train_samples if split == cfg.train_split else cfg.max_eval_samples
        if limit is not None:
            columns = {c: values[:limit] for c, values in columns.items()}
        if not columns["id"]:
            why = f" after dropping {dropped[split]} questions" if dropped[split] else ""
            raise DistillError(f"split '{split}' of {source.name} is empty{why}")
        if skipped:
            log(
                f"{split}: skipped {skipped} answers whose answer_start doesn't match their "
                f"text; dropped {dropped[split]} questions left without answers"
            )
        out[split] = datasets.Dataset(pa.Table.from_pydict(columns, schema=FEATURES.arrow_schema))
    return TaskData(
        splits=datasets.DatasetDict(out),
        text_columns=["question", "context"],
        labels=None,
        task_type=TASK,
        metric=cfg.metric or ("squad_v2" if v2 else "squad"),
        dropped=dropped,
    )

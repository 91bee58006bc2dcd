"""Shared fixtures: a tiny WordPiece tokenizer, tiny random BERT models and a tiny dataset.

Nothing here touches the network; every file lives in pytest's tmp folders.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fine", "lovely", "superb", "moving"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "messy"]
FILLER = "the a this that movie film plot acting story cast was is and but very quite so".split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
LABELS = ["neg", "pos"]


def make_tokenizer(path):
    """A tiny uncased WordPiece tokenizer built with the tokenizers library."""
    words = SPECIALS + FILLER + POSITIVE + NEGATIVE + LETTERS + ["##" + c for c in LETTERS]
    vocab = list(dict.fromkeys(words))  # "a" is both a word and a letter: one id
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    hf = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    hf.save_pretrained(path)
    return hf


def tiny_bert_config(vocab_size, layers=4, hidden=48, heads=4, labels=LABELS):
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


def sentences(n, seed=0):
    """Rows of (text, label name): the label follows the sentiment word in the text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        extra = rng.sample(FILLER, rng.randint(2, 8))
        text = " ".join(["the", rng.choice(["movie", "film"]), "was", word, *extra])
        rows.append((text, LABELS[label]))
    return rows


def write_csv(path, rows, header=("text", "label"), sep=","):
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_tokenizer_dir):
    """A 4-layer, hidden-48 BERT classifier with labels neg/pos, saved as an HF folder."""
    path = tmp_path_factory.mktemp("teacher")
    tok = make_tokenizer(path)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(len(tok)))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory):
    """A 2-layer, hidden-32 BERT classifier: narrower and shallower than the teacher."""
    path = tmp_path_factory.mktemp("student")
    tok = make_tokenizer(path)
    torch.manual_seed(1)
    model = BertForSequenceClassification(tiny_bert_config(len(tok), layers=2, hidden=32))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A folder with train.csv, validation.csv and test.csv (columns text,label)."""
    path = tmp_path_factory.mktemp("data")
    write_csv(path / "train.csv", sentences(48, seed=0))
    write_csv(path / "validation.csv", sentences(16, seed=1))
    write_csv(path / "test.csv", sentences(16, seed=2))
    return path


def make_bpe_tokenizer(path):
    """A tiny byte-level BPE tokenizer (GPT-2 style) trained locally on the fixture sentences."""
    from tokenizers import trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([t for t, _ in sentences(200)], trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    hf.save_pretrained(path)
    return hf


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """Raw text, one document per line."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(t for t, _ in sentences(64, seed=5)) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A 4-layer, hidden-48 BERT encoder with no head (like the packaged MiniLM)."""
    from transformers import BertModel

    path = tmp_path_factory.mktemp("encoder")
    tok = make_tokenizer(path)
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tok)), add_pooling_layer=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    tok = make_bpe_tokenizer(path)
    config = GPT2Config(
        vocab_size=len(tok), n_embd=48, n_layer=4, n_head=4, n_positions=128,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    save_tiny_llama(path, make_bpe_tokenizer(path), tie_word_embeddings=False)
    return path


def save_tiny_llama(path, tok, **overrides):
    """A 4-layer, hidden-48 Llama (2 KV heads) over ``tok``'s vocabulary, saved in ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{
        "vocab_size": len(tok), "hidden_size": 48, "intermediate_size": 96,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "bos_token_id": tok.eos_token_id,
        "eos_token_id": tok.eos_token_id, **overrides,
    })  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)

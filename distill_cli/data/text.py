"""Raw, unlabelled text for the GLMD pre-training stage: load, tokenize (pack or not), mask.

Teacher and student read the same token sequences; encoders get BERT-style masking from
:class:`MaskingCollator`, causal LMs none. No labels are needed: the KL covers every non-pad token.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pandas as pd
import torch

from distill_cli.data import newsgroups
from distill_cli.data import tables as data
from distill_cli.data.batching import PadCollator, tokenize
from distill_cli.errors import DistillError
from distill_cli.reporting import log as default_log
from distill_cli.user_files import read_text

if TYPE_CHECKING:
    from distill_cli.recipe import DataConfig

TEXT_SUFFIXES = (".txt", *data.SUFFIXES)


# ---------------------------------------------------------------- built-in 20 newsgroups


def newsgroups_texts() -> list[str]:
    """The 11,293 20 Newsgroups training documents (lowercased, letters only: Cachopo's
    all-terms preprocessing), each subject line followed by its body."""
    return newsgroups.texts()


BUILTIN_TEXTS = {"rotten_tomatoes": data.rotten_tomatoes_texts, "newsgroups": newsgroups_texts}


# ---------------------------------------------------------------- loading


def _text_column(df: pd.DataFrame, wanted: str | None, where: str) -> str:
    if wanted is not None:
        if wanted not in df.columns:
            raise DistillError(
                f"column '{wanted}' not found in {where}; columns: "
                f"{', '.join(map(str, df.columns))}; set data.text_columns"
            )
        return wanted
    for column in data.TEXT_COLUMNS:
        if column in df.columns:
            return column
    raise DistillError(
        f"no text column in {where} (looked for {', '.join(data.TEXT_COLUMNS)}); columns: "
        f"{', '.join(map(str, df.columns))}; set data.text_columns"
    )


def _column_texts(df: pd.DataFrame, wanted: str | None, where: str) -> list[str]:
    column = _text_column(df, wanted, where)
    return df[column].astype("string").fillna("").astype(str).tolist()


def _file_texts(path: Path, wanted: str | None) -> list[str]:
    if path.suffix.lower() == ".txt":
        fix = "save it as UTF-8 text, one document per line"
        return read_text(path, "text file", fix).splitlines()  # one document per line
    return _column_texts(data._read_file(path), wanted, str(path))


def _raw_texts(name: str, wanted: str | None) -> list[str]:
    parts = name.split("+")
    if all(part in BUILTIN_TEXTS for part in parts):  # e.g. rotten_tomatoes+newsgroups
        return [text for part in parts for text in BUILTIN_TEXTS[part]()]
    path = Path(name).expanduser()
    if path.is_dir():
        files = [
            p
            for p in sorted(path.iterdir())
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not p.name.startswith(".")
        ]
        if not files:
            raise DistillError(
                f"{path} holds no text files; add .txt or {', '.join(data.SUFFIXES)}"
            )
        return [t for f in files for t in _file_texts(f, wanted)]
    if path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise DistillError(
                f"unsupported text file {path}; use one of {', '.join(TEXT_SUFFIXES)}"
            )
        return _file_texts(path, wanted)
    if data.looks_like_path(name) or path.suffix.lower() == ".txt":
        raise DistillError(
            f"text file not found: {path}; pass an existing file or folder, rotten_tomatoes, "
            "newsgroups or a Hub dataset name"
        )
    dd = data._load_hub(name)
    if "train" not in dd:
        raise DistillError(f"dataset '{name}' has no train split (splits: {', '.join(dd)})")
    return _column_texts(dd["train"].to_pandas(), wanted, f"dataset '{name}'")


def load_texts(cfg: DataConfig, log: Callable[[str], None] = default_log) -> datasets.Dataset:
    """The corpus named by ``cfg.name`` as one ``text`` column; empty texts are dropped."""
    if not cfg.name:
        raise DistillError("no data: pass --data NAME_OR_PATH")
    wanted = cfg.text_columns[0] if cfg.text_columns else None
    raw = _raw_texts(cfg.name, wanted)
    texts = [t for t in raw if t.strip()]
    if len(texts) < len(raw):
        log(f"dropped {len(raw) - len(texts)} empty texts from {cfg.name}")
    if not texts:
        raise DistillError(f"{cfg.name} holds no text; pass a corpus with non-empty documents")
    if cfg.min_words is not None:
        words = [data.word_count(t) for t in texts]
        long = data.keep_long(words, cfg.min_words, "train", cfg.name, "texts")
        texts = [t for t, k in zip(texts, long, strict=True) if k]
    if cfg.max_train_samples is not None:
        texts = texts[: cfg.max_train_samples]
    return datasets.Dataset.from_dict({"text": texts})


# ---------------------------------------------------------------- tokenizing


def _special_ends(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after one sequence (e.g. [CLS] / [SEP])."""
    special = set(tokenizer.all_special_ids)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = 0
    while start < len(ids) and ids[start] in special:
        start += 1
    end = len(ids)
    while end > start and ids[end - 1] in special:
        end -= 1
    return ids[:start], ids[end:]


def _separator(tokenizer, causal: bool) -> int | None:
    first, second = (
        (tokenizer.eos_token_id, tokenizer.sep_token_id)
        if causal
        else (tokenizer.sep_token_id, tokenizer.eos_token_id)
    )
    return first if first is not None else second


def _pack(ds, tokenizer, max_length: int, causal: bool, log) -> datasets.Dataset:
    prefix, suffix = _special_ends(tokenizer)
    inner = max_length - len(prefix) - len(suffix)
    if inner < 1:
        raise DistillError(f"data.max_length {max_length} leaves no room for tokens; raise it")
    enc = ds.map(
        lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]},
        batched=True,
        remove_columns=ds.column_names,
    )
    sep = _separator(tokenizer, causal)
    # Documents joined by the separator (between documents, not after the last).
    parts = []
    for i, ids in enumerate(enc["ids"]):
        if i and sep is not None:
            parts.append([sep])
        parts.append(ids)
    stream = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else []
    blocks = [
        prefix + stream[i : i + inner].tolist() + suffix for i in range(0, len(stream), inner)
    ]
    if not blocks:
        raise DistillError("the corpus tokenizes to no tokens; check the text and the tokenizer")
    out = {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]}
    if "token_type_ids" in tokenizer.model_input_names:
        out["token_type_ids"] = [[0] * len(b) for b in blocks]
    log(f"packed {len(ds)} texts ({len(stream)} tokens) into {len(blocks)} blocks of {max_length}")
    return datasets.Dataset.from_dict(out)


def tokenize_texts(
    ds, tokenizer, max_length: int, packing: str, causal: bool, log=default_log
) -> datasets.Dataset:
    """``input_ids``, ``attention_mask`` (+ ``token_type_ids``): packed blocks or one per text."""
    if packing == "pack":
        return _pack(ds, tokenizer, max_length, causal, log)
    if packing not in ("bucket", "none"):
        raise DistillError(f"data.packing must be pack, bucket or none, not '{packing}'")
    out, truncated = tokenize(ds, tokenizer, ["text"], max_length)
    if truncated:
        log(f"truncated {truncated} of {len(out)} texts to {max_length} tokens")
    return out.remove_columns([c for c in out.column_names if c == "text"])


def bucket_batches(
    lengths: list[int], batch_size: int, seed: int, bucket_factor: int = 50
) -> list[list[int]]:
    """Batches of similar lengths: shuffle, sort within mega-batches, cut, shuffle batch order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    mega = batch_size * bucket_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ---------------------------------------------------------------- masking


class TokenMasker:
    """BERT-style masking of a padded batch: of the ``p`` share of chosen tokens, 80% become
    [MASK], 10% a random non-special token, 10% stay. Special tokens and padding are never chosen.

    Random draws come from its own CPU generator, so runs are reproducible on any device.
    """

    def __init__(self, tokenizer, seed: int | None = None):
        self.mask_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.random_ids = vocab[~torch.isin(vocab, self.special_ids)]
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def check(self, p: float) -> None:
        if p > 0 and self.mask_id is None:
            raise DistillError("masking needs a tokenizer with a mask token; set mlm_probability 0")

    def __call__(self, ids, attention_mask, p: float):
        """(masked ids, chosen positions)."""
        self.check(p)
        if p <= 0:
            return ids, torch.zeros_like(ids, dtype=torch.bool)
        g, dev = self.generator, ids.device
        maskable = attention_mask.bool() & ~torch.isin(ids, self.special_ids.to(dev))
        chosen = (torch.rand(ids.shape, generator=g).to(dev) < p) & maskable
        draw = torch.rand(ids.shape, generator=g).to(dev)
        to_mask = chosen & (draw < 0.8)
        to_random = chosen & (draw >= 0.8) & (draw < 0.9)
        pick = torch.randint(len(self.random_ids), ids.shape, generator=g)
        ids = ids.clone()
        ids[to_mask] = self.mask_id
        ids[to_random] = self.random_ids[pick].to(dev)[to_random]
        return ids, chosen


class MaskingCollator:
    """Pads a batch (dynamic padding) and masks it with a :class:`TokenMasker`.

    ``mlm_probability`` is a public attribute (or use :meth:`set_probability`); 0 turns masking
    off. Each DataLoader worker gets a copy of the generator, so give workers different seeds.
    """

    def __init__(self, tokenizer, mlm_probability: float, seed: int | None = None):
        pad_id = tokenizer.pad_token_id
        if pad_id is None:  # e.g. GPT-2: padding is hidden by the attention mask anyway
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad = PadCollator(pad_id)
        self.masker = TokenMasker(tokenizer, seed)
        self.set_probability(mlm_probability)

    def set_probability(self, p: float) -> None:
        self.masker.check(p)
        self.mlm_probability = p

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.pad(rows)
        ids, chosen = self.masker(batch["input_ids"], batch["attention_mask"], self.mlm_probability)
        batch["input_ids"], batch["mlm_mask"] = ids, chosen
        return batch

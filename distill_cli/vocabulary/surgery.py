"""GLMD vocabulary compression: keep the most frequent tokens, slice the vocabulary rows to them.

Every dropped token gets a substitute, the kept token whose teacher vocabulary vector has the
largest inner product with its own; ``vocab_map.json`` records it for distillation, which reads
teacher-tokenized ids and remaps them for the student.

The saved tokenizer cannot carry those substitutes: ``tokenizers`` stores one string per id when it
saves (duplicate ids are lost or picked at random), and BPE merges are keyed by id pairs, so two
strings sharing an id change the segmentation of kept text too. The rewritten tokenizer instead
holds only the kept tokens: text made of kept tokens encodes exactly as before (new ids), and a
dropped token is segmented into kept ones. BPE keeps its base symbols and WordPiece every
single-character token and its continuation form (``##x``), so no text gains an [UNK]: with every
character in both forms (as in uncased BERT's vocabulary), a word that had no [UNK] still matches at
least one character at each position.
"""

from __future__ import annotations

import copy
import itertools
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from distill_cli.errors import DistillError

SIMILARITIES = ("inner", "cosine", "euclidean", "unk")
SUPPORTED_MODELS = ("WordPiece", "BPE")
SPECIAL_ID_FIELDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "unk_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)
CHUNK = 1024  # dropped rows scored against all kept rows at once


@dataclass
class CompressionReport:
    vocab_before: int
    vocab_after: int
    vocab_requested: int  # round(ratio·V): the most frequent tokens
    kept_special: int  # special tokens outside those (always kept)
    kept_for_coverage: int  # tokens outside those kept so every text still tokenizes
    ratio_after: float  # vocab_after / vocab_before
    kept_note: str  # the line above in words, saying when the ratio was exceeded
    params_before: int
    params_after: int
    mb_before: float  # float32 weights, 10^6 bytes
    mb_after: float
    remapped_share: float  # share of corpus tokens whose id was dropped
    top_remaps: list[tuple[str, str, int]]  # (from_token, to_token, count), most frequent first

    def to_dict(self) -> dict:
        return asdict(self)


def compress(
    model,
    tokenizer,
    teacher_model,
    texts: list[str],
    ratio: float,
    similarity="inner",
    keep_ids=(),
):
    """Compress ``model``'s vocabulary (in place) to the top ``ratio``·V tokens of ``texts``.

    Always kept, on top of that count: special and added tokens, the config's special ids and
    ``keep_ids`` (a cloze model's verbalizers), counted as special;
    and so that every text still tokenizes without a new [UNK], for BPE the base symbols and every
    token a kept token is merged from, for WordPiece every single-character token and its ``##``
    form. The report counts both groups. Kept ids keep their original order. Returns
    ``(model, tokenizer, vocab_map, report)``; the tokenizer is a new one emitting the new ids.
    """
    if not 0 < ratio <= 1:
        raise DistillError(f"--ratio must be in (0, 1], got {ratio}")
    if similarity not in SIMILARITIES:
        raise DistillError(f"unknown similarity '{similarity}'; choose {', '.join(SIMILARITIES)}")
    size = model.get_input_embeddings().weight.shape[0]
    teacher_weight = teacher_model.get_input_embeddings().weight
    if teacher_weight.shape[0] != size:
        raise DistillError(
            f"the teacher has {teacher_weight.shape[0]} vocabulary rows but the model has {size}; "
            "compression needs a teacher with the model's vocabulary"
        )
    if not texts:
        raise DistillError("the corpus holds no texts; pass a corpus to count token frequencies")
    if similarity == "unk" and tokenizer.unk_token_id is None:
        raise DistillError(
            "similarity 'unk' needs a tokenizer with an unk token; this one has none"
        )
    spec = tokenizer_spec(tokenizer)

    counts = token_counts(tokenizer, texts, size)
    top = top_ids(counts, ratio, spec)
    special = _required_ids(model, tokenizer, size) | {i for i in keep_ids if 0 <= i < size}
    coverage = coverage_ids(spec, top | special, size)
    kept = np.array(sorted(top | special | coverage), dtype=np.int64)
    dropped = np.setdiff1d(np.arange(size), kept)
    subs = substitutes(teacher_weight, dropped, kept, similarity, tokenizer.unk_token_id)

    new_tokenizer = rewrite_tokenizer(tokenizer, spec, kept)
    params_before = _num_params(model)
    slice_vocab(model, kept)

    sub_of = dict(zip(dropped.tolist(), subs.tolist(), strict=True))
    vocab_map = {
        "kept_ids": kept.tolist(),
        "dropped": {str(d): s for d, s in sub_of.items()},
        "similarity": similarity,
        "ratio": ratio,
        "vocab_size_before": size,
        "vocab_size_after": len(kept),
    }
    total = int(counts.sum())
    order = sorted((d for d in dropped.tolist() if counts[d]), key=lambda d: (-counts[d], d))[:10]
    name = tokenizer.convert_ids_to_tokens
    params_after = _num_params(model)
    report = CompressionReport(
        vocab_before=size,
        vocab_after=len(kept),
        vocab_requested=len(top),
        kept_special=len(special - top),
        kept_for_coverage=len(coverage - top - special),
        ratio_after=len(kept) / size,
        kept_note=_kept_note(spec, len(top), special - top, coverage - top - special, ratio, size),
        params_before=params_before,
        params_after=params_after,
        mb_before=params_before * 4 / 1e6,
        mb_after=params_after * 4 / 1e6,
        remapped_share=float(counts[dropped].sum() / total) if total else 0.0,
        top_remaps=[(name(d), name(sub_of[d]), int(counts[d])) for d in order],
    )
    return model, new_tokenizer, vocab_map, report


COVERAGE_KINDS = {
    "WordPiece": "single characters and their ## forms, so no text gains an [UNK]",
    "BPE": "base symbols and merge parts, so every text still tokenizes",
}


def _kept_note(spec: dict, top: int, special: set, coverage: set, ratio: float, size: int) -> str:
    kept = top + len(special) + len(coverage)
    note = (
        f"kept {kept:,} of {size:,} tokens ({100 * kept / size:.1f}%): the {top:,} most frequent, "
        f"{len(special):,} special, {len(coverage):,} {COVERAGE_KINDS[spec['model']['type']]}"
    )
    if coverage:
        note += f"; above --ratio {ratio} because of these {len(coverage):,}"
    return note


def tokenizer_spec(tokenizer) -> dict:
    """The fast tokenizer's tokenizer.json as a dict; a clear error for types we cannot rewrite."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DistillError(
            f"vocabulary compression needs a fast (tokenizers) tokenizer; "
            f"{type(tokenizer).__name__} is slow-only"
        )
    spec = json.loads(backend.to_str())
    kind = spec["model"]["type"]
    if kind not in SUPPORTED_MODELS:
        raise DistillError(
            f"cannot rewrite a {kind} tokenizer ({type(tokenizer).__name__}); vocabulary "
            "compression supports WordPiece (BERT family) and BPE (GPT-2/RoBERTa) tokenizers"
        )
    return spec


def token_counts(tokenizer, texts: list[str], size: int, batch: int = 1000) -> np.ndarray:
    """How often each id occurs in ``texts`` (no special tokens added)."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start : start + batch], add_special_tokens=False, verbose=False)
        ids = np.fromiter(itertools.chain.from_iterable(enc["input_ids"]), dtype=np.int64)
        if ids.size and ids.max() >= size:
            raise DistillError(
                f"the tokenizer emits id {ids.max()} but the model has {size} vocabulary rows"
            )
        counts += np.bincount(ids, minlength=size)
    return counts


def _required_ids(model, tokenizer, size: int) -> set[int]:
    ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    configs = [model.config, getattr(model, "generation_config", None)]
    for config, field in itertools.product(configs, SPECIAL_ID_FIELDS):
        value = getattr(config, field, None)
        ids.update(v for v in np.atleast_1d(value).tolist() if isinstance(v, int))
    return {i for i in ids if 0 <= i < size}


def _merge_pairs(model_spec: dict) -> list[tuple[str, str, str]]:
    """BPE merges as (left, right, result); older files write a merge as "left right"."""
    prefix = model_spec.get("continuing_subword_prefix") or ""
    out = []
    for merge in model_spec["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        out.append((a, b, a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)))
    return out


def top_ids(counts: np.ndarray, ratio: float, spec: dict) -> set[int]:
    """The max(1, round(ratio·V)) most frequent ids (ties: lower id); rows without a string last."""
    size = len(counts)
    score = np.full(size, -1, dtype=np.int64)
    named = np.array([i for i in spec["model"]["vocab"].values() if i < size], dtype=np.int64)
    score[named] = counts[named]
    order = np.lexsort((np.arange(size), -score))
    return set(order[: max(1, round(ratio * size))].tolist())


def coverage_ids(spec: dict, kept: set[int], size: int) -> set[int]:
    """Ids that must be kept beside ``kept`` so every text still tokenizes as it did.

    The unk token; WordPiece: every single character and its continuation form, so a word never
    becomes [UNK] for want of a piece; BPE: the base symbols, and every token a kept token is
    merged from, so kept tokens still form.
    """
    model_spec = spec["model"]
    vocab = {t: i for t, i in model_spec["vocab"].items() if i < size}
    out = {vocab[model_spec["unk_token"]]} if model_spec.get("unk_token") in vocab else set()
    if model_spec["type"] == "WordPiece":
        prefix = model_spec.get("continuing_subword_prefix") or ""
        stem = {t: t[len(prefix) :] if prefix and t.startswith(prefix) else t for t in vocab}
        return out | {i for t, i in vocab.items() if len(stem[t]) == 1}
    merges = _merge_pairs(model_spec)
    produced = {result for _, _, result in merges}
    out |= {i for token, i in vocab.items() if token not in produced}
    while True:  # a kept token needs the tokens it is merged from
        have = kept | out
        needed = {
            vocab[part]
            for a, b, result in merges
            if vocab.get(result) in have
            for part in (a, b)
            if vocab[part] not in have
        }
        if not needed:
            return out
        out |= needed


def substitutes(weight, dropped, kept, similarity: str, unk_id: int | None) -> np.ndarray:
    """For each dropped id, the kept id nearest to it in the teacher's vocabulary matrix."""
    if similarity == "unk":
        return np.full(len(dropped), unk_id, dtype=np.int64)
    kept_t = torch.as_tensor(kept)
    with torch.no_grad():
        w = weight.detach().float()
        cand = w[kept_t]
        if similarity == "cosine":
            cand = torch.nn.functional.normalize(cand, dim=1)
        sq = (cand * cand).sum(1)
        out = []
        for start in range(0, len(dropped), CHUNK):
            rows = w[torch.as_tensor(dropped[start : start + CHUNK])]
            if similarity == "cosine":
                rows = torch.nn.functional.normalize(rows, dim=1)
            scores = rows @ cand.T
            if similarity == "euclidean":  # argmin |r-c|² = argmax 2r·c - |c|²
                scores = 2 * scores - sq
            out.append(kept_t[scores.argmax(1).cpu()])
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def slice_vocab(model, kept: np.ndarray) -> None:
    """Keep only the ``kept`` vocabulary rows: embeddings, LM head, vocabulary biases.

    Parameters are replaced by identity, so weights that were tied stay tied.
    """
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    size, index = emb.weight.shape[0], torch.as_tensor(kept, device=emb.weight.device)
    targets = [emb.weight]
    if head is not None:
        targets += [head.weight, head.bias]
    # a 1-D vocabulary bias, e.g. BERT's cls.predictions.bias (tied to the decoder's bias)
    targets += [p for n, p in model.named_parameters() if n.endswith("bias") and p.shape == (size,)]
    new = {}
    for p in targets:
        if p is not None and id(p) not in new:
            new[id(p)] = torch.nn.Parameter(p.detach()[index].clone(), p.requires_grad)
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None and id(p) in new:
                module._parameters[name] = new[id(p)]
        if "final_logits_bias" in module._buffers:  # BART-style [1, V] buffer
            module.final_logits_bias = module.final_logits_bias[:, index].clone()
    new_id = {int(o): n for n, o in enumerate(kept)}
    emb.num_embeddings = len(kept)
    if getattr(emb, "padding_idx", None) is not None:
        emb.padding_idx = new_id.get(emb.padding_idx)
    if head is not None:
        head.out_features = len(kept)
    model.config.vocab_size = len(kept)
    if isinstance(getattr(model, "vocab_size", None), int):
        model.vocab_size = len(kept)
    for config in (model.config, getattr(model, "generation_config", None)):
        for field in SPECIAL_ID_FIELDS:
            value = getattr(config, field, None)
            if isinstance(value, int):
                setattr(config, field, new_id.get(value))
            elif isinstance(value, list):
                setattr(config, field, [new_id[v] for v in value if v in new_id])


def _remap_processor(proc: dict | None, new_id: dict[int, int]) -> None:
    """Special-token ids in a post-processor: Template, Bert, Roberta, and Sequences of them."""
    if not proc:
        return
    for special in proc.get("special_tokens", {}).values():  # TemplateProcessing
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing, RobertaProcessing: [token, id]
        if key in proc:
            proc[key][1] = new_id[proc[key][1]]
    for inner in proc.get("processors", []):
        _remap_processor(inner, new_id)


# what carries over as it is: no token ids in them (a chat template names tokens by text)
KEPT_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def rewrite_tokenizer(tokenizer, spec: dict, kept: np.ndarray):
    """A tokenizer of the same class holding only the kept tokens, under their new ids."""
    spec, new_id = copy.deepcopy(spec), {int(o): n for n, o in enumerate(kept)}
    model_spec = spec["model"]
    model_spec["vocab"] = {t: new_id[i] for t, i in model_spec["vocab"].items() if i in new_id}
    if model_spec["type"] == "BPE":
        # keep the merges that build kept tokens; those they are built from are kept too
        keep = [result in model_spec["vocab"] for _, _, result in _merge_pairs(model_spec)]
        model_spec["merges"] = [m for m, k in zip(model_spec["merges"], keep, strict=True) if k]
    spec["added_tokens"] = [
        {**t, "id": new_id[t["id"]]} for t in spec.get("added_tokens", []) if t["id"] in new_id
    ]
    _remap_processor(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    backend = Tokenizer.from_str(json.dumps(spec))
    with tempfile.TemporaryDirectory() as tmp:
        # save and reload: the plain-load path, and no stale vocab.txt / merges.txt carried over
        tokenizer.save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            if f.is_file() and f.name not in KEPT_TOKENIZER_FILES:
                f.unlink()
        config_file = Path(tmp) / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config.pop("added_tokens_decoder", None)  # it holds the old ids
        config_file.write_text(json.dumps(config))
        backend.save(str(Path(tmp) / "tokenizer.json"))
        new = type(tokenizer).from_pretrained(tmp)
    new.name_or_path = tokenizer.name_or_path
    return new

"""Cloze: a classification task read through the word head, as GLM fine-tunes every task (PET).

A template puts a blank into the input (``data.template``, e.g. ``"{text} It was {mask}."``) and
each label has one word (``data.verbalizers``, e.g. ``terrible`` / ``great``). The class logits
are the model's word logits at the blank, restricted to the verbalizer ids; there is no
classification head.

- **Encoders** (a tokenizer with a mask token): ``{mask}`` becomes the mask token; the blank is
  its position.
- **Causal LMs** (a tokenizer without one): the template ends where the class word goes (text
  after ``{mask}`` is dropped); the blank is the last real token, whose next-token logits are
  read. A verbalizer is the token the word is after the template's text before ``{mask}`` (its
  leading-space form, `` great``, where the tokenizer has one).

Each verbalizer must be one token of the model's vocabulary; a word of several tokens is an error
(multi-token answers are not supported). The logits come from ``models.forward.blank_logits``:
the hidden state at the blank times only the verbalizer rows of the word head (the real LM head,
or H·Eᵀ at the fitted ``word_logit_scale``), never the [batch, tokens, V] logits. Their layout is
``sequence``, so ``ce``, ``soft_label_kl`` and TKD read them as classification logits; scoring is
classification's. The saved model is a plain masked or causal LM plus ``cloze.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from distill_cli.data import tables
from distill_cli.errors import DistillError
from distill_cli.models.kinds import is_causal
from distill_cli.tasks import sequence
from distill_cli.tasks.base import TaskType
from distill_cli.user_files import read_json

NAME = "cloze"
FILE = "cloze.json"
MASK = "{mask}"
LM_BFF_TEMPLATE = "{text} It was {mask}."  # LM-BFF's manual template for SST-2 (Gao et al., 2021)
# built-in verbalizers by label name: LM-BFF's "terrible" / "great"
PRESET_WORDS = {
    "negative": "terrible",
    "positive": "great",
    "rotten": "terrible",
    "fresh": "great",
}
PRESETS = ("rotten_tomatoes", "sst2", "glue/sst2")
PLACEHOLDER = re.compile(r"\{(\w*)\}")
ASK = (
    "set data.template (with {text} and {mask}, e.g. '{text} It was {mask}.') and "
    "data.verbalizers (one word per label, in label order)"
)


@dataclass(frozen=True)
class Prompt:
    """A cloze task's template and its verbalizers, one per label in label order."""

    template: str
    verbalizers: tuple[str, ...]
    labels: tuple[str, ...]


def claims(cfg) -> bool:
    if cfg.task_type:
        return cfg.task_type == NAME
    return cfg.template is not None or cfg.verbalizers is not None


def _preset(cfg) -> bool:
    return (cfg.name or "").lower() in PRESETS


def check_template(template: str, text_columns: list[str]) -> None:
    """{mask} once, and the text placeholders the data's one or two text columns fill."""
    names = PLACEHOLDER.findall(template)
    allowed = {"text", "text_a", "mask"} if len(text_columns) == 1 else {"text_a", "text_b", "mask"}
    unknown = sorted(set(names) - allowed)
    if names.count("mask") != 1:
        raise DistillError(
            f"data.template {template!r} must hold {MASK} once (where the class word goes); "
            "e.g. '{text} It was {mask}.'"
        )
    if unknown:
        raise DistillError(
            f"data.template {template!r} has {', '.join('{' + u + '}' for u in unknown)}; "
            f"it takes {', '.join('{' + a + '}' for a in sorted(allowed))} "
            f"(this data has {len(text_columns)} text column(s))"
        )
    needed = {"text", "text_a"} if len(text_columns) == 1 else {"text_a", "text_b"}
    have = set(names) & needed
    if (len(text_columns) == 1 and not have) or (len(text_columns) == 2 and have != needed):
        want = "{text}" if len(text_columns) == 1 else "{text_a} and {text_b}"
        raise DistillError(f"data.template {template!r} must place the text: add {want}")


def resolve(cfg, labels: list[str], text_columns: list[str]) -> Prompt:
    """The recipe's template and verbalizers, or the built-in ones of rotten_tomatoes and sst2."""
    template, words = cfg.template, cfg.verbalizers
    if _preset(cfg):
        template = template if template is not None else LM_BFF_TEMPLATE
        if words is None:
            words = [PRESET_WORDS[name] for name in labels]
    if template is None or words is None:
        missing = " and ".join(
            k for k, v in (("data.template", template), ("data.verbalizers", words)) if v is None
        )
        raise DistillError(
            f"a cloze task needs a template and verbalizers ({missing} unset); {ASK}"
        )
    check_template(template, text_columns)
    words = [str(w) for w in words]
    if len(words) != len(labels):
        raise DistillError(
            f"data.verbalizers has {len(words)} word(s) but the data has {len(labels)} labels "
            f"({', '.join(labels)}); give one word per label, in that order"
        )
    if len(set(words)) < len(words):
        raise DistillError(f"data.verbalizers {words} repeat a word; give each label its own")
    return Prompt(template, tuple(words), tuple(labels))


def load(cfg, splits=None, label_names=None, optional=()):
    """Labelled text tables read as classes; the prompt from the recipe or the preset."""
    data = tables.load_task_data(cfg, splits, label_names, optional, regression=False)
    data.task_type = NAME
    data.prompt = resolve(cfg, data.labels, data.text_columns)
    return data


# ---------------------------------------------------------------- templates and tokens


def reads_next_token(tokenizer) -> bool:
    """A tokenizer without a mask token is a causal LM's: it reads the next token at the blank."""
    return tokenizer.mask_token_id is None


def render(template: str, texts: list[str], tokenizer) -> str:
    """The model's input: the texts in their places, and the blank as the mask token (encoders)
    or as the end of the input (causal LMs: what follows {mask} is dropped)."""
    names = ("text_a", "text_b") if len(texts) == 2 else ("text",)
    out = template
    if reads_next_token(tokenizer):
        out = out[: out.index(MASK)].rstrip()
    fills = {"{" + n + "}": t for n, t in zip(names, texts, strict=True)}
    fills[MASK] = tokenizer.mask_token or ""
    if len(texts) == 1:
        fills["{text_a}"] = texts[0]
    return PLACEHOLDER.sub(lambda m: fills.get(m.group(0), m.group(0)), out)


def check_reader(config, tokenizer, role: str) -> None:
    """The tokenizer decides how the blank is read (mask token: encoders; none: next token), so
    it must fit the model: an encoder needs a mask token, a causal LM reads the next token."""
    if is_causal(config) == reads_next_token(tokenizer):
        return
    if is_causal(config):
        raise DistillError(
            f"{role} is a causal LM but its tokenizer has a mask token "
            f"({tokenizer.mask_token}); a cloze on a causal LM reads the next token: remove the "
            "mask token from the tokenizer, or use a masked LM"
        )
    raise DistillError(
        f"{role} is an encoder but its tokenizer has no mask token, so a cloze cannot put a "
        "blank into its input; use a masked LM with its own tokenizer"
    )


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def verbalizer_ids(prompt: Prompt, tokenizer) -> list[int]:
    """Each verbalizer's one token id, as the word is tokenized right after the template's text
    before {mask} (its leading-space form where the tokenizer has one); a word of several tokens
    is an error."""
    lead = prompt.template[: prompt.template.index(MASK)].split("}")[-1].lstrip()
    before = _tokens(tokenizer, lead.rstrip())
    ids = []
    for word in prompt.verbalizers:
        both = _tokens(tokenizer, lead + word)
        if both[: len(before)] == before:
            got = both[len(before) :]
        else:  # the word merged with the text before it: read it alone
            got = _tokens(tokenizer, (" " if lead.endswith(" ") else "") + word)
        if len(got) != 1:
            pieces = tokenizer.convert_ids_to_tokens(got)
            raise DistillError(
                f"verbalizer {word!r} is {len(got)} tokens {pieces} in the vocabulary of "
                f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')}; each verbalizer must be "
                "one token: choose another word in data.verbalizers"
            )
        ids.append(got[0])
    if len(set(ids)) < len(ids):
        raise DistillError(f"data.verbalizers {list(prompt.verbalizers)} share a token; use others")
    return ids


def _blank(tokenizer, enc: dict, rendered: str) -> int:
    ids = enc["input_ids"]
    if reads_next_token(tokenizer):
        real = [i for i, special in enumerate(enc["special_tokens_mask"]) if not special]
        if not real:
            raise DistillError(f"the input {rendered!r} has no tokens before the blank")
        return real[-1]
    found = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
    if len(found) != 1:
        raise DistillError(
            f"the input {rendered[:80]!r} holds the mask token {len(found)} times; "
            "a text that contains it cannot be read as a cloze"
        )
    return found[0]


def _shorten(texts: list[str], tokenizer, over: int) -> list[str]:
    """Drop the end of the longest text by ``over`` tokens (and one more for the seam)."""
    i = max(range(len(texts)), key=lambda k: len(texts[k]))
    text = texts[i]
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        keep = len(enc["input_ids"]) - over - 1
        cut = enc["offset_mapping"][keep - 1][1] if keep > 0 else 0
    else:
        n = len(_tokens(tokenizer, text))
        cut = int(len(text) * max(0, n - over - 1) / max(n, 1))
    return [t[:cut] if k == i else t for k, t in enumerate(texts)]


def encode_texts(texts: list[str], template: str, tokenizer, max_length: int):
    """One row's model inputs and blank position, the texts shortened (never the template) to
    fit ``max_length``; returns (encoding, blank, truncated)."""
    truncated = False
    for _ in range(8):
        rendered = render(template, texts, tokenizer)
        enc = tokenizer(rendered, return_special_tokens_mask=True)
        over = len(enc["input_ids"]) - max_length
        if over <= 0:
            return enc, _blank(tokenizer, enc, rendered), truncated
        if not any(texts):
            break
        texts, truncated = _shorten(texts, tokenizer, over), True
    raise DistillError(
        f"data.template {template!r} alone is longer than data.max_length={max_length} tokens; "
        "raise data.max_length or shorten the template"
    )


def encode(ds, task, tokenizer, max_length: int, prefix: str = ""):
    """Add ``{prefix}input_ids`` etc., ``blank_position`` and ``verbalizer_ids`` to a split;
    returns (dataset, number of rows whose text was shortened)."""
    prompt: Prompt = task.prompt
    ids = verbalizer_ids(prompt, tokenizer)

    def encode_batch(batch):
        out: dict[str, list] = {}
        for texts in zip(*(batch[c] for c in task.text_columns), strict=True):
            enc, blank, truncated = encode_texts(
                list(texts), prompt.template, tokenizer, max_length
            )
            row = {k: v for k, v in enc.items() if k != "special_tokens_mask"}
            row |= {"blank_position": blank, "verbalizer_ids": ids, "truncated": truncated}
            for k, v in row.items():
                out.setdefault(f"{prefix}{k}", []).append(v)
        return out

    ds = ds.map(encode_batch, batched=True, desc=None)
    truncated = sum(ds[f"{prefix}truncated"])
    return ds.remove_columns(f"{prefix}truncated"), truncated


def _encoder(task, d):
    return lambda ds, tok, prefix: encode(ds, task, tok, d.max_length, prefix)


def train_features(ds, task, tokenizer, d, teacher_tokenizer=None):
    return sequence.encoded_features(_encoder(task, d), ds, tokenizer, d, teacher_tokenizer)


def eval_features(ds, task, tokenizer, d, name: str):
    return sequence.encoded_eval_features(_encoder(task, d), ds, tokenizer, d, name)


# ---------------------------------------------------------------- models and saved folders


class AutoModelForCloze:
    """AutoModelForMaskedLM or AutoModelForCausalLM, as the checkpoint's config says."""

    @staticmethod
    def pick(config):
        return AutoModelForCausalLM if is_causal(config) else AutoModelForMaskedLM

    @classmethod
    def from_pretrained(cls, name, *args, **kwargs):
        config = kwargs.get("config")
        if config is None:
            keys = ("trust_remote_code", "gguf_file", "revision")
            config = AutoConfig.from_pretrained(name, **{k: kwargs[k] for k in keys if k in kwargs})
        return cls.pick(config).from_pretrained(name, *args, **kwargs)


def saved_files(task, tokenizer, mode: str, scale: float) -> dict[str, dict]:
    """cloze.json: what reading the saved LM as a classifier takes."""
    prompt: Prompt = task.prompt
    ids = verbalizer_ids(prompt, tokenizer)
    return {
        FILE: {
            "template": prompt.template,
            "verbalizers": list(prompt.verbalizers),
            "labels": list(prompt.labels),
            "verbalizer_ids": ids,
            "verbalizer_tokens": tokenizer.convert_ids_to_tokens(ids),
            "reads": "next_token" if reads_next_token(tokenizer) else "mask_token",
            "word_logits": mode,
            "word_logit_scale": scale,
        }
    }


def read_saved(folder) -> dict | None:
    """A model folder's cloze.json, or None when it has none."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    shape = {"template": str, "verbalizers": list, "labels": list}
    optional = {"word_logits": str, "word_logit_scale": (int, float)}
    return read_json(path, "cloze settings", "restore it or train the model again", shape, optional)


def saved_prompt(saved: dict) -> Prompt:
    """The Prompt a cloze.json holds."""
    return Prompt(saved["template"], tuple(saved["verbalizers"]), tuple(saved["labels"]))


def saved_reads_next_token(saved: dict, config) -> bool:
    """Whether a saved cloze model reads its blank as the next token (a causal LM)."""
    reads = saved.get("reads")
    return is_causal(config) if reads is None else reads == "next_token"


def saved_word_logits(path) -> str | None:
    """The word mode a cloze model was trained in (its cloze.json), for word_logits: auto."""
    saved = read_saved(path) if path and Path(path).is_dir() else None
    return saved.get("word_logits") if saved else None


def saved_scale(path) -> float | None:
    """The scale a cloze model's class logits were trained at, when it reads H·Eᵀ (its
    cloze.json's word_logit_scale); None for a model without one, or one with an LM head."""
    saved = read_saved(path) if path and Path(path).is_dir() else None
    if not saved or saved.get("word_logits") != "embeddings" or "word_logit_scale" not in saved:
        return None
    return float(saved["word_logit_scale"])


def data_settings(saved: dict) -> dict:
    """The data keys cloze.json gives (for evaluate, where the recipe leaves them unset)."""
    return {
        "task_type": NAME,
        "template": saved["template"],
        "verbalizers": saved["verbalizers"],
        "labels": saved["labels"],
    }


CLOZE = TaskType(
    name=NAME,
    layout=sequence.LAYOUT,
    auto_class=AutoModelForCloze,
    pipeline="fill-mask",
    architecture_suffix=("ForMaskedLM", "ForCausalLM", "LMHeadModel"),
    claims=claims,
    load=load,
    train_features=train_features,
    eval_features=eval_features,
    plain_text=sequence.plain_text,
    label_kwargs=lambda labels: {},
    num_outputs=lambda labels: None,
    records=sequence.records,
    metrics=sequence.metrics,
    one_label_per_text=True,
    word_head=True,
    saved_files=saved_files,
)

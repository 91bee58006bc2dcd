"""Chat and instruction data: each row a conversation, a list of ``{role, content}`` messages,
rendered with the model's chat template, with a mask of the assistant's tokens.

Rows may hold ``messages`` (TRL's and the Hub's conversational format); ``prompt`` and
``completion``, each a string or a list of messages; or alpaca's ``instruction``, ``input`` and
``output``. ``cfg.name`` is the built-in ``chitchat``, a JSON / JSON lines / Parquet file, a
folder of split files, or a Hub dataset name.

The assistant mask comes from the rendered text, not from a list of model names: each assistant
turn's span runs from the end of the conversation rendered up to it with the generation prompt,
to the end of the conversation rendered through it (its end-of-turn token included).

Built-in chitchat (chitchat-dataset 0.9.0: 7,168 conversations, of which 4,017 have two speakers
and a reply; the other 3,151 are skipped): consecutive messages of one sender form a turn, the
first speaker is the user and the other the assistant; split 80/10/10 by a hash of the
conversation id (CHITCHAT_SPLIT_SEED 42): train 3,217, validation 411, test 389.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

import datasets

from distill_cli.data import tables
from distill_cli.errors import DistillError
from distill_cli.user_files import read_text, reading

if TYPE_CHECKING:
    from distill_cli.recipe import DataConfig

SUFFIXES = (".json", ".jsonl", ".parquet")
CHITCHAT_PIP = "pip install --no-deps chitchat-dataset==0.9.0"
CHITCHAT_SPLIT_SEED = 42
ASSISTANT = "assistant"
FORMATS = "messages, prompt/completion, or instruction/input/output"


# ---------------------------------------------------------------- rows → messages


def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list):
        raise DistillError(
            f"{where}: messages is {type(messages).__name__}, not a list of {{role, content}}"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DistillError(f"{where}: message {i} is not a {{role, content}} object")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            raise DistillError(f"{where}: message {i} ({m['role']}) is empty; fill it or drop it")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == ASSISTANT for m in out):
        raise DistillError(f"{where}: the conversation has no assistant turn to learn from")
    return out


def _turns(value, role: str):
    """A prompt or completion: a string is one message of ``role``; a list is messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return value.tolist() if hasattr(value, "tolist") else value


def as_messages(row: dict, where: str) -> list[dict]:
    """One row in any supported format as a checked list of messages."""
    if "messages" in row:
        messages = row["messages"]
        if hasattr(messages, "tolist"):  # Parquet lists arrive as numpy arrays
            messages = messages.tolist()
    elif "prompt" in row and "completion" in row:
        prompt, completion = _turns(row["prompt"], "user"), _turns(row["completion"], ASSISTANT)
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise DistillError(f"{where}: prompt and completion must be strings or message lists")
        messages = prompt + completion
    elif "instruction" in row and "output" in row:
        extra = row.get("input") or ""
        user = f"{row['instruction']}\n\n{extra}" if str(extra).strip() else row["instruction"]
        messages = [
            {"role": "user", "content": user},
            {"role": ASSISTANT, "content": row["output"]},
        ]
    else:
        raise DistillError(
            f"{where}: no conversation found (columns {', '.join(map(str, row))}); give {FORMATS}"
        )
    return _check_messages(messages, where)


# ---------------------------------------------------------------- sources

CONVERSATION_KEYS = ({"messages"}, {"prompt", "completion"}, {"instruction", "output"})


def _holds_conversations(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        columns = set(pq.read_schema(path).names)
    elif path.suffix.lower() in (".json", ".jsonl"):
        with open(path, encoding="utf-8") as f:
            head = f.read(1 << 20).lstrip().removeprefix("[").lstrip()
        row, _ = json.JSONDecoder().raw_decode(head)
        columns = set(row) if isinstance(row, dict) else set()
    else:
        return False
    return any(keys <= columns for keys in CONVERSATION_KEYS)


def looks_like(cfg: DataConfig) -> bool:
    """Whether ``cfg.name`` is the built-in chitchat or a file (or folder of split files) whose
    rows hold conversations (cheap; never raises)."""
    name = cfg.name or ""
    if name == "chitchat":
        return True
    try:
        path = Path(name).expanduser()
        if path.is_dir():
            files = tables.split_files(path, SUFFIXES, ".jsonl")
            path = files.get("train") or next(iter(files.values()))
        return path.is_file() and _holds_conversations(path)
    except Exception:  # not readable as chat data: another reader reports it
        return False


def _chitchat_path() -> Path:
    spec = importlib.util.find_spec("chitchat_dataset")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        if (Path(root) / "dataset.json").is_file():
            return Path(root) / "dataset.json"
    raise DistillError(f"the built-in chitchat conversations ship in a package: {CHITCHAT_PIP}")


def chitchat_conversation(entry: dict) -> list[dict] | None:
    """One chitchat conversation as alternating user and assistant turns (None: fewer than two
    speakers' turns)."""
    turns, speakers = [], []
    for turn in entry.get("messages") or []:
        text = "\n".join(m["text"].strip() for m in turn if m.get("text", "").strip())
        if not text:
            continue
        sender = turn[0].get("sender")
        if sender not in speakers:
            speakers.append(sender)
        role = "user" if speakers.index(sender) == 0 else ASSISTANT
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + text
        else:
            turns.append({"role": role, "content": text})
    return turns if len(speakers) == 2 and any(t["role"] == ASSISTANT for t in turns) else None


def _bucket(key: str) -> int:
    return int(hashlib.sha1(f"{CHITCHAT_SPLIT_SEED}:{key}".encode()).hexdigest(), 16) % 100


def chitchat_splits() -> dict[str, list[list[dict]]]:
    path = _chitchat_path()
    fix = f"reinstall it: {CHITCHAT_PIP}"
    text = read_text(path, "chitchat data", fix)
    with reading(path, "chitchat data", fix):
        raw = json.loads(text)
    splits = {"train": [], "validation": [], "test": []}
    for key in sorted(raw):
        conversation = chitchat_conversation(raw[key])
        if conversation is not None:
            b = _bucket(key)
            splits["train" if b < 80 else "validation" if b < 90 else "test"].append(conversation)
    return splits


def _file_rows(path: Path) -> list[dict]:
    return tables._read_file(path).to_dict("records")


def _rows_by_split(name: str) -> dict[str, list[dict]]:
    if name == "chitchat":
        return {s: [{"messages": c} for c in cs] for s, cs in chitchat_splits().items()}
    path = Path(name).expanduser()
    if path.is_dir():
        files = tables.split_files(path, SUFFIXES, ".jsonl")
        return {split: _file_rows(f) for split, f in files.items()}
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DistillError(f"unsupported chat file {path}; use one of {', '.join(SUFFIXES)}")
        return {"train": _file_rows(path)}
    if tables.looks_like_path(name):
        raise DistillError(f"chat data not found: {path}; pass an existing file or folder")
    dd = tables._load_hub(name)
    return {split: ds.to_list() for split, ds in dd.items()}


def load_conversations(
    cfg: DataConfig, splits: list[str] | None = None, optional: tuple[str, ...] = ()
) -> dict[str, list]:
    """The wanted splits (default: all), and the ``optional`` ones the source has, as checked
    message lists, first rows kept as max_train_samples / max_eval_samples say."""
    if not cfg.name:
        raise DistillError("no data: pass --data NAME_OR_PATH")
    by_split = _rows_by_split(cfg.name)
    wanted = list(splits or by_split)
    wanted += [s for s in optional if s not in wanted and s in by_split]
    out = {}
    for split in wanted:
        if split not in by_split:
            raise DistillError(
                f"split '{split}' not found in {cfg.name}; available splits: {', '.join(by_split)}"
            )
        limit = cfg.max_train_samples if split == cfg.train_split else cfg.max_eval_samples
        rows = by_split[split][:limit] if limit is not None else by_split[split]
        out[split] = [as_messages(r, f"{split} row {i}") for i, r in enumerate(rows)]
        if not out[split]:
            raise DistillError(f"split '{split}' of {cfg.name} is empty")
    return out


# ---------------------------------------------------------------- rendering and the mask


def chat_template(tokenizer, path: str | None = None) -> str:
    """The template to render with: the file ``data.chat_template`` names, else the model's."""
    if path:
        return read_text(Path(path).expanduser(), "chat template", "pass a Jinja template file")
    if not getattr(tokenizer, "chat_template", None):
        raise DistillError(
            "the model's tokenizer has no chat template; set data.chat_template to a Jinja file"
        )
    return tokenizer.chat_template


def _render(tokenizer, template: str, messages: list[dict], prompt: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
        )
    except Exception as e:  # jinja's TemplateError, or a template raising on a role
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DistillError(
            f"{where}: the chat template cannot render this conversation ({first}); "
            "fix its roles or set data.chat_template"
        ) from None


def render(
    tokenizer, template: str, messages: list[dict], where: str = "conversation", strict=True
):
    """The rendered conversation and the character spans of its assistant turns. A template that
    renders earlier turns differently once later ones follow has no such spans: ``strict``, an
    error; else those turns get none."""
    text = _render(tokenizer, template, messages, False, where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != ASSISTANT:
            continue
        before = _render(tokenizer, template, messages[:i], True, where) if i else ""
        through = _render(tokenizer, template, messages[: i + 1], False, where)
        if not (text.startswith(before) and text.startswith(through)):
            if not strict:
                continue
            raise DistillError(
                f"{where}: the chat template renders earlier turns differently once later ones "
                "follow, so the assistant's tokens cannot be found; set data.train_on: all"
            )
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def _reply_start(offsets, spans, max_length: int) -> int:
    """The first token of the last assistant reply that starts within ``max_length`` tokens: the
    tokens before it are the conversation up to that reply with the generation prompt (the
    assistant's header included), the prompt an on-policy batch samples a reply to. With no
    reply starting in range, the kept length (every kept token is prompt)."""
    starts = [s for s, _ in offsets]
    for a, _ in reversed(spans):
        i = bisect.bisect_left(starts, a)
        if i < min(len(starts), max_length):
            return i
    return min(len(starts), max_length)


def encode(tokenizer, template: str, messages, max_length: int, train_on: str, where: str):
    """Token ids, attention mask, ``assistant_mask`` (1: a token the loss reads) and
    ``reply_start`` (where the last assistant reply begins, whatever ``train_on`` says) of one
    conversation, and whether it was truncated."""
    text, spans = render(tokenizer, template, messages, where, strict=train_on != "all")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if train_on == "all":
        mask = [1] * len(ids)
    else:
        mask = [int(any(a <= s < b for a, b in spans)) for s, _ in offsets]
    truncated = len(ids) > max_length
    reply_start = _reply_start(offsets, spans, max_length)
    ids, mask = ids[:max_length], mask[:max_length]
    row = {"input_ids": ids, "attention_mask": [1] * len(ids), "assistant_mask": mask}
    return {**row, "reply_start": reply_start}, truncated


def end_of_turn_ids(tokenizer, template: str) -> list[int]:
    """The token the template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``), when
    that is one added (special) token; else none. Read from a rendered two-turn probe."""
    probe = [{"role": "user", "content": "hi"}, {"role": ASSISTANT, "content": "ok"}]
    try:
        text = _render(tokenizer, template, probe, False, "probe")
    except DistillError:
        return []
    closing = text.rstrip()
    at = closing.rfind("ok")
    if at < 0:
        return []
    ids = tokenizer(closing[at + 2 :].strip(), add_special_tokens=False)["input_ids"]
    added = set(tokenizer.get_added_vocab().values())
    return ids if len(ids) == 1 and ids[0] in added else []


def encode_split(tokenizer, template, conversations, max_length, train_on, split: str):
    """A split as a Dataset of encoded conversations, with counts: (dataset, truncated, empty);
    a conversation whose assistant tokens were all cut off is dropped."""
    rows, truncated, empty = [], 0, 0
    for i, messages in enumerate(conversations):
        row, cut = encode(tokenizer, template, messages, max_length, train_on, f"{split} row {i}")
        truncated += cut
        if not any(row["assistant_mask"]):
            empty += 1
            continue
        rows.append(row)
    if not rows:
        raise DistillError(
            f"split '{split}': no conversation keeps an assistant token within "
            f"data.max_length={max_length}; raise it"
        )
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    return datasets.Dataset.from_dict(columns), truncated, empty

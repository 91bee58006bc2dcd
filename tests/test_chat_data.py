"""Chat data: formats read as messages, two chat templates, the assistant-only mask, bad rows."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
from conftest import make_bpe_tokenizer

from distill_cli.data import chat
from distill_cli.errors import DistillError
from distill_cli.recipe import DataConfig

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "<|begin_of_text|>{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip
TEMPLATES = {"chatml": (CHATML, "<|im_end|>"), "llama3": (LLAMA3, "<|eot_id|>")}
TALK = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the movie was good"},
    {"role": "assistant", "content": "the acting was great"},
    {"role": "user", "content": "and the plot?"},
    {"role": "assistant", "content": "a dull film"},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = make_bpe_tokenizer(tmp_path_factory.mktemp("chat-tok"))
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    return tok


def assistant_text(tokenizer, row) -> str:
    ids = [i for i, m in zip(row["input_ids"], row["assistant_mask"], strict=True) if m]
    return tokenizer.decode(ids)


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_mask_holds_each_assistant_turn_and_its_end_of_turn(tokenizer, name):
    template, end = TEMPLATES[name]
    row, cut = chat.encode(tokenizer, template, TALK, 512, "assistant", "talk")
    assert not cut and len(row["input_ids"]) == len(row["assistant_mask"])
    assert assistant_text(tokenizer, row) == f"the acting was great{end}a dull film{end}"
    # every other token is left out: the system prompt, the user's turns, the headers
    everything = tokenizer.decode(row["input_ids"])
    assert "the movie was good" in everything and "be brief" in everything


@pytest.mark.parametrize("name", TEMPLATES)
def test_train_on_all_reads_every_token(tokenizer, name):
    row, _ = chat.encode(tokenizer, TEMPLATES[name][0], TALK, 512, "all", "talk")
    assert all(row["assistant_mask"])


def test_truncation_cuts_the_mask_with_the_ids(tokenizer):
    row, cut = chat.encode(tokenizer, CHATML, TALK, 12, "assistant", "talk")
    assert cut and len(row["input_ids"]) == len(row["assistant_mask"]) == 12


def test_a_template_file_replaces_the_models(tokenizer, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(LLAMA3)
    assert chat.chat_template(tokenizer, str(path)) == LLAMA3
    tokenizer.chat_template = None
    with pytest.raises(DistillError, match="no chat template; set data.chat_template"):
        chat.chat_template(tokenizer)


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"messages": TALK[1:3]}, TALK[1:3]),
        ({"prompt": "hi", "completion": "hello"},
         [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        ({"prompt": TALK[:2], "completion": [TALK[2]]}, TALK[:3]),
        ({"instruction": "sum", "input": "2 2", "output": "4"},
         [{"role": "user", "content": "sum\n\n2 2"}, {"role": "assistant", "content": "4"}]),
        ({"instruction": "greet", "input": "", "output": "hello"},
         [{"role": "user", "content": "greet"}, {"role": "assistant", "content": "hello"}]),
    ],
)  # fmt: skip
def test_each_format_reads_as_messages(row, expected):
    assert chat.as_messages(row, "row 0") == expected


@pytest.mark.parametrize(
    "row, message",
    [
        ({"messages": [TALK[1]]}, "row 3: the conversation has no assistant turn"),
        ({"messages": [TALK[1], {"role": "assistant", "content": " "}]}, "message 1 (assistant) is empty"),
        ({"messages": "hello"}, "messages is str, not a list"),
        ({"text": "hello"}, "no conversation found (columns text)"),
        ({"messages": [{"content": "x"}]}, "message 0 is not a {role, content} object"),
    ],
)  # fmt: skip
def test_bad_rows_are_one_line_naming_the_row(row, message):
    with pytest.raises(DistillError) as e:
        chat.as_messages(row, "row 3")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_role_the_template_cannot_render_is_one_line(tokenizer):
    talk = [{"role": "narrator", "content": "once"}, {"role": "assistant", "content": "upon"}]
    with pytest.raises(DistillError, match="train row 2: the chat template cannot render"):
        chat.encode(tokenizer, LLAMA3, talk, 64, "assistant", "train row 2")


def test_files_and_folders_of_each_format(tmp_path):
    rows = [{"messages": TALK[1:3]}, {"messages": TALK[1:5]}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame([{"prompt": "hi", "completion": "hello"}]).to_parquet(
        tmp_path / "validation.parquet"
    )
    got = chat.load_conversations(DataConfig(name=str(tmp_path)))
    assert got["train"] == [TALK[1:3], TALK[1:5]]
    assert got["validation"][0][1] == {"role": "assistant", "content": "hello"}
    limited = chat.load_conversations(
        DataConfig(name=str(tmp_path), max_train_samples=1), ["train"]
    )
    assert limited == {"train": [TALK[1:3]]}
    with pytest.raises(DistillError, match="split 'test' not found"):
        chat.load_conversations(DataConfig(name=str(tmp_path)), ["test"])


def test_encode_split_drops_conversations_cut_before_the_assistant(tokenizer):
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    ds, truncated, empty = chat.encode_split(tokenizer, CHATML, [TALK, long], 64, "assistant", "t")
    assert (len(ds), truncated, empty) == (1, 2, 1)
    with pytest.raises(DistillError, match="no conversation keeps an assistant token"):
        chat.encode_split(tokenizer, CHATML, [long], 64, "assistant", "t")


def test_chitchat_turns_alternate_between_two_speakers():
    entry = {"messages": [
        [{"text": "Hello", "sender": "a"}, {"text": "how are you?", "sender": "a"}],
        [{"text": "good", "sender": "b"}],
        [{"text": "nice", "sender": "a"}],
    ]}  # fmt: skip
    assert chat.chitchat_conversation(entry) == [
        {"role": "user", "content": "Hello\nhow are you?"},
        {"role": "assistant", "content": "good"},
        {"role": "user", "content": "nice"},
    ]
    assert chat.chitchat_conversation({"messages": [[{"text": "alone", "sender": "a"}]]}) is None


@pytest.mark.skipif(
    importlib.util.find_spec("chitchat_dataset") is None, reason="chitchat-dataset not installed"
)
def test_built_in_chitchat_splits_by_conversation():
    splits = chat.chitchat_splits()
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 3217, "validation": 411, "test": 389}
    first = splits["train"][0]
    assert first[0]["role"] == "user" and any(m["role"] == "assistant" for m in first)
    assert (
        chat.load_conversations(DataConfig(name="chitchat", max_eval_samples=5), ["test"])["test"]
        == splits["test"][:5]
    )


def test_a_template_that_rewrites_earlier_turns_needs_train_on_all(tokenizer):
    """A template that states the number of turns up front renders every prefix differently:
    the assistant's tokens cannot be found, and train_on: all still reads the conversation."""
    counting = "{{ messages | length }} turns\n" + CHATML
    with pytest.raises(DistillError, match="train row 0: .* set data.train_on: all"):
        chat.encode(tokenizer, counting, TALK, 512, "assistant", "train row 0")
    row, _ = chat.encode(tokenizer, counting, TALK, 512, "all", "train row 0")
    assert all(row["assistant_mask"]) and tokenizer.decode(row["input_ids"]).startswith("5 turns")

import datasets
import torch

from distill_cli.data.batching import TEACHER_PREFIX, PadCollator, split_inputs, tokenize
from distill_cli.models.load import load_tokenizer


def test_batches_pad_to_their_longest_row_not_max_length(tiny_tokenizer_dir):
    tok = load_tokenizer(str(tiny_tokenizer_dir), "model")
    ds = datasets.Dataset.from_dict(
        {"text": ["good", "the film was very dull", "bad"], "label": [1, 0, 0]}
    )
    ds, truncated = tokenize(ds, tok, ["text"], max_length=64)
    assert truncated == 0
    rows = [ds[i] for i in range(3)]
    batch = PadCollator(tok.pad_token_id)(rows)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (3, longest) < (3, 64)
    assert batch["attention_mask"].sum(1).tolist() == [len(r["input_ids"]) for r in rows]
    assert (batch["input_ids"][0, len(rows[0]["input_ids"]) :] == tok.pad_token_id).all()
    assert batch["labels"].dtype == torch.long


def test_truncation_is_counted(tiny_tokenizer_dir):
    tok = load_tokenizer(str(tiny_tokenizer_dir), "model")
    ds = datasets.Dataset.from_dict({"text": ["the film " * 20, "good"], "label": [0, 1]})
    ds, truncated = tokenize(ds, tok, ["text"], max_length=8)
    assert truncated == 1 and max(len(x) for x in ds["input_ids"]) == 8


def test_teacher_columns_pad_with_the_teacher_pad_id():
    rows = [
        {"input_ids": [5, 6], "teacher_input_ids": [7]},
        {"input_ids": [5], "teacher_input_ids": [7, 8, 9]},
    ]
    batch = PadCollator(pad_id=0, teacher_pad_id=99)(rows)
    assert batch["teacher_input_ids"].tolist() == [[7, 99, 99], [7, 8, 9]]
    student, teacher = split_inputs(batch)
    assert (
        set(student) == {"input_ids"}
        and teacher["input_ids"] is batch[TEACHER_PREFIX + "input_ids"]
    )

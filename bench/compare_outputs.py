"""Compare two bench/same_outputs.sh folders: every metrics.jsonl record (timings left out) and
every evaluation.json model's metrics must be identical. With --qa-data DIR, write the tiny
synthetic QA data those runs use instead."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TIMING = ("runtime", "per_s", "latency", "throughput", "speedup", "time", "_s")
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
PLACES = ["paris", "tokyo", "lima", "oslo", "cairo", "delhi", "quito", "rome"]


def write_qa_data(folder: Path) -> None:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, first in (("train", 64, 0), ("validation", 24, 1000)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                who, where = rng.choice(NAMES), rng.choice(PLACES)
                context = (
                    f"yesterday {who} flew to {where} for a meeting . "
                    "the weather there was mild and the food was good ."
                )
                start = context.index(f" {where} ") + 1
                row = {"id": f"q{first + i}", "question": f"where did {who} fly ?",
                       "context": context, "answers": {"text": [where], "answer_start": [start]}}  # fmt: skip
                f.write(json.dumps(row) + "\n")


def records(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]


def metrics(path: Path) -> dict:
    return {k: v.get("metrics") for k, v in json.loads(path.read_text())["models"].items()}


def main(before: Path, after: Path) -> int:
    differ = 0
    for pattern, read in (("metrics.jsonl", records), ("evaluation.json", metrics)):
        for path in sorted(before.rglob(pattern)):
            same = read(path) == read(after / path.relative_to(before))
            differ += not same
            print(f"{path.relative_to(before)}: {'identical' if same else 'DIFFERENT'}")
    print("all identical" if not differ else f"{differ} files differ")
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1] == "--qa-data":
        write_qa_data(Path(sys.argv[2]))
    else:
        sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))

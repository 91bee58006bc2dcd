"""Batch-1 latency and peak memory at long input lengths (512 to 4,096 tokens), where
efficient-attention students differ from full attention: evaluate's figures for long data."""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

LENGTHS = (512, 1024, 2048, 4096)
REPEATS = 3  # timed calls per length, after one untimed


def lengths_for(max_length: int) -> list[int]:
    """The lengths a run reading ``max_length`` tokens is measured at: none for short data."""
    if max_length <= LENGTHS[0]:
        return []
    return [n for n in LENGTHS if n <= max_length]


def input_of_length(tokenizer, texts: list[str], length: int) -> dict:
    """One input of exactly ``length`` tokens (special tokens included): the texts joined, and
    repeated when they are shorter."""
    text = " ".join(t for t in texts if t) or "text"
    while True:
        batch = tokenizer(text, truncation=True, max_length=length, return_tensors="pt")
        if batch["input_ids"].shape[1] >= length:
            return dict(batch)
        text = f"{text} {text}"


def _rss_bytes() -> tuple[int, int]:
    """(current, peak since the last reset) resident memory of this process, in bytes."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


def peak_memory_mb(call: Callable[[], object], device: torch.device) -> float | None:
    """Memory one call takes above what was in use before it, in MB: CUDA's peak allocation, or
    on Linux the peak resident memory (reset before the call; freed heap returned first).
    None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) := the current RSS
        before, _ = _rss_bytes()
    except OSError:  # not Linux with glibc and procfs
        return None
    call()
    return (_rss_bytes()[1] - before) / 2**20


def measure(
    call: Callable[[dict], object],
    tokenizer,
    texts: list[str],
    lengths: list[int],
    device: torch.device | None = None,
) -> dict[str, dict]:
    """For each length: the median batch-1 latency (ms) of ``call(inputs)`` and its peak memory
    (MB), keyed by the length as a string (JSON)."""
    device = device or torch.device("cpu")
    figures = {}
    with torch.inference_mode():
        for length in lengths:
            batch = {k: v.to(device) for k, v in input_of_length(tokenizer, texts, length).items()}
            call(batch)  # warm-up
            times = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                call(batch)
                times.append(time.perf_counter() - start)
            memory = peak_memory_mb(lambda b=batch: call(b), device)
            figures[str(length)] = {
                "latency_ms": 1000 * statistics.median(times),
                "peak_memory_mb": None if memory is None else round(memory, 1),
            }
    return figures

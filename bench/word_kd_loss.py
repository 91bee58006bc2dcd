"""Naive vs fused GLMD word-level KD loss: peak memory and time of one forward+backward.

    python bench/word_kd_loss.py                  # CPU fp32, B=16 L=128 V=30522 H=384, ~1-2 min
    python bench/word_kd_loss.py --device cuda --dtype bf16
    python bench/word_kd_loss.py --chunk-size 274  # tune: fused chunk instead of word_kl's default
    python bench/word_kd_loss.py --standardize     # both variants with z-scored logits
    python bench/word_kd_loss.py --divergence jsd  # another divergence (default forward_kl)

With CUDA available, the default run also reports cuda bf16 after the CPU rows; the final line is
for the first (--device, --dtype) and its no-padding case.

Each variant runs in a fresh subprocess. Peak memory is the growth over the step with the inputs
already allocated: ru_maxrss after it minus the RSS just before it on CPU, max_memory_allocated minus
memory_allocated on CUDA. Time is the median of --repeats steps after one warm-up, naive and fused
alternating in one process so that other load on the machine hits both alike. The headline is the
no-padding case; a second row masks ~20% of positions (lengths drawn uniformly in [0.6L, L]).
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from harness import sync

from distill_cli.training.word_kd import DIVERGENCES, word_kl, word_kl_naive

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = {"naive": word_kl_naive, "fused": word_kl}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make_inputs(args, pad: float, device, dtype):
    g = torch.Generator().manual_seed(0)
    b, n, v, h = args.batch, args.length, args.vocab, args.hidden

    def randn(*shape, grad=False):
        x = (torch.randn(*shape, generator=g) * 0.5).to(device=device, dtype=dtype)
        return x.requires_grad_(grad)

    h_s, w_s, b_s = randn(b, n, h, grad=True), randn(v, h, grad=True), randn(v, grad=True)
    h_t, w_t, b_t = randn(b, n, h), randn(v, h), randn(v)
    lengths = torch.randint(int(n * (1 - 2 * pad)), n + 1, (b,), generator=g) if pad else None
    mask = None if lengths is None else torch.arange(n)[None] < lengths[:, None]
    mask = None if mask is None else mask.to(device)
    kwargs = dict(mask=mask, temperature=15.0, b_s=b_s, b_t=b_t, standardize=args.standardize)
    kwargs["divergence"] = args.divergence
    return (h_s, w_s, h_t, w_t), kwargs


def step(fn, tensors, kwargs):
    loss = fn(*tensors, **kwargs)
    loss.backward()
    for x in (tensors[0], tensors[1], kwargs["b_s"]):
        x.grad = None
    return loss.item()


def child(args) -> dict:
    """Run in a fresh process: the peak memory of one variant's step, or both variants' times."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    small = argparse.Namespace(
        batch=1, length=4, vocab=64, hidden=8, standardize=args.standardize, divergence="forward_kl"
    )
    if args.chunk_size:
        VARIANTS["fused"] = functools.partial(word_kl, chunk_size=args.chunk_size)
    for fn in VARIANTS.values():  # start thread pools / kernels before measuring
        step(fn, *make_inputs(small, 0.0, device, dtype))
    tensors, kwargs = make_inputs(args, args.pad, device, dtype)
    sync(device)
    if args.variant != "time":
        fn = VARIANTS[args.variant]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            loss = step(fn, tensors, kwargs)
            peak = torch.cuda.max_memory_allocated() - before
        else:
            before = rss_bytes()
            loss = step(fn, tensors, kwargs)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        return dict(loss=loss, peak=peak)
    # alternate the variants so that load from other processes hits both alike
    times = {name: [] for name in VARIANTS}
    for i in range(args.repeats + 1):
        for name, fn in VARIANTS.items():
            sync(device)
            start = time.perf_counter()
            step(fn, tensors, kwargs)
            sync(device)
            if i:  # the first round is the warm-up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_child(args, variant: str, pad: float) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--pad", str(pad)]
    for name in ("device", "dtype", "repeats", "batch", "length", "vocab", "hidden", "chunk_size"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name) or 0)]
    cmd += ["--standardize"] if args.standardize else []
    cmd += ["--divergence", args.divergence]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--chunk-size", type=int, default=0, help="fused chunk (0: word_kl's default)")
    p.add_argument("--standardize", action="store_true", help="z-score the logits (both variants)")
    p.add_argument("--divergence", default="forward_kl", choices=DIVERGENCES)
    p.add_argument("--variant", choices=[*VARIANTS, "time"], help=argparse.SUPPRESS)
    p.add_argument("--pad", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return

    headline = report(args)
    if torch.cuda.is_available() and args.device == "cpu":
        report(argparse.Namespace(**{**vars(args), "device": "cuda", "dtype": "bf16"}))
    naive, fused = headline
    print(
        f"fused/naive: peak memory {fused['peak'] / naive['peak']:.2f}x, "
        f"time {fused['time'] / naive['time']:.2f}x (targets <= 0.10x, <= 0.80x)"
    )


def report(args) -> tuple[dict, dict]:
    """Print both padding cases for one device/dtype; return the no-padding (naive, fused)."""
    mib = 2**20
    print(
        f"word_kl fwd+bwd on {args.device} {args.dtype}: B={args.batch} L={args.length} "
        f"V={args.vocab} H={args.hidden}, chunk {args.chunk_size or 'default'}, T=15"
        f"{', standardized' if args.standardize else ''}, {args.divergence}, "
        f"median of {args.repeats} after a warm-up"
    )
    for pad, label in ((0.2, "~20% padding"), (0.0, "no padding")):
        naive, fused = run_child(args, "naive", pad), run_child(args, "fused", pad)
        times = run_child(args, "time", pad)
        naive["time"], fused["time"] = times["naive"], times["fused"]
        for name, r in (("naive", naive), ("fused", fused)):
            print(
                f"  {label:13} {name}: peak {r['peak'] / mib:8.1f} MiB  time {r['time'] * 1e3:8.1f} ms"
                f"  loss {r['loss']:.6f}"
            )
        print(
            f"  {label:13} fused/naive: peak memory {fused['peak'] / naive['peak']:.3f}x, "
            f"time {fused['time'] / naive['time']:.3f}x"
        )
    return naive, fused


if __name__ == "__main__":
    main()

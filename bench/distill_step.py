"""One GLMD pre-training distillation step, the project's way vs the naive way: real tokens/s, FLOP/s.

    python bench/distill_step.py --steps 5             # CPU fp32 (+ CUDA bf16 when there is a GPU)
    python bench/distill_step.py --steps 2 --warmup 1  # smoke run

A step is what pretrain-distill does per batch: teacher forward, student forward, loss, backward,
gradient clipping, AdamW step. Both ways use the same models and optimizer settings: teacher the
packaged all-MiniLM-L6-v2 (BertModel, 6 layers, d=384, V=30522), student the teacher truncated to 3
layers, built by ``stages.build_pretrain`` from ``recipes/glmd-pretrain.yaml`` (GLMD word_kl at
T=15 on logits from the input embeddings, 15% masking), batch 16, max length 128, built-in
rotten_tomatoes texts.

- project: what ``train.setup`` builds (packed blocks with dynamic padding, fused AdamW, the
  Accelerator) and the step of ``train.fit``'s loop (``train.train_step`` → ``heads.forward`` +
  fused ``word_kl``); the recipe's warmup is set to 0, so both ways step at the peak lr.
- naive: each text its own row padded to max length (``padding="max_length"``), full [B, L, V] word
  logits of teacher and student (``word_kl_naive`` over the non-pad positions), plain AdamW.

Speed is real (non-pad) tokens per second, ``attention_mask.sum()`` per batch: the median over
``--steps`` timed steps after ``--warmup`` steps, the two ways alternating in one process so that
other load on the machine hits both alike. The CPU comparison runs in a subprocess with CUDA hidden
(fp32, mixed precision "no"); with a GPU, a second subprocess runs both ways in bf16 on CUDA.

FLOP/s: the FLOPs per real token (formula printed) times the project's tokens/s, against this
machine's matmul peak (median of a few square matmuls: fp32 2048³ on CPU, bf16 8192³ on CUDA),
measured in the same process before every round of steps, so that each step is set against the
peak of the same moment (on a shared VM the peak drifts); the fraction printed is the median over
rounds. On CUDA also against ``--peak-tflops`` (989: H100 bf16 dense).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from harness import forever, packaged_recipe, project_step, sync
from torch.utils.data import DataLoader

from distill_cli.data import text as text_data
from distill_cli.training.allocator import keep_freed_memory
from distill_cli.training.train import optimizer_groups, setup
from distill_cli.training.word_kd import word_kl_naive

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "glmd-pretrain.yaml"
PEAK = {"cpu": (torch.float32, 2048), "cuda": (torch.bfloat16, 8192)}  # matmul dtype and size


# ---------------------------------------------------------------- setup


def naive_step(recipe, b, student, device, bf16: bool):
    """The way it is usually written: pad every text to max_length, materialise all logits."""
    cfg, phase = recipe.train, recipe.phases[0]
    (temperature,) = (params.temperature for params in phase.terms.values())  # word_kl's
    tok, max_length = b.tokenizer, recipe.data.max_length
    ds = text_data.load_texts(recipe.data).map(
        lambda x: tok(x["text"], padding="max_length", truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["text"],
    )
    ds.set_format("torch")
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = forever(DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=generator))
    student = student.to(device).train()
    teacher = b.teacher  # already on the device, frozen, in eval mode
    w_s, w_t = student.get_input_embeddings().weight, teacher.get_input_embeddings().weight
    optimizer = torch.optim.AdamW(
        optimizer_groups(student, cfg.weight_decay), lr=cfg.learning_rate
    )  # foreach/for-loop default, not fused
    masker = text_data.TokenMasker(tok, seed=cfg.seed)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def step():
        batch = {k: v.to(device) for k, v in next(batches).items()}
        mask = batch["attention_mask"]
        batch["input_ids"], _ = masker(batch["input_ids"], mask, phase.mlm_probability)
        with autocast():
            with torch.no_grad():
                h_t = teacher(**batch).last_hidden_state
            h_s = student(**batch).last_hidden_state
            loss = word_kl_naive(h_s, w_s, h_t, w_t, mask=mask, temperature=temperature)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        return int(mask.sum()), mask.numel(), loss.item()

    return step


# ---------------------------------------------------------------- measuring


def time_steps(steps: dict, warmup: int, n: int, device, peak=None) -> dict:
    """Median real tokens/s and step time of each way, the ways alternating step by step.

    With ``peak`` (a function returning FLOP/s), the matmul peak is measured before every round
    too, so each step can be set against the peak of the same moment.
    """
    rows = {name: [] for name in steps}
    peaks = []
    for i in range(warmup + n):
        if peak is not None and i >= warmup:
            peaks.append(peak())
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            real, positions, loss = fn()
            sync(device)
            if i >= warmup:
                rows[name].append((real, positions, time.perf_counter() - start, loss))
    result = {
        name: {
            "tokens_per_s": statistics.median(r / t for r, _, t, _ in rs),
            "tokens_per_s_rounds": [r / t for r, _, t, _ in rs],
            "step_s": statistics.median(t for _, _, t, _ in rs),
            "real_tokens": statistics.median(r for r, _, _, _ in rs),
            "real_share": sum(r for r, _, _, _ in rs) / sum(p for _, p, _, _ in rs),
            "loss": rs[-1][3],
        }
        for name, rs in rows.items()
    }
    return {"ways": result, "peaks": peaks}


def matmul_peak(device, dtype, n: int, reps: int) -> float:
    """FLOP/s of an n×n @ n×n matmul: median of ``reps`` after one warm-up."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    c = torch.empty(n, n, device=device, dtype=dtype)
    times = []
    for i in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def non_embedding_params(model) -> int:
    """Encoder parameters (weights, biases, LayerNorms); embeddings and pooler left out."""
    return sum(
        p.numel()
        for name, p in model.base_model.named_parameters()
        if not name.startswith(("embeddings.", "pooler."))
    )


def flop_counts(teacher, student, context: int) -> dict:
    v, d_t = teacher.get_input_embeddings().weight.shape
    d_s = student.get_input_embeddings().weight.shape[1]
    n_t, n_s = non_embedding_params(teacher), non_embedding_params(student)
    # Not counted: attention scores and weighted values, 4·context·d per layer per token forward.
    l_t, l_s = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    attention = 4 * context * (l_t * d_t + 3 * l_s * d_s)
    per_token = 2 * n_t + 6 * n_s + 2 * v * d_t + 6 * v * d_s
    return dict(n_t=n_t, n_s=n_s, v=v, d_t=d_t, d_s=d_s, per_token=per_token, attention=attention)


def child(args) -> dict:
    """Run in a fresh process: both ways on one device, and that device's matmul peak."""
    cuda = args.child == "cuda"
    # train.run's allocator setting; process-wide, so both ways run under it
    tuned = keep_freed_memory()
    recipe = packaged_recipe(RECIPE, args.batch_size, args.max_length, "bf16" if cuda else "no")
    with tempfile.TemporaryDirectory() as out:
        state = setup(recipe, Path(out) / "run", stage="pretrain")
        b, device = state.built, state.accelerator.device
        naive_student = copy.deepcopy(b.student)  # the same starting weights for both ways
        flops = flop_counts(b.teacher, b.student, recipe.data.max_length)
        project = project_step(state)
        naive = naive_step(recipe, b, naive_student, device, bf16=cuda)
        dtype, n = PEAK[device.type]
        matmul_peak(device, dtype, n, 1)  # warm-up
        result = time_steps(
            {"project": project, "naive": naive}, args.warmup, args.steps, device,
            peak=lambda: matmul_peak(device, dtype, n, args.peak_reps),
        )  # fmt: skip
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    per_token = flops["per_token"]
    rounds = result["ways"]["project"]["tokens_per_s_rounds"]
    fractions = [t * per_token / p for t, p in zip(rounds, result["peaks"], strict=True)]
    return dict(
        allocator="glibc thresholds raised (train.run's setting)" if tuned else "default",
        ways=result["ways"],
        flops=flops,
        peak=statistics.median(result["peaks"]),
        peak_range=[min(result["peaks"]), max(result["peaks"])],
        fraction=statistics.median(fractions),
        peak_n=n,
        device=name,
    )


def run_child(args, kind: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for name in ("steps", "warmup", "batch_size", "max_length", "peak_reps"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ)
    if kind == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # make_accelerator then picks the CPU
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{kind} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def print_ways(r: dict) -> None:
    how = {
        "project": "packed blocks, dynamic padding; compute_loss (fused word_kl); fused AdamW",
        "naive": "one text per row padded to max length; full logits + word_kl_naive; AdamW",
    }
    for name, w in r["ways"].items():
        print(
            f"  {name:7} {w['tokens_per_s']:10,.0f} real tokens/s  {w['step_s']:7.3f} s/step  "
            f"{w['real_tokens']:6,.0f} real tokens/step ({w['real_share']:.0%} of positions)  "
            f"loss {w['loss']:.3f}   [{how[name]}]"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each way")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each way first")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--peak-reps", type=int, default=5, help="matmuls timed for the peak")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="CUDA bf16 dense peak")
    p.add_argument("--child", choices=["cpu", "cuda"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    print(
        f"GLMD pretrain-distill step: teacher all-MiniLM-L6-v2 (6 layers), student 3 layers, "
        f"batch {args.batch_size}, max length {args.max_length}, word_kl T=15, 15% masking; "
        f"median of {args.steps} steps after {args.warmup} warm-up, the two ways alternating",
        flush=True,
    )
    cpu = run_child(args, "cpu")
    f = cpu["flops"]
    print(f"CPU fp32 ({cpu['device']}; allocator: {cpu['allocator']}):")
    print_ways(cpu)
    print(
        "FLOPs per real token = 2·N_t + 6·N_s + 2·V·d_t + 6·V·d_s\n"
        f"  = 2·{f['n_t']:,} + 6·{f['n_s']:,} + 2·{f['v']}·{f['d_t']} + 6·{f['v']}·{f['d_s']}"
        f" = {f['per_token'] / 1e6:.1f} MFLOP\n"
        "  N = non-embedding parameters (encoder layers: weights, biases, LayerNorms; word, "
        "position and type embeddings and the pooler left out). The fused word_kl computes the\n"
        "  student's gradients in its forward: logits, dL/dH, dL/dW = 6·V·d_s. Not counted: "
        f"attention scores/values, 4·{args.max_length}·d per layer per token forward "
        f"(+{f['attention'] / f['per_token']:.1%})"
    )
    achieved = cpu["ways"]["project"]["tokens_per_s"] * f["per_token"]
    n = cpu["peak_n"]
    low, high = (x / 1e9 for x in cpu["peak_range"])
    print(
        f"fp32 matmul peak ({n}x{n} @ {n}x{n}, median of {args.peak_reps}, measured before every "
        f"round of steps): median {cpu['peak'] / 1e9:.1f} GFLOP/s (rounds: {low:.1f}-{high:.1f}); "
        f"project achieved {achieved / 1e9:.1f} GFLOP/s"
    )

    if torch.cuda.is_available():
        gpu = run_child(args, "cuda")
        g = gpu["ways"]
        print(f"CUDA bf16 ({gpu['device']}):")
        print_ways(gpu)
        flops = g["project"]["tokens_per_s"] * gpu["flops"]["per_token"]
        n = gpu["peak_n"]
        print(
            f"  project/naive real tokens/s: "
            f"{g['project']['tokens_per_s'] / g['naive']['tokens_per_s']:.1f}x; "
            f"achieved {flops / 1e12:.2f} TFLOP/s: MFU {flops / (args.peak_tflops * 1e12):.3f} "
            f"of --peak-tflops {args.peak_tflops:g}, {flops / gpu['peak']:.3f} of measured bf16 "
            f"matmul peak {gpu['peak'] / 1e12:.0f} TFLOP/s ({n}x{n} @ {n}x{n})"
        )

    ways = cpu["ways"]
    ratio = ways["project"]["tokens_per_s"] / ways["naive"]["tokens_per_s"]
    print(f"project/naive real tokens/s: {ratio:.1f}x (target >= 4x)")
    print(
        f"achieved/peak fp32 FLOP/s: {cpu['fraction']:.2f} (target >= 0.60; median over rounds "
        "of each project step's FLOP/s against the peak measured just before it)"
    )


if __name__ == "__main__":
    main()

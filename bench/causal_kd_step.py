"""Chat KD step, the project's vs TRL's GKDTrainer (off-policy, forward KL): tokens/s, peak memory.

    python bench/causal_kd_step.py                          # CPU fp32, V=32,000, a few minutes
    OMP_NUM_THREADS=1 python bench/causal_kd_step.py        # one thread: steadier on a busy CPU
    python bench/causal_kd_step.py --vocab 128256           # a Llama-3-sized vocabulary
    python bench/causal_kd_step.py --steps 2 --warmup 1     # smoke run
    python bench/causal_kd_step.py --device cuda            # bf16 autocast (not yet run on a GPU)

Needs trl (``pip install trl``), for this bench only: distill_cli never imports it.

Models: a random Llama teacher (``--hidden``, ``--layers``, ``--vocab``; untied head) saved with
a word-level tokenizer of exactly ``--vocab`` tokens and a ChatML template, and the student the
project builds from it by ``student.init: truncate`` to ``--layers / 2`` layers. TRL gets the very
same teacher object and a copy of that student taken before any step, so both start from the
same weights. Data: random-word conversations (system, then two user/assistant turns) rendered by
the project's chat pipeline to at most ``--max-length`` tokens, about half of them assistant
tokens; batches of ``--batch-size`` from the project's own loader (dynamic padding).

- project: ``recipes/chat.yaml`` (word_kl, forward_kl, T=1, on the positions that predict an
  assistant token) with this teacher, data and sizes, mixed precision "no" on CPU (bf16 on CUDA),
  warmup 0; ``train.setup`` builds everything (fused AdamW, the Accelerator, the allocator setting)
  and the step is ``train.train_step`` as ``train.fit`` calls it (forward teacher + student, fused
  chunked ``word_kl`` that never materialises [tokens, V] logits, backward, clip to 1.0, step).
- TRL: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0`` (never generates: off-policy) and
  ``seq_kd=False``, ``beta=0``. In ``generalized_jsd_loss`` beta=0 is special-cased to
  ``F.kl_div(student_log_probs, teacher_log_probs, log_target=True)`` = sum p_t (log p_t - log p_s)
  = KL(p_teacher || p_student), the project's ``forward_kl``; beta=1 is the reverse KL. Its
  ``compute_loss`` passes no temperature to the loss (the default 1.0): T=1, as the recipe's. The
  step is what ``Trainer._run_epoch`` does per batch without accumulation: ``get_batch_samples``'s
  token count, ``trainer.training_step`` (full-vocabulary logits of both models,
  ``generalized_jsd_loss``, backward), ``_clip_grad_norm`` (1.0), ``optimizer.step``,
  ``lr_scheduler.step``, ``model.zero_grad``. Same settings: fp32 on CPU (bf16 on CUDA),
  ``optim="adamw_torch_fused"``, the recipe's lr 5e-5 and weight decay 0.01 (neither on biases and
  norms, as the project), no gradient checkpointing, dropout off, no eval, no logging, report_to
  none. TRL's labels are the input ids with -100 off the assistant tokens: after GKD's shift they
  select exactly the project's ``loss_mask`` positions, and both losses are the mean over those
  positions, so the first step's losses (same weights, same batch) must agree: printed as a check.

Both see the same batches (same ids, attention mask, loss positions), so the ratio of tokens/s is
the same whichever tokens are counted; the rows give loss (assistant) tokens/s and real
(non-pad) tokens/s. Time: the median over ``--steps`` steps after ``--warmup``, the two
alternating step by step in one process so other load on the machine hits both alike (that process
runs under the project's allocator setting, made by ``train.setup``). Peak memory: each tool in
its own fresh process, over ``--mem-steps`` steps from the first (optimizer state included):
on CPU the peak RSS (VmHWM, reset through /proc/self/clear_refs just before the first step) minus
the RSS then, after gc and glibc's malloc_trim(0), so that heap freed during setup (the project's
allocator setting keeps it) is not room the step reuses uncounted; on CUDA max_memory_allocated
minus memory_allocated before the first step. The project's process has its allocator setting
(glibc keeps freed memory), TRL's the default.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import forever, sync

from distill_cli.recipe import load_recipe
from distill_cli.training import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "chat.yaml"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]
IGNORE = -100


# ---------------------------------------------------------------- models and data


def make_work(work: Path, args) -> None:
    """Tokenizer + random Llama teacher in work/teacher, conversations in work/data/train.jsonl."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    words = [f"w{i}" for i in range(args.vocab - len(SPECIAL))]
    vocab = {t: i for i, t in enumerate([*SPECIAL, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML
    assert len(tok) == args.vocab, (len(tok), args.vocab)
    teacher = work / "teacher"
    tok.save_pretrained(teacher)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=max(512, args.max_length),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf_logging.disable_progress_bar()
    LlamaForCausalLM(config).save_pretrained(teacher)

    # system 8 words, then two turns: about half of the positions predict an assistant token
    rng = random.Random(0)
    budget = args.max_length - 3 * 5 - 8  # each message adds <|im_start|>, its role, <|im_end|>
    say = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    rows = []
    for _ in range(args.conversations):
        user = [rng.randint(budget // 5, budget // 4) for _ in range(2)]
        reply = [rng.randint(budget // 4, (budget - sum(user)) // 2) for _ in range(2)]
        messages = [{"role": "system", "content": say(8)}]
        for u, a in zip(user, reply, strict=True):
            messages += [
                {"role": "user", "content": say(u)},
                {"role": "assistant", "content": say(a)},
            ]
        rows.append({"messages": messages})
    (work / "data").mkdir()
    (work / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def chat_recipe(work: Path, args):
    return load_recipe(
        RECIPE,
        sets=[
            f"teacher={work / 'teacher'}",
            f"data.name={work / 'data'}",
            f"student.num_layers={args.layers // 2}",
            f"train.batch_size={args.batch_size}",
            f"data.max_length={args.max_length}",
            f"train.mixed_precision='{'bf16' if args.device == 'cuda' else 'no'}'",
            "train.warmup_ratio=0",
        ],
    )


def trl_inputs(batch: dict) -> dict:
    """The project's batch as GKD reads it: labels = the ids where an assistant token is
    predicted, -100 elsewhere; GKD shifts them by one, which gives back ``loss_mask``."""
    ids, loss_mask = batch["input_ids"], batch["loss_mask"].bool()
    labels = torch.full_like(ids, IGNORE)
    labels[:, 1:] = torch.where(loss_mask[:, :-1], ids[:, 1:], IGNORE)
    assert not loss_mask[:, -1].any()
    return {"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels}


def trl_step(recipe, b, student, args, out: Path):
    """GKDTrainer (lmbda=0, beta=0: forward KL) and one step of Trainer's loop per call."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    cfg = recipe.train
    config = GKDConfig(
        output_dir=str(out),
        lmbda=0.0,
        beta=0.0,
        seq_kd=False,
        temperature=1.0,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch_fused",
        lr_scheduler_type="constant",
        bf16=args.device == "cuda",
        fp16=False,
        use_cpu=args.device == "cpu",
        gradient_checkpointing=False,
        disable_dropout=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        seed=cfg.seed,
    )
    dummy = Dataset.from_dict({"messages": [[{"role": "user", "content": "w0"}]]})
    trainer = GKDTrainer(
        model=student,
        teacher_model=b.teacher,
        args=config,
        train_dataset=dummy,
        processing_class=b.tokenizer,
    )
    steps = args.warmup + args.steps + args.mem_steps
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    loader, _ = train.make_train_loader(b, cfg)  # the project's batches, in the project's order
    batches = forever(loader)
    device = trainer.accelerator.device

    def step():
        batch = next(batches)
        inputs = trl_inputs(batch)
        _, num_items = trainer.get_batch_samples(iter([inputs]), 1, device)
        loss = trainer.training_step(model, inputs, num_items)
        if trainer.args.max_grad_norm > 0:
            trainer._clip_grad_norm(model)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        return counts(batch) + (loss.item(),)

    return step


def counts(batch: dict) -> tuple[int, int]:
    return int(batch["loss_mask"].sum()), int(batch["attention_mask"].sum())


def project(state):
    """train.fit's step on what train.setup built, returning (loss tokens, real tokens, loss)."""
    plan, batches = state.plans[0], forever(state.train_loader)

    def step():
        batch = next(batches)
        n = counts(batch)
        loss, _, _ = train.train_step(state, batch, plan)
        return n + (loss.item(),)

    return step


# ---------------------------------------------------------------- measuring


def rss() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def child(args) -> dict:
    work = Path(args.work)
    recipe = chat_recipe(work, args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.child == "trl":  # no train.setup here: TRL's process keeps the default allocator
            set_seed(recipe.train.seed)
            b, _ = train.build(recipe, "task", True, False)
            device = torch.device(args.device)
            b.teacher.to(device).eval().requires_grad_(False)
            steps = {"trl": trl_step(recipe, b, b.student, args, Path(tmp) / "trl")}
        else:
            state = train.setup(recipe, Path(tmp) / "run")
            assert state.word_scale == 1.0, state.word_scale
            device = state.accelerator.device
            steps = {"project": project(state)}
            if args.child == "time":
                student = copy.deepcopy(state.built.student)  # before any step: same weights
                steps["trl"] = trl_step(recipe, state.built, student, args, Path(tmp) / "trl")
        if args.child == "time":
            return time_steps(steps, args.warmup, args.steps, device)
        return peak_memory(next(iter(steps.values())), args.mem_steps, device)


def set_seed(seed: int) -> None:
    from accelerate.utils import set_seed as accelerate_seed

    accelerate_seed(seed)


def peak_memory(step, n: int, device) -> dict:
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        losses = [step()[2] for _ in range(n)]
        return {"peak": torch.cuda.max_memory_allocated() - before, "loss": losses[0]}
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: RSS ~ live memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before, _ = rss()
    losses = [step()[2] for _ in range(n)]
    return {"peak": rss()[1] - before, "loss": losses[0]}


def time_steps(steps: dict, warmup: int, n: int, device) -> dict:
    rows = {name: [] for name in steps}
    for _ in range(warmup + n):
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            loss_tokens, real, loss = fn()
            sync(device)
            rows[name].append((loss_tokens, real, time.perf_counter() - start, loss))
    out = {}
    for name, rs in rows.items():
        timed = rs[warmup:]
        out[name] = {
            "loss_tokens_per_s": statistics.median(lt / t for lt, _, t, _ in timed),
            "real_tokens_per_s": statistics.median(r / t for _, r, t, _ in timed),
            "step_s": statistics.median(t for _, _, t, _ in timed),
            "loss_tokens": statistics.median(lt for lt, _, _, _ in timed),
            "real_tokens": statistics.median(r for _, r, _, _ in timed),
            "rounds_s": [t for _, _, t, _ in timed],
            "first_loss": rs[0][3],
            "last_loss": rs[-1][3],
        }
    # per round, the project's step time against TRL's in the same round (time ratio = speed ratio)
    pairs = zip(rows["project"][warmup:], rows["trl"][warmup:], strict=True)
    out["round_ratios"] = [trl[2] / ours[2] for ours, trl in pairs]
    out["threads"] = torch.get_num_threads()
    out["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return out


def run_child(args, kind: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for name in ("work", "device", "steps", "warmup", "mem_steps", "batch_size", "max_length",
                 "vocab", "hidden", "layers"):  # fmt: skip
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # make_accelerator and Trainer then pick the CPU
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{kind} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=5, help="timed steps of each tool")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each tool first")
    p.add_argument("--mem-steps", type=int, default=2, help="steps in each peak-memory process")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4, help="teacher's; the student has half")
    p.add_argument("--conversations", type=int, default=64)
    p.add_argument("--child", choices=["time", "project", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if importlib.util.find_spec("trl") is None:
        print("this bench compares against TRL's GKDTrainer: pip install trl")
        sys.exit(2)
    if args.child:
        print(json.dumps(child(args)))
        return

    started = time.perf_counter()
    print(
        f"chat KD step ({args.device}, {'bf16 autocast' if args.device == 'cuda' else 'fp32'}): "
        f"Llama teacher {args.layers} layers d={args.hidden} V={args.vocab:,}, student "
        f"{args.layers // 2} layers (truncation), batch {args.batch_size}, max length "
        f"{args.max_length}, forward KL T=1 on assistant tokens; median of {args.steps} steps "
        f"after {args.warmup} warm-up, the two alternating",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as work:
        args.work = work
        make_work(Path(work), args)
        timed = run_child(args, "time")
        mem = {name: run_child(args, name) for name in ("project", "trl")}
    how = {
        "project": "train.setup + train.train_step: fused word_kl, fused AdamW",
        "trl": "GKDTrainer lmbda=0 beta=0: training_step + clip + AdamW (fused) step",
    }
    mib = 2**20
    for name in ("project", "trl"):
        t, m = timed[name], mem[name]
        print(
            f"  {name:7} {t['loss_tokens_per_s']:8,.0f} loss tokens/s  "
            f"{t['real_tokens_per_s']:8,.0f} real tokens/s  {t['step_s']:6.3f} s/step  "
            f"peak {m['peak'] / mib:7.1f} MiB  first loss {t['first_loss']:.5f}  "
            f"[{how[name]}]"
        )
    t = timed["project"]
    print(
        f"  per step: {t['loss_tokens']:,.0f} loss tokens of {t['real_tokens']:,.0f} real; "
        f"{timed['device']}, {timed['threads']} threads; first-step losses agree to "
        f"{abs(t['first_loss'] - timed['trl']['first_loss']):.1e}, last-step losses to "
        f"{abs(t['last_loss'] - timed['trl']['last_loss']):.1e}; "
        f"wall time {time.perf_counter() - started:.0f} s"
    )
    speed = t["loss_tokens_per_s"] / timed["trl"]["loss_tokens_per_s"]
    memory = mem["project"]["peak"] / mem["trl"]["peak"]
    for name in ("project", "trl"):
        print(f"  {name} s/step by round: " + " ".join(f"{x:.2f}" for x in timed[name]["rounds_s"]))
    rounds = timed["round_ratios"]
    print(
        f"  project/TRL tokens/s per round: median {statistics.median(rounds):.2f}x "
        f"(rounds {min(rounds):.2f}-{max(rounds):.2f}x)"
    )
    print(f"project/TRL: tokens/s {speed:.2f}x, peak memory {memory:.2f}x")


if __name__ == "__main__":
    main()

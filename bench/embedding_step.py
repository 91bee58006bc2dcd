"""One sentence-embedding distillation step, this tool's way vs the plain sentence-transformers way.

    python bench/embedding_step.py                        # CPU (or the GPU when there is one)
    python bench/embedding_step.py --steps 2 --warmup 1   # smoke run

Both ways train the same student from the same weights on the same texts, with the same batch
size, max length, learning rate, weight decay, gradient clipping (1.0) and fused AdamW, in fp32:
teacher the packaged all-MiniLM-L6-v2 (6 layers, d=384, mean pooling, normalised), student that
teacher truncated to 3 layers (its pooling and normalisation), texts the built-in rotten_tomatoes.

- tool: ``train.setup`` from ``recipes/embedding.yaml`` (bucketed batches with dynamic padding;
  terms set to embedding_mse + embedding_kl, so that its MSE is sentence-transformers' objective;
  warmup set to 0) and the step of ``train.fit``'s loop,
  ``train.train_step``: the teacher's embeddings are computed online, in every step.
- sentence-transformers: ``SentenceTransformerTrainer`` with ``MSELoss`` on teacher embeddings
  precomputed once with ``SentenceTransformer.encode`` (its default random batches; texts
  tokenized by the trainer's collator in each step), the student saved by the tool before step 1
  and loaded with ``SentenceTransformer``.

A step is timed from the end of the previous one to its own end, so it includes fetching and
collating its batch. The two ways alternate step by step in one process (the tool's step runs in
a trainer callback after each sentence-transformers step), so load from other jobs hits both
alike. Speed is real (non-pad) tokens per second, ``attention_mask.sum()`` per batch, the median
over ``--steps`` steps after ``--warmup``. The sentence-transformers way is reported twice: its
step alone, and with the teacher's precomputation charged per text (the encode time of the texts
its steps used, over those texts, times the batch size) — what one epoch of it costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from harness import packaged_recipe, project_step, sync

from distill_cli.data import text as text_data
from distill_cli.models.embedder import save_embedder, with_model
from distill_cli.training.train import setup

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "embedding.yaml"


def tool_step(state):
    """What train.fit does per batch of the first phase: the step, then the scheduler's."""
    step = project_step(state, term="embedding_mse")
    state.student.train()

    def scheduled():
        out = step()
        state.scheduler.step()
        return out

    return scheduled


def st_student(state, folder: Path, max_length: int, device):
    """The tool's student before step 1, as a sentence-transformers model."""
    from sentence_transformers import SentenceTransformer

    b = state.built
    model = state.accelerator.unwrap_model(state.student).model
    save_embedder(with_model(b.student_head, model), b.tokenizer, folder)
    student = SentenceTransformer(str(folder), device=str(device))
    student.max_seq_length = max_length
    return student


def run(args) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MSELoss
    from transformers import TrainerCallback

    recipe = packaged_recipe(
        RECIPE, args.batch_size, args.max_length, "no",  # fp32, as the sentence-transformers way
        f"train.seed={args.seed}",
        "phases.0.terms={embedding_mse: {weight: 1.0}, embedding_kl: {weight: 1.0}}",
    )  # fmt: skip
    cfg = recipe.train
    n_steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        state = setup(recipe, Path(tmp) / "run", stage="pretrain")
        device = state.accelerator.device
        student = st_student(state, Path(tmp) / "st-student", args.max_length, device)
        ours = tool_step(state)

        # the sentence-transformers way: teacher embeddings precomputed for the texts it uses
        texts = text_data.load_texts(recipe.data)["text"]
        texts = random.Random(args.seed).sample(texts, n_steps * args.batch_size)
        teacher = SentenceTransformer(recipe.teacher, device=str(device))
        teacher.max_seq_length = args.max_length
        start = time.perf_counter()
        labels = teacher.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
        precompute_s = time.perf_counter() - start
        train = Dataset.from_dict({"text": texts, "label": labels.tolist()})

        rows = {"tool": [], "sentence-transformers": []}

        class CountingMSE(MSELoss):
            """MSELoss that notes the real tokens of its batch."""

            def forward(self, sentence_features, labels):
                mask = sentence_features[0]["attention_mask"]
                self.tokens = (int(mask.sum()), mask.numel())
                self.value = super().forward(sentence_features, labels)
                return self.value

        loss = CountingMSE(student)

        class Alternate(TrainerCallback):
            """After each sentence-transformers step: time it, then run and time the tool's."""

            mark = 0.0

            def on_step_begin(self, args_, trainer_state, control, **kw):
                if not self.mark:  # the first step: from just before its forward
                    self.mark = time.perf_counter()

            def on_step_end(self, args_, trainer_state, control, **kw):
                now = time.perf_counter()
                real, positions = loss.tokens
                rows["sentence-transformers"].append(
                    (real, positions, now - self.mark, loss.value.item())
                )
                start = time.perf_counter()
                real, positions, value = ours()
                sync(device)
                rows["tool"].append((real, positions, time.perf_counter() - start, value))
                self.mark = time.perf_counter()

        training_args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(tmp) / "st-run"),
            per_device_train_batch_size=args.batch_size,
            max_steps=n_steps,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            warmup_steps=0,
            lr_scheduler_type="linear",
            seed=args.seed,
            save_strategy="no",
            logging_steps=10**6,
            report_to="none",
            disable_tqdm=True,
            use_cpu=device.type == "cpu",
        )
        trainer = SentenceTransformerTrainer(
            model=student,
            args=training_args,
            train_dataset=train,
            loss=loss,
            callbacks=[Alternate()],
        )
        trainer.train()

    result = {}
    for name, rs in rows.items():
        rs = rs[args.warmup :]
        result[name] = {
            "tokens_per_s": statistics.median(r / t for r, _, t, _ in rs),
            "step_s": statistics.median(t for _, _, t, _ in rs),
            "real_tokens": statistics.median(r for r, _, _, _ in rs),
            "real_share": sum(r for r, _, _, _ in rs) / sum(p for _, p, _, _ in rs),
        }
        result[name]["mse"] = rs[-1][3]  # the last step's embedding MSE
    # the teacher's precomputation, charged per text to each step of the same batch size
    per_step = precompute_s / len(texts) * args.batch_size
    st = result["sentence-transformers"]
    st_rs = rows["sentence-transformers"][args.warmup :]
    with_pre = statistics.median(r / (t + per_step) for r, _, t, _ in st_rs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {
        "device": f"{name}, {torch.get_num_threads()} threads",
        "load_average": os.getloadavg(),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup": args.warmup,
        "ways": result,
        "precompute_s": precompute_s,
        "precompute_texts": len(texts),
        "precompute_s_per_step": per_step,
        "st_with_precompute_tokens_per_s": with_pre,
        "ratio_step": result["tool"]["tokens_per_s"] / st["tokens_per_s"],
        "ratio_with_precompute": result["tool"]["tokens_per_s"] / with_pre,
    }


def report(r: dict) -> None:
    how = {
        "tool": "bucketed batches, teacher online, mse + relational KL, fused AdamW",
        "sentence-transformers": "random batches, precomputed teacher, MSELoss, fused AdamW",
    }
    print(
        f"embedding distillation step on {r['device']} (load average {r['load_average'][0]:.1f}): "
        f"teacher all-MiniLM-L6-v2 (6 layers), student 3 layers, batch {r['batch_size']}, "
        f"max length {r['max_length']}, fp32; median of {r['steps']} steps after {r['warmup']} "
        "warm-up, the two ways alternating"
    )
    for name, w in r["ways"].items():
        print(
            f"  {name:21} {w['tokens_per_s']:8,.0f} real tokens/s  {w['step_s']:6.3f} s/step  "
            f"{w['real_tokens']:6,.0f} real tokens/step ({w['real_share']:.0%} of positions)  "
            f"last MSE {w['mse']:.5f}   [{how[name]}]"
        )
    print(
        f"  teacher precomputation: {r['precompute_s']:.1f} s for {r['precompute_texts']} texts "
        f"({r['precompute_s_per_step']:.3f} s per batch); sentence-transformers with it: "
        f"{r['st_with_precompute_tokens_per_s']:,.0f} real tokens/s"
    )
    print(f"tool/sentence-transformers real tokens/s, step only: {r['ratio_step']:.2f}x")
    print(
        f"tool/sentence-transformers real tokens/s, teacher precomputation included: "
        f"{r['ratio_with_precompute']:.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps of each way")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each way first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()

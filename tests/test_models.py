"""Unit tests of distill_cli.models.load: teacher loading, layer truncation, student building."""

import re

import pytest
import torch
from conftest import LABELS, make_tokenizer, tiny_bert_config
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.models.load import (
    build_student,
    label_names,
    load_teacher,
    same_vocab,
    truncate,
    truncated_layer_ids,
)
from distill_cli.recipe import StudentConfig

LAYER = re.compile(r"\.(layer)\.(\d+)\.")


def layer_params(state: dict, prefix: str, index: int) -> dict:
    """The tensors of one transformer block, keyed by their name inside the block."""
    start = f"{prefix}.{index}."
    return {k[len(start) :]: v for k, v in state.items() if k.startswith(start)}


def outside_layers(state: dict) -> dict:
    return {k: v for k, v in state.items() if not LAYER.search(k)}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a, "no tensors compared"
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_truncation(teacher, student, layer_prefix: str, num_layers: int) -> None:
    """Student block i is teacher block ids[i]; everything outside the blocks is copied."""
    teacher_layers = teacher.config.num_hidden_layers
    ids = truncated_layer_ids(teacher_layers, num_layers)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == num_layers
    assert teacher.config.num_hidden_layers == teacher_layers  # the teacher's config is untouched
    assert not layer_params(s_state, layer_prefix, num_layers)  # no extra blocks
    for i, t in enumerate(ids):
        assert_same(layer_params(s_state, layer_prefix, i), layer_params(t_state, layer_prefix, t))
    assert_same(outside_layers(s_state), outside_layers(t_state))


# ---------------------------------------------------------------- truncated_layer_ids


@pytest.mark.parametrize(
    ("teacher_layers", "student_layers", "ids"),
    [
        (6, 3, [0, 2, 4]),
        (4, 2, [0, 2]),
        (4, 4, [0, 1, 2, 3]),
        (4, 1, [0]),
        (12, 6, [0, 2, 4, 6, 8, 10]),
    ],
)
def test_truncated_layer_ids(teacher_layers, student_layers, ids):
    assert truncated_layer_ids(teacher_layers, student_layers) == ids


@pytest.mark.parametrize("student_layers", [0, -1, 5])
def test_truncated_layer_ids_out_of_range(student_layers):
    with pytest.raises(DistillError, match="num_layers"):
        truncated_layer_ids(4, student_layers)


# ---------------------------------------------------------------- truncate


@pytest.fixture(scope="module")
def teacher_model(tiny_teacher):
    return AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()


def test_truncate_tiny_teacher(teacher_model):
    student = truncate(teacher_model, 2)
    assert len(student.bert.encoder.layer) == 2
    assert_truncation(teacher_model, student, "bert.encoder.layer", 2)
    t_state, s_state = teacher_model.state_dict(), student.state_dict()
    # Spelled out: layers 0 and 2, embeddings, pooler and classifier.
    for s, t in [(0, 0), (1, 2)]:
        assert torch.equal(
            s_state[f"bert.encoder.layer.{s}.attention.self.query.weight"],
            t_state[f"bert.encoder.layer.{t}.attention.self.query.weight"],
        )
    for key in (
        "bert.embeddings.word_embeddings.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
        "classifier.bias",
    ):
        assert torch.equal(s_state[key], t_state[key]), key
    assert student.config.id2label == teacher_model.config.id2label


def test_truncate_keeps_all_layers(teacher_model):
    student = truncate(teacher_model, 4)
    assert_truncation(teacher_model, student, "bert.encoder.layer", 4)


def test_truncate_too_many_layers(teacher_model):
    with pytest.raises(DistillError, match="teacher has 4 layers"):
        truncate(teacher_model, 5)


def _distilbert():
    config = DistilBertConfig(
        vocab_size=100, dim=32, n_layers=4, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    return DistilBertForSequenceClassification(_two_labels(config)), "distilbert.transformer.layer"


def _roberta():
    config = RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return RobertaForSequenceClassification(_two_labels(config)), "roberta.encoder.layer"


def _electra():
    config = ElectraConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return ElectraForSequenceClassification(_two_labels(config)), "electra.encoder.layer"


def _two_labels(config):
    config.num_labels = 2
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {n: i for i, n in enumerate(LABELS)}
    return config


@pytest.mark.parametrize("make", [_distilbert, _roberta, _electra], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_truncate_other_families(make, num_layers):
    torch.manual_seed(0)
    teacher, prefix = make()
    teacher.eval()
    student = truncate(teacher, num_layers)
    assert_truncation(teacher, student, prefix, num_layers)
    ids = torch.tensor([[1, 5, 7, 9, 2]])
    assert student.eval()(input_ids=ids).logits.shape == (1, 2)


# ---------------------------------------------------------------- build_student


def test_build_student_from_config(teacher_model, tmp_path):
    tok = make_tokenizer(tmp_path)
    spec = StudentConfig(
        init="config", num_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64
    )
    model, tokenizer = build_student(spec, teacher_model, tok, LABELS, "classification")
    assert tokenizer is tok
    assert isinstance(model, BertForSequenceClassification)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        2,
        32,
        4,
        64,
    )
    assert len(model.bert.encoder.layer) == 2
    assert model.classifier.weight.shape == (2, 32)
    assert c.id2label == {0: "neg", 1: "pos"} and c.label2id == {"neg": 0, "pos": 1}
    assert label_names(c) == LABELS
    assert next(model.parameters()).dtype == torch.float32
    # The teacher is not changed by the overrides.
    assert teacher_model.config.num_hidden_layers == 4 and teacher_model.config.hidden_size == 48


def test_build_student_from_config_keeps_unset_sizes(teacher_model):
    spec = StudentConfig(init="config", num_layers=1)
    model, _ = build_student(spec, teacher_model, None, ["a", "b", "c"], "classification")
    assert model.config.num_hidden_layers == 1
    assert model.config.hidden_size == teacher_model.config.hidden_size
    assert model.config.num_labels == 3 and model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_build_student_from_config_regression(teacher_model):
    spec = StudentConfig(init="config", num_layers=1)
    model, _ = build_student(spec, teacher_model, None, None, "regression")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    assert model.classifier.weight.shape == (1, 48)
    assert label_names(model.config) is None


def test_build_student_heads_must_divide_hidden(teacher_model):
    spec = StudentConfig(init="config", num_layers=2, hidden_size=30, num_attention_heads=4)
    with pytest.raises(DistillError, match="not divisible"):
        build_student(spec, teacher_model, None, LABELS, "classification")


def test_build_student_truncate(teacher_model):
    spec = StudentConfig(init="truncate", num_layers=2)
    model, tok = build_student(spec, teacher_model, "TOK", LABELS, "classification")
    assert tok == "TOK"
    assert_truncation(teacher_model, model, "bert.encoder.layer", 2)


def test_build_student_from_base_checkpoint(tmp_path):
    path = tmp_path / "base"
    tok = make_tokenizer(path)
    torch.manual_seed(3)
    base = BertModel(tiny_bert_config(len(tok), layers=2, hidden=32), add_pooling_layer=True)
    base.save_pretrained(path)
    lines = []
    spec = StudentConfig(init="checkpoint", path=str(path))
    model, tokenizer = build_student(spec, None, None, LABELS, "classification", log=lines.append)
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert model.classifier.weight.shape == (2, 32)
    assert tokenizer.get_vocab() == tok.get_vocab()
    # The encoder weights come from the checkpoint; only the head is new.
    base_state = base.state_dict()
    for key, value in model.bert.state_dict().items():
        assert torch.equal(value, base_state[key]), key
    fresh = [line for line in lines if "newly initialised" in line]
    assert len(fresh) == 1, lines
    assert "classifier.weight" in fresh[0] and "classifier.bias" in fresh[0]


def test_build_student_checkpoint_with_other_label_count(tiny_student):
    """A classifier checkpoint with another label set gets a new head of the right size."""
    lines = []
    spec = StudentConfig(init="checkpoint", path=str(tiny_student))
    labels = ["a", "b", "c"]
    model, _ = build_student(spec, None, None, labels, "classification", log=lines.append)
    assert model.config.num_labels == 3
    assert model.classifier.weight.shape == (3, 32)
    assert any("newly initialised" in line and "classifier" in line for line in lines), lines


def test_build_student_checkpoint_not_a_model(tmp_path):
    spec = StudentConfig(init="checkpoint", path=str(tmp_path))
    with pytest.raises(DistillError, match="not a Hugging Face model folder"):
        build_student(spec, None, None, LABELS, "classification")


# ---------------------------------------------------------------- load_teacher


def save_classifier(path, labels=LABELS, tokenizer=True):
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path) if tokenizer else make_tokenizer(path.parent / f"{path.name}-tok")
    torch.manual_seed(0)
    BertForSequenceClassification(
        tiny_bert_config(len(tok), layers=2, labels=labels)
    ).save_pretrained(path)
    return path


def test_load_teacher(tiny_teacher):
    model, tok = load_teacher(str(tiny_teacher), LABELS, "classification")
    assert isinstance(model, BertForSequenceClassification)
    assert not model.training
    assert model.config.num_hidden_layers == 4
    assert next(model.parameters()).dtype == torch.float32
    assert tok("the movie was good")["input_ids"][0] == tok.cls_token_id


def test_load_teacher_label_names_ignore_case(tmp_path):
    path = save_classifier(tmp_path / "teacher", labels=["NEG", "POS"])
    model, _ = load_teacher(str(path), LABELS, "classification")
    assert model.config.num_labels == 2


def test_load_teacher_default_label_names_match_any(tmp_path):
    path = save_classifier(tmp_path / "teacher", labels=["LABEL_0", "LABEL_1"])
    model, _ = load_teacher(str(path), LABELS, "classification")
    assert model.config.num_labels == 2


def test_load_teacher_without_head(tmp_path):
    path = tmp_path / "base"
    tok = make_tokenizer(path)
    BertModel(tiny_bert_config(len(tok), layers=2)).save_pretrained(path)
    with pytest.raises(DistillError, match="recipes/finetune.yaml") as e:
        load_teacher(str(path), LABELS, "classification")
    assert "classification head" in str(e.value)


def test_load_teacher_label_count_mismatch(tmp_path):
    path = save_classifier(tmp_path / "teacher", labels=["neg", "neutral", "pos"])
    with pytest.raises(DistillError, match="3 output labels but the data has 2"):
        load_teacher(str(path), LABELS, "classification")


def test_load_teacher_regression_needs_one_output(tiny_teacher):
    with pytest.raises(DistillError, match="2 output labels but the data has 1"):
        load_teacher(str(tiny_teacher), None, "regression")


def test_load_teacher_label_names_differ(tmp_path):
    path = save_classifier(tmp_path / "teacher", labels=["bad", "good"])
    with pytest.raises(DistillError, match="differ from the data's labels"):
        load_teacher(str(path), LABELS, "classification")


def test_load_teacher_label_order_differs(tmp_path):
    path = save_classifier(tmp_path / "teacher", labels=["pos", "neg"])
    with pytest.raises(DistillError, match="label order"):
        load_teacher(str(path), LABELS, "classification")


def test_load_teacher_not_a_model_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(DistillError, match="not a Hugging Face model folder"):
        load_teacher(str(tmp_path), LABELS, "classification")


def test_load_teacher_unknown_hub_name_offline():
    with pytest.raises(DistillError, match="not cached locally") as e:
        load_teacher("nobody/does-not-exist", LABELS, "classification")
    assert "nobody/does-not-exist" in str(e.value)


def test_load_teacher_without_tokenizer(tmp_path):
    path = save_classifier(tmp_path / "teacher", tokenizer=False)
    assert not (path / "tokenizer.json").exists()
    with pytest.raises(DistillError, match="tokenizer"):
        load_teacher(str(path), LABELS, "classification")


# ---------------------------------------------------------------- same_vocab, label_names


def test_same_vocab(tmp_path):
    a = make_tokenizer(tmp_path / "a")
    b = make_tokenizer(tmp_path / "b")
    assert same_vocab(a, a)
    assert same_vocab(a, b)
    b.add_tokens(["unseenword"])
    assert not same_vocab(a, b)
    assert not same_vocab(b, a)


def test_label_names():
    assert label_names(BertConfig(num_labels=2)) is None  # LABEL_0, LABEL_1
    assert label_names(BertConfig(num_labels=3)) is None
    config = BertConfig(num_labels=2, id2label={0: "neg", 1: "pos"})
    assert label_names(config) == ["neg", "pos"]
    regression = BertConfig(num_labels=1, problem_type="regression")
    assert label_names(regression) is None
    assert label_names(tiny_bert_config(10, labels=["x", "y", "z"])) == ["x", "y", "z"]


# ---------------------------------------------------------------- per-layer config


def _decoder(config_class, model_class, layers, **extra):
    config = config_class(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, pad_token_id=0, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return model_class(config).eval()


def _modernbert(layers):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModernBertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2, global_attn_every_n_layers=3,
    )  # fmt: skip
    return ModernBertForMaskedLM(config).eval()


def _qwen2(layers):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _decoder(
        Qwen2Config, Qwen2ForCausalLM, layers,
        use_sliding_window=True, sliding_window=8, max_window_layers=2,
    )  # fmt: skip


def _gemma2(layers):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return _decoder(Gemma2Config, Gemma2ForCausalLM, layers, head_dim=16, sliding_window=8)


F, S = "full_attention", "sliding_attention"


@pytest.mark.parametrize(
    ("make", "teacher_layers", "num_layers", "types"),
    [
        (_modernbert, 6, 2, [F, F]),  # global every 3rd layer: keeping 0 and 3 keeps two
        (_modernbert, 6, 3, [F, S, S]),
        (_qwen2, 4, 2, [F, S]),  # sliding from layer 2 on
        (_gemma2, 4, 2, [S, S]),  # alternating, every 2nd layer kept
        (_gemma2, 4, 4, [S, F, S, F]),
    ],
    ids=lambda x: getattr(x, "__name__", "")[1:] or None,
)
def test_truncate_cuts_layer_types(make, teacher_layers, num_layers, types, tmp_path):
    teacher = make(teacher_layers)
    student = truncate(teacher, num_layers)
    assert student.config.layer_types == types and student.config.num_hidden_layers == num_layers
    # saved and loaded back, the list wins over a periodic rule the config still carries
    # (ModernBERT's global_attn_every_n_layers)
    student.config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).layer_types == types
    assert len(teacher.config.layer_types) == teacher_layers  # the teacher's config is untouched
    ids = truncated_layer_ids(teacher_layers, num_layers)
    s_state, t_state = student.state_dict(), teacher.state_dict()
    for key, value in s_state.items():
        t_key = re.sub(r"layers\.(\d+)\.", lambda m: f"layers.{ids[int(m[1])]}.", key, count=1)
        assert torch.equal(value, t_state[t_key]), key
    batch = torch.tensor([[1, 5, 7, 9, 11, 2]])
    with torch.no_grad():
        assert student(input_ids=batch).logits.shape == (1, 6, 100)


def test_layers_config_cuts_every_per_layer_field_and_nothing_else():
    from distill_cli.models.load import layers_config

    teacher = _qwen2(4)
    config = teacher.config
    config.heads_per_layer = [4, 4, 2, 2]  # any field with one entry per layer
    config.window_by_layer = {"0": 8, "1": 16, "2": 32, "3": 64}  # keyed by layer index
    config.eos_token_id = [5, 6, 7, 8]  # token ids are never per layer, whatever their number
    config.id2label = {i: f"l{i}" for i in range(4)}
    new = layers_config(config, [0, 2])
    assert new.num_hidden_layers == 2 and new.layer_types == [F, S]
    assert new.heads_per_layer == [4, 2]
    assert new.window_by_layer == {"0": 8, "1": 32}
    assert new.eos_token_id == [5, 6, 7, 8] and new.id2label == config.id2label
    assert config.heads_per_layer == [4, 4, 2, 2] and config.num_hidden_layers == 4


def test_truncate_keeps_lists_whose_length_only_happens_to_match_the_depth():
    """DeBERTa-v2's pos_att_type names attention kinds: in a 2-layer model it has 2 entries."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from distill_cli.models.load import per_layer_fields

    config = DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, relative_attention=True, pos_att_type=["p2c", "c2p"],
    )  # fmt: skip
    assert per_layer_fields(config) == {}
    teacher = DebertaV2ForSequenceClassification(config).eval()
    student = truncate(teacher, 1)
    assert student.config.pos_att_type == ["p2c", "c2p"]
    assert_truncation(teacher, student, "deberta.encoder.layer", 1)
    with torch.no_grad():
        assert student(input_ids=torch.tensor([[1, 5, 7, 2]])).logits.shape == (1, 2)


def test_build_student_from_config_cuts_layer_types():
    teacher = _qwen2(4)
    model, _ = build_student(StudentConfig(init="config", num_layers=2), teacher, None)
    assert model.config.layer_types == [F, S] and len(model.model.layers) == 2


def test_truncate_refuses_blocks_a_periodic_rule_builds_differently():
    """Qwen2-MoE makes every 2nd layer a mixture of experts: keeping layers 0 and 2 (both dense)
    would give a student whose layer 1 is a mixture. One line says which counts work."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    teacher = _decoder(
        Qwen2MoeConfig, Qwen2MoeForCausalLM, 4, decoder_sparse_step=2, num_experts=4,
        moe_intermediate_size=16, shared_expert_intermediate_size=16,
    )  # fmt: skip
    with pytest.raises(UnsupportedModel) as err:
        truncate(teacher, 2)
    message = str(err.value)
    assert "\n" not in message and "'qwen2_moe'" in message and "student.init: truncate" in message
    assert "model.layers.1.mlp" in message and "student.num_layers 1, 3 or" in message
    assert [len(truncate(teacher, k).model.layers) for k in (1, 3)] == [1, 3]


def test_truncate_encoder_decoder_is_one_error():
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
    )  # fmt: skip
    with pytest.raises(
        UnsupportedModel, match=r"'bart'.*does not count \(model.decoder.layers.1\)"
    ):
        truncate(BartForSequenceClassification(config), 1)


def test_truncate_layer_count_derived_from_other_fields():
    from transformers import FunnelConfig, FunnelForSequenceClassification

    config = FunnelConfig(vocab_size=100, d_model=32, n_head=2, d_head=16, d_inner=64,
                          block_sizes=[1, 1])  # fmt: skip
    with pytest.raises(UnsupportedModel, match="'funnel': its config derives num_hidden_layers"):
        truncate(FunnelForSequenceClassification(config), 1)


def test_truncation_says_when_the_kept_layers_lose_a_kind_of_layer():
    """Gemma 2 alternates sliding and global layers: keeping every 2nd keeps sliding ones only."""
    lines = []
    spec = StudentConfig(init="truncate", num_layers=2)
    model, _ = build_student(spec, _gemma2(4), None, log=lines.append)
    assert model.config.layer_types == [S, S]
    assert lines == [
        "student: the kept teacher layers [0, 2] have no layer_types 'full_attention'; "
        "another student.num_layers may keep some"
    ]
    build_student(StudentConfig(init="truncate", num_layers=4), _gemma2(4), None, log=lines.append)
    assert len(lines) == 1

"""Word features and vocabularies for GLMD across families: LM heads read up to their vocabulary
projection, factorised embeddings (ALBERT, ELECTRA) through the model's own projection, and one
clear error when neither exists."""

import pytest
import torch
import transformers as T

from distill_cli.errors import UnsupportedModel
from distill_cli.models.forward import Needs, embedding_projection, forward, vocabulary, word_mode
from distill_cli.training.word_kd import word_kl, word_kl_naive

V = 60
SIZES = dict(vocab_size=V, hidden_size=32, num_attention_heads=2, intermediate_size=64)
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
MODELS = {
    "bert": (T.BertConfig, T.BertForMaskedLM, {}),
    "albert": (T.AlbertConfig, T.AlbertForMaskedLM, {"embedding_size": 16}),
    "electra": (T.ElectraConfig, T.ElectraForMaskedLM, {"embedding_size": 16}),
    "distilbert": (
        T.DistilBertConfig,
        T.DistilBertForMaskedLM,
        {"dim": 32, "n_heads": 2, "hidden_dim": 64},
    ),
    "deberta-v2": (T.DebertaV2Config, T.DebertaV2ForMaskedLM, {}),
    "mpnet": (T.MPNetConfig, T.MPNetForMaskedLM, {}),
    "modernbert": (
        T.ModernBertConfig,
        T.ModernBertForMaskedLM,
        {"cls_token_id": 1, "sep_token_id": 2},
    ),
    "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, {"n_embd": 32, "n_head": 2}),
    "llama": (T.LlamaConfig, T.LlamaForCausalLM, {"num_key_value_heads": 1}),
    "opt": (T.OPTConfig, T.OPTForCausalLM, {"ffn_dim": 64, "word_embed_proj_dim": 16}),
    "gemma2": (
        T.Gemma2Config,
        T.Gemma2ForCausalLM,
        {"num_key_value_heads": 1, "head_dim": 16, "final_logit_softcapping": None},
    ),
}


def tiny(name, auto=None):
    config_class, model_class, extra = MODELS[name]
    config = config_class(**SIZES, **IDS, num_hidden_layers=2, **extra)
    torch.manual_seed(0)
    return (auto.from_config(config) if auto else model_class(config)).eval()


def batch():
    ids = torch.tensor([[1, 7, 9, 11, 13, 2], [1, 8, 10, 2, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@pytest.mark.parametrize("name", list(MODELS))
def test_lm_head_features_give_the_models_own_logits(name):
    """H' = the head's transform (whatever its layers are), W and b its projection: H'·Wᵀ + b is
    exactly what the model outputs, without the model's logits ever being built by forward."""
    model = tiny(name)
    with torch.no_grad():
        out = forward(model, batch(), Needs(word=True, hidden=True), "lm_head")
        expected = model(**batch()).logits
    assert out.word_weight.shape[0] == V and len(out.hidden) == 3
    logits = torch.nn.functional.linear(out.word_features, out.word_weight, out.word_bias)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_auto_word_logits():
    assert word_mode("auto", tiny("bert")) == "embeddings"  # H·Eᵀ, as GLMD does
    assert word_mode("auto", tiny("albert")) == "lm_head"  # factorised, with a trained head
    assert word_mode("auto", tiny("electra")) == "lm_head"
    assert word_mode("auto", tiny("gpt2")) == "lm_head"
    assert word_mode("auto", tiny("opt")) == "lm_head"
    assert word_mode("auto", tiny("gpt2", T.AutoModel)) == "embeddings"  # a causal LM's body
    for name in ("albert", "electra"):  # no LM head: the model's own projection
        assert word_mode("auto", tiny(name, T.AutoModelForSequenceClassification)) == "embeddings"


@pytest.mark.parametrize("name", ["albert", "electra"])
def test_factorised_embeddings_through_the_fused_loss(name):
    """Z = H·P·Eᵀ (P the embedding→hidden projection): the fused loss gives the naive loss on
    those logits, and the projection and the embeddings both get gradients."""
    student = tiny(name, T.AutoModelForSequenceClassification)  # eval: no dropout, same H twice
    teacher = tiny(name)
    needs, inputs = Needs(word=True, logits=True), batch()
    s = forward(student, inputs, needs, word_mode("auto", student))
    with torch.no_grad():
        t = forward(teacher, inputs, Needs(word=True), word_mode("auto", teacher))
    projection = embedding_projection(student)
    embeddings = student.get_input_embeddings().weight
    assert s.word_features.shape[-1] == embeddings.shape[1] == 16
    with torch.no_grad():
        hidden = student(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(s.word_features, hidden @ projection.weight)
    mask = inputs["attention_mask"]
    loss = word_kl(s.word_features, s.word_weight, t.word_features, t.word_weight,
                   mask=mask, temperature=2.0, b_t=t.word_bias)  # fmt: skip
    naive = word_kl_naive(s.word_features, embeddings, t.word_features, t.word_weight,
                          mask=mask, temperature=2.0, b_t=t.word_bias)  # fmt: skip
    torch.testing.assert_close(loss, naive)
    grads = torch.autograd.grad(loss, [projection.weight, embeddings], retain_graph=True)
    ref = torch.autograd.grad(naive, [projection.weight, embeddings])
    for g, r in zip(grads, ref):
        assert g.abs().sum() > 0
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_no_head_and_no_projection_is_one_error():
    model = tiny("electra", T.AutoModelForSequenceClassification)
    # the projection hidden in a numbered container: nothing maps the 16-wide embeddings
    model.electra.embeddings_project = torch.nn.Sequential(model.electra.embeddings_project)
    with pytest.raises(UnsupportedModel) as err:
        word_mode("auto", model)
    message = str(err.value)
    assert "\n" not in message and "'electra'" in message and "word_logits" in message
    assert "16 wide" in message and "ForMaskedLM" in message
    with pytest.raises(UnsupportedModel, match="has no LM head; set word_logits: auto"):
        word_mode("lm_head", tiny("bert", T.AutoModelForSequenceClassification))


def test_embeddings_mode_vocabulary_is_the_input_embeddings():
    model = tiny("albert")
    weight, bias = vocabulary(model, "embeddings")
    assert weight is model.get_input_embeddings().weight and bias is None

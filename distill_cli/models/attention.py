"""Efficient-attention students: a built student converted, weight for weight, to a BigBird
(block_sparse) or Longformer encoder, or to a Mistral (sliding_window) causal LM; positions are
extended by tiling the source's, as Longformer's own conversion of RoBERTa did."""

from __future__ import annotations

import warnings

import torch
import transformers

from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.models.kinds import is_causal, position_offset

STEP = "student.attention"
# encoder families we convert from, by model_type: their class prefix
ENCODERS = {
    "bert": "Bert",
    "roberta": "Roberta",
    "xlm-roberta": "XLMRoberta",
    "big_bird": "BigBird",
    "longformer": "Longformer",
}
TARGETS = {"block_sparse": "big_bird", "longformer": "longformer"}
HEADS = (
    "Model",
    "ForMaskedLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
)
# causal families that become a sliding-window Mistral with the same weights
SLIDING = ("llama", "mistral")
# causal families whose config sets sliding attention per layer (layer_types)
LAYER_TYPES = ("qwen2", "qwen3")
# Llama config entries a MistralConfig must not take over
LLAMA_ONLY = ("model_type", "architectures", "attention_bias", "mlp_bias", "transformers_version")
DEFAULT_LONG = 4096
# encoder config fields the converted student keeps from the source
KEEP = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "classifier_dropout", "id2label", "label2id",
    "problem_type", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id",
)  # fmt: skip


def efficient(student, spec, log=print, tokenizer=None):
    """The student with the recipe's attention (``spec.attention``), same task head kind; a
    full-attention encoder student with ``spec.max_position_embeddings`` gets tiled positions."""
    config = student.config
    kind = spec.attention
    if kind == "full":
        if spec.max_position_embeddings is None or config.model_type not in ENCODERS:
            return student
        target = config.model_type
    elif kind == "sliding_window":
        return _sliding(student, spec, log)
    else:
        target = TARGETS[kind]
    if config.model_type not in ENCODERS:
        if kind != "full" and is_causal(config):
            raise UnsupportedModel(
                config.model_type,
                STEP + f": {kind}",
                f"{kind} attention is for encoders (BERT, RoBERTa, XLM-R); for a causal LM "
                "use student.attention: sliding_window",
            )
        raise UnsupportedModel(
            config.model_type,
            STEP + f": {kind}",
            f"efficient encoder students are built from {', '.join(ENCODERS)} models; "
            "use student.attention: full",
        )
    if config.model_type == target and kind != "full":
        log(f"student: already a {type(student).__name__}; its attention is kept as saved")
        return student
    return _convert_encoder(student, spec, target, log, tokenizer)


def _head(student) -> str:
    prefix = ENCODERS[student.config.model_type]
    name = type(student).__name__
    head = name[len(prefix) :] if name.startswith(prefix) else name
    if head not in HEADS:
        raise UnsupportedModel(
            student.config.model_type,
            STEP,
            f"{name} has a head this conversion does not map; heads that work: {', '.join(HEADS)}",
        )
    return head


def _special_ids(config, tokenizer) -> dict:
    """pad/bos/eos/sep ids from the tokenizer where it has them (Longformer numbers positions
    from pad_token_id and finds a QA question's end by sep_token_id), else the config's."""
    ids = {}
    for key in ("pad", "bos", "eos", "sep"):
        value = getattr(tokenizer, f"{key}_token_id", None) if tokenizer is not None else None
        if value is None:
            value = getattr(config, f"{key}_token_id", None)
        if key == "sep" and value is None and tokenizer is not None:
            value = tokenizer.eos_token_id
        ids[f"{key}_token_id"] = value
    if ids["pad_token_id"] is None:
        ids["pad_token_id"] = 0
    return ids


def _target_config(student, spec, target, tokenizer):
    src = student.config
    if getattr(src, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise UnsupportedModel(
            src.model_type,
            STEP,
            f"its position_embedding_type is {src.position_embedding_type}; only absolute "
            "position embeddings can be tiled",
        )
    values = {k: getattr(src, k) for k in KEEP if hasattr(src, k)}
    values.update(_special_ids(src, tokenizer))
    long = target != src.model_type
    positions = spec.max_position_embeddings or (DEFAULT_LONG if long else None)
    offset = position_offset(target, values["pad_token_id"])
    if target == "big_bird" and long:
        _check_blocks(spec, positions)
        values.update(
            attention_type="block_sparse",
            block_size=spec.block_size,
            num_random_blocks=spec.num_random_blocks,
        )
    elif target == "longformer" and long:
        window = spec.attention_window
        if window % 2:
            raise DistillError(
                f"student.attention_window {window} is odd, and Longformer needs an even "
                f"window; set student.attention_window: {window + 1}"
            )
        values["attention_window"] = [window] * src.num_hidden_layers
    if not long:  # full attention at extended positions: the same config, more rows
        config = src.__class__(**{**src.to_dict(), "max_position_embeddings": positions + offset})
        return config, positions
    cls = transformers.AutoConfig.for_model(target).__class__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = cls(**values, max_position_embeddings=positions + offset)
    return config, positions


def _check_blocks(spec, positions: int) -> None:
    b, r = spec.block_size, spec.num_random_blocks
    dense = (5 + 2 * r) * b  # BigBird attends fully up to this length
    if positions % b:
        raise DistillError(
            f"student.max_position_embeddings {positions} is not a multiple of student.block_size "
            f"{b} (BigBird pads inputs to whole blocks); choose a multiple of {b}"
        )
    if positions <= dense:
        raise DistillError(
            f"student.block_size {b} with num_random_blocks {r} attends fully up to {dense} "
            f"tokens, at least student.max_position_embeddings {positions}, so no input would be "
            "block-sparse; lower block_size or num_random_blocks, or raise max_position_embeddings"
        )


# --- weights: every tensor by a family-neutral (BERT-style) name --------------------------------

LM_HEAD = {  # RoBERTa / Longformer MLM head -> BERT names
    "lm_head.dense.": "cls.predictions.transform.dense.",
    "lm_head.layer_norm.": "cls.predictions.transform.LayerNorm.",
    "lm_head.decoder.": "cls.predictions.decoder.",
    "lm_head.bias": "cls.predictions.bias",
}


def _neutral(key: str, prefix: str) -> str:
    """A state-dict key in BERT's names, without the base model's prefix."""
    if key.startswith(prefix + "."):
        key = key[len(prefix) + 1 :]
    if key in ("pooler.weight", "pooler.bias"):  # BigBird's pooler is a bare Linear
        key = "pooler.dense." + key.split(".")[1]
    for old, new in LM_HEAD.items():
        if key.startswith(old):
            key = new + key[len(old) :]
    return key.replace("_global.", ".")  # Longformer's global q/k/v start as the local ones


def _source_tensors(student) -> dict:
    prefix = student.base_model_prefix
    # a Longformer source gives its local q/k/v, not the global ones
    out = {_neutral(k, prefix): v for k, v in student.state_dict().items() if "_global." not in k}
    cls_keys = {k for k in out if k.startswith("classifier.")}
    if "classifier.weight" in cls_keys and "pooler.dense.weight" in out:
        # BERT's pooler (dense + tanh on [CLS]) then classifier is RoBERTa's head (dense, out_proj)
        for p in ("weight", "bias"):
            out.setdefault(f"classifier.dense.{p}", out[f"pooler.dense.{p}"])
            out.setdefault(f"classifier.out_proj.{p}", out[f"classifier.{p}"])
    if "classifier.dense.weight" in out and "pooler.dense.weight" not in out:
        for p in ("weight", "bias"):  # a pooler only BigBird's base keeps: the head's dense
            out[f"pooler.dense.{p}"] = out[f"classifier.dense.{p}"]
    return out


def _tile(source: torch.Tensor, src_offset: int, rows: int, dst_offset: int) -> torch.Tensor:
    """``rows`` position rows: row dst_offset + i is source row src_offset + i mod (the source's
    usable positions); the offset rows before are the source's when it has as many, else 0."""
    usable = source[src_offset:]
    out = torch.zeros(rows, source.shape[1], dtype=source.dtype)
    if src_offset == dst_offset:
        out[:dst_offset] = source[:src_offset]
    need = rows - dst_offset
    reps = -(-need // usable.shape[0])
    out[dst_offset:] = usable.repeat(reps, 1)[:need]
    return out


def _convert_encoder(student, spec, target, log, tokenizer):
    src_type = student.config.model_type
    head = _head(student)
    if target == "big_bird" and head == "ForQuestionAnswering":
        raise UnsupportedModel(
            src_type,
            STEP + ": block_sparse",
            "BigBirdForQuestionAnswering has its own QA head (qa_classifier) that the source's "
            "qa_outputs cannot fill; use student.attention: longformer",
        )
    config, positions = _target_config(student, spec, target, tokenizer)
    cls = getattr(transformers, ENCODERS[target] + head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = cls(config)
    tensors = _source_tensors(student)
    src_offset = position_offset(src_type, student.config.pad_token_id)
    dst_offset = position_offset(target, config.pad_token_id)
    state, fresh = {}, []
    for key, value in new.state_dict().items():
        name = _neutral(key, new.base_model_prefix)
        if name == "embeddings.position_embeddings.weight":
            state[key] = _tile(tensors[name], src_offset, value.shape[0], dst_offset)
        elif name in tensors and tensors[name].shape == value.shape:
            state[key] = tensors[name]
        elif name.startswith("pooler.") and head != "Model":
            fresh.append(key)  # a pooler the head never reads
            state[key] = value
        else:
            raise UnsupportedModel(
                src_type,
                STEP,
                f"{cls.__name__} tensor {key} has no matching tensor in {type(student).__name__}",
            )
    new.load_state_dict(state)
    new.train(student.training)
    if target == "big_bird" and head == "ForSequenceClassification":
        if config.hidden_act != "tanh":
            log(
                f"student: BigBird's classification head applies {config.hidden_act} where "
                "the source's pooler applies tanh; it starts from the same weights"
            )
    if fresh:
        log(f"student: newly initialised weights the head does not read: {', '.join(fresh)}")
    log(f"student: {cls.__name__} at {positions} positions ({_describe(config)})")
    return prepared(new)


def _describe(config) -> str:
    if config.model_type == "big_bird":
        return (
            f"block_sparse, block_size {config.block_size}, "
            f"{config.num_random_blocks} random blocks"
        )
    if config.model_type == "longformer":
        return f"attention_window {config.attention_window[0]}"
    return "full attention, positions tiled"


# --- causal LMs: sliding-window attention ---------------------------------------------------------


def _sliding(student, spec, log):
    config = student.config
    name = type(student).__name__
    decoder = config.model_type in SLIDING + LAYER_TYPES  # its classifiers and readers too
    if not decoder and not is_causal(config):
        raise UnsupportedModel(
            config.model_type,
            STEP + ": sliding_window",
            "sliding_window is for causal LMs (Llama, Mistral); for an encoder use "
            "student.attention: longformer or block_sparse",
        )
    if config.model_type in LAYER_TYPES:
        return _sliding_layers(student, spec, log)
    if config.model_type not in SLIDING:
        raise UnsupportedModel(
            config.model_type,
            STEP + ": sliding_window",
            f"sliding-window students are built from {', '.join(SLIDING + LAYER_TYPES)} models; "
            "use student.attention: full",
        )
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise UnsupportedModel(
                config.model_type,
                STEP + ": sliding_window",
                f"its {flag} is true and Mistral has no such biases; use student.attention: full",
            )
    head = name[len("Llama") :] if name.startswith("Llama") else name[len("Mistral") :]
    cls = getattr(transformers, "Mistral" + head, None)
    if cls is None:
        raise UnsupportedModel(
            config.model_type, STEP + ": sliding_window", f"Mistral has no {head} class"
        )
    values = config.to_dict()
    for key in LLAMA_ONLY:
        values.pop(key, None)
    positions = spec.max_position_embeddings or config.max_position_embeddings
    values.update(sliding_window=spec.attention_window, max_position_embeddings=positions)
    values["head_dim"] = getattr(config, "head_dim", None) or (
        config.hidden_size // config.num_attention_heads
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new_config = transformers.MistralConfig(**values)
        new = cls(new_config)
    wanted = new.state_dict().keys()
    state = {}
    for key, value in student.state_dict().items():  # Llama's QA body is "transformer."
        rest = key.split(".", 1)[-1]
        state[key if key in wanted else f"model.{rest}"] = value
    missing, unexpected = new.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied(new)]
    if missing or unexpected:
        raise UnsupportedModel(
            config.model_type,
            STEP + ": sliding_window",
            f"{cls.__name__} tensor {(missing or unexpected)[0]} has no match in {name}",
        )
    if getattr(new_config, "tie_word_embeddings", False):
        new.tie_weights()
    new.train(student.training)
    log(
        f"student: {cls.__name__} at {positions} positions (sliding_window {spec.attention_window})"
    )
    return new


def _sliding_layers(student, spec, log):
    """The same class with every layer a sliding_attention one of the recipe's window."""
    config = student.config
    values = config.to_dict()
    n = config.num_hidden_layers
    values.update(
        use_sliding_window=True,
        sliding_window=spec.attention_window,
        max_window_layers=0,
        layer_types=["sliding_attention"] * n,
        max_position_embeddings=spec.max_position_embeddings or config.max_position_embeddings,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = type(student)(type(config)(**values))
    new.load_state_dict(student.state_dict())
    new.train(student.training)
    log(
        f"student: {type(new).__name__} at {new.config.max_position_embeddings} positions "
        f"(sliding_window {spec.attention_window} in every layer)"
    )
    return new


def _tied(model) -> set:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if model.config.tie_word_embeddings:
        return set(keys) | {"lm_head.weight"}
    return set()


# --- what loaded efficient models need at every call ---------------------------------------------


def prepared(model):
    """A loaded or converted model, ready to run: a Longformer reader gets its question's global
    attention, a block-sparse BigBird keeps its attention type (both as forward pre-hooks, not
    saved). Other models are returned as they are; calling it twice adds nothing."""
    if getattr(model, "_distill_prepared", False):
        return model
    model._distill_prepared = True
    _question_global_attention(model)
    _keep_block_sparse(model)
    return model


def _keep_block_sparse(model) -> None:
    """transformers' BigBird switches itself to full attention for good the first time an input
    is too short for its blocks (every later long input then runs full attention). Pick the type
    per call instead: block-sparse whenever the input is long enough for it."""
    config = model.config
    if config.model_type != "big_bird" or config.attention_type != "block_sparse":
        return
    shortest = (5 + 2 * config.num_random_blocks) * config.block_size

    def pick(base, args, kwargs):  # the hook's own module: a deep copy's hook sets the copy
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is not None:
            base.set_attention_type("block_sparse" if x.shape[1] > shortest else "original_full")
        return args, kwargs

    model.base_model.register_forward_pre_hook(pick, with_kwargs=True)


def _question_global_attention(model) -> None:
    """LongformerForQuestionAnswering finds the question by asserting exactly three sep tokens a
    row (RoBERTa's ``<s> q </s></s> c </s>``); BERT-tokenised pairs have two. Give it the mask
    itself, as it would: global attention on every token before the first sep."""
    if type(model).__name__ != "LongformerForQuestionAnswering":
        return
    sep = model.config.sep_token_id

    def add_mask(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if kwargs.get("global_attention_mask") is None and ids is not None and sep is not None:
            kwargs["global_attention_mask"] = (torch.cumsum(ids == sep, dim=1) == 0).long()
        return args, kwargs

    model.register_forward_pre_hook(add_mask, with_kwargs=True)


def untraceable(config) -> str | None:
    """Why an ONNX trace of this architecture would not be the model at every length, or None."""
    if config.model_type == "longformer":
        return (
            "Longformer pads and chunks its input into attention windows in Python, so a "
            "traced graph runs only at the traced length; use --format hf"
        )
    if config.model_type == "big_bird" and config.attention_type == "block_sparse":
        return (
            "BigBird picks full or block-sparse attention by input length in Python, so a "
            "traced graph would be full attention only; use --format hf"
        )
    return None


def check_attention_maps(student, terms) -> None:
    """attention_kl compares [query, key] attention maps, which Longformer (window-shaped maps)
    and block-sparse BigBird do not return: one line instead of a shape error."""
    config = student.config
    sparse = config.model_type == "longformer" or (
        config.model_type == "big_bird" and config.attention_type == "block_sparse"
    )
    if "attention_kl" in terms and sparse:
        raise UnsupportedModel(
            config.model_type,
            "attention_kl",
            f"{type(student).__name__} returns no full attention maps to compare; "
            "use hidden_mse, or student.attention: full",
        )

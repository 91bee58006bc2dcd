"""Sentence embedders: a transformer, pooling, an optional Dense layer and optional L2
normalisation, read from and written as sentence-transformers folders without that package.

A sentence-transformers folder lists its modules in ``modules.json``; distill reads the common
pipeline Transformer → Pooling → [Dense] → [Normalize]. Pooling follows sentence-transformers:
mean and max over the real (non-pad) tokens, CLS the first real token, lasttoken the last one, so
right and left padding give the same vectors.
"""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from distill_cli.data.tables import looks_like_path
from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.models.load import load_encoder
from distill_cli.outputs import write_json_atomic, write_text_atomic
from distill_cli.tasks.sentence_embedding import OUTPUT as SENTENCE_EMBEDDING
from distill_cli.user_files import check_shape, first_line, read_json, read_text, reading

POOLING_MODES = ("mean", "cls", "max", "lasttoken")
IDENTITY = "torch.nn.modules.linear.Identity"
TANH = "torch.nn.modules.activation.Tanh"  # sentence-transformers' Dense default
# 1_Pooling/config.json's flags (the format every sentence-transformers release reads) → mode
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
READS = (
    "a Transformer, a Pooling, an optional Dense and an optional Normalize module, in that order"
)
ST_FIX = "restore it from the original model folder"
# What a Hub sentence-transformers model needs: configs, tokenizer files, safetensors weights
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "*/pytorch_model.bin"]


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[batch, seq, dim] token states → [batch, dim], over the tokens whose mask is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
        total = (hidden * mask).sum(1, dtype=acc)
        return (total / mask.sum(1, dtype=acc).clamp(min=1e-9)).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(1).values
    real = attention_mask.to(torch.int32)  # int32: onnxruntime has no int64 ArgMax
    if mode == "cls":
        index = real.argmax(1)  # the first real token
    elif mode == "lasttoken":
        positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.int32)
        index = (real * positions).argmax(1)  # the last real token
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    index = index.to(torch.int64)[:, None, None].expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


def check_pooling(mode, where: str) -> str:
    if mode not in POOLING_MODES:
        raise DistillError(
            f"{where}: unknown pooling mode {mode!r}; choose one of {', '.join(POOLING_MODES)}"
        )
    return mode


def activation_module(name: str, where: str) -> torch.nn.Module:
    """A sentence-transformers Dense activation ("torch.nn.modules.activation.Tanh"): only
    torch.nn module classes built without arguments, never code named by a file."""
    module, _, cls_name = name.rpartition(".")
    cls = None
    if name.startswith("torch."):
        try:
            cls = getattr(importlib.import_module(module), cls_name, None)
        except ImportError:
            pass
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise DistillError(
            f"{where}: activation_function '{name}' is not a torch.nn module class; "
            f"use one such as {TANH} or {IDENTITY}"
        )
    try:
        return cls()
    except TypeError:
        raise DistillError(
            f"{where}: activation_function '{name}' needs arguments; use one built without, "
            f"such as {TANH} or {IDENTITY}"
        ) from None


def _fullname(module: torch.nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"


class Embedder(torch.nn.Module):
    """Transformer → pooling → optional Dense (+ activation) → optional L2 normalisation."""

    def __init__(
        self,
        model,
        pooling: str = "mean",
        dense: torch.nn.Linear | None = None,
        dense_activation: str = IDENTITY,
        normalize: bool = False,
        max_seq_length: int | None = None,
    ):
        super().__init__()
        self.model = model
        self.pooling = check_pooling(pooling, "Embedder")
        self.dense = dense
        self.activation = activation_module(dense_activation, "Embedder")
        self.normalize = normalize
        self.max_seq_length = max_seq_length  # sentence-transformers' truncation length

    @property
    def dense_activation(self) -> str:
        """The Dense activation's class as sentence-transformers names it in 2_Dense/config.json."""
        return _fullname(self.activation)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def embedding_dim(self) -> int:
        return self.dense.out_features if self.dense is not None else self.hidden_size

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return self.pool(out.last_hidden_state, attention_mask)

    def pool(self, last_hidden_state, attention_mask) -> torch.Tensor:
        """Pooling, Dense and normalisation on given token states (so training can reuse a
        forward pass that also returns every layer's states)."""
        x = pool_tokens(last_hidden_state, attention_mask, self.pooling)
        if self.dense is not None:
            x = self.activation(self.dense(x))
        return F.normalize(x, p=2, dim=-1) if self.normalize else x


def is_sentence_transformers_folder(path) -> bool:
    return (Path(path).expanduser() / "modules.json").is_file()


def _hub_folder(name: str) -> Path | None:
    """A Hub sentence-transformers model's files (from the cache when offline), or None."""
    if looks_like_path(name) or Path(name).expanduser().exists():
        return None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception:  # noqa: BLE001 - not on the Hub or not cached: load it as a plain model
        return None
    return folder if is_sentence_transformers_folder(folder) else None


def _hub_bin_weights(name: str, folder: Path, sub: str) -> None:
    """A Hub model whose transformer ships only a .bin: fetch it too (loaded weights_only)."""
    if not any(folder.joinpath(sub).glob("*.safetensors*")):
        from huggingface_hub import snapshot_download

        prefix = f"{sub}/" if sub else ""
        try:
            snapshot_download(name, allow_patterns=[f"{prefix}pytorch_model*.bin"])
        except Exception:  # noqa: BLE001 - loading then names what is missing
            pass


def _modules(folder: Path, role: str, name: str) -> dict:
    """modules.json → {"Transformer": path, "Pooling": path, "Dense": path?, "Normalize": path?}."""
    path = folder / "modules.json"
    what = f"the {role}'s sentence-transformers module list"
    text = read_text(path, what, ST_FIX)
    with reading(path, what, ST_FIX):
        entries = json.loads(text)
    if not isinstance(entries, list):
        raise DistillError(f"{what} {path} must hold a JSON list of modules; {ST_FIX}")
    kinds, paths = [], {}
    for i, entry in enumerate(entries):
        check_shape(
            entry, path, f"{what} entry {i} in", ST_FIX, required={"path": str, "type": str}
        )
        kind = entry["type"].rpartition(".")[2]
        if not entry["type"].startswith("sentence_transformers.") or kind not in (
            "Transformer", "Pooling", "Dense", "Normalize",
        ):  # fmt: skip
            raise DistillError(
                f"{role} '{name}': modules.json lists a {entry['type']} module, which distill "
                f"does not read; use a model made of {READS}"
            )
        sub = Path(entry["path"])
        if sub.is_absolute() or ".." in sub.parts:
            raise DistillError(
                f"{role} '{name}': modules.json gives module path '{entry['path']}' outside the "
                f"folder; {ST_FIX}"
            )
        kinds.append(kind)
        paths[kind] = entry["path"]
    expected = ["Transformer", "Pooling"]
    expected += [k for k in ("Dense", "Normalize") if k in kinds]
    if kinds != expected:
        raise DistillError(
            f"{role} '{name}': modules.json lists {', '.join(kinds) or 'no modules'}; distill "
            f"reads {READS}"
        )
    return paths


def read_pooling(path: Path, role: str) -> str:
    """The one pooling mode 1_Pooling/config.json sets (its pooling_mode_* flags, or the newer
    pooling_mode key); no flag set means mean, as sentence-transformers reads it."""
    what = f"the {role}'s pooling config"
    flags = {key: bool for key in POOLING_FLAGS}
    config = read_json(path, what, ST_FIX, optional={**flags, "pooling_mode": (str, list)})
    unknown = [k for k, on in config.items() if k.startswith("pooling_mode_") and on]
    unknown = [k for k in unknown if k not in POOLING_FLAGS]
    if unknown:
        raise DistillError(
            f"{what} {path} sets {unknown[0]}, an unknown pooling mode; choose one of "
            f"{', '.join(POOLING_MODES)}"
        )
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else mode
    else:
        modes = [mode for key, mode in POOLING_FLAGS.items() if config.get(key)] or ["mean"]
    if len(modes) != 1:
        raise DistillError(
            f"{what} {path} sets {len(modes)} pooling modes ({', '.join(map(str, modes))}); "
            f"distill pools with one: use a model with one of {', '.join(POOLING_MODES)}"
        )
    mode = modes[0]
    if mode in POOLING_FLAGS.values() and mode not in POOLING_MODES:
        raise DistillError(
            f"{what} {path} sets pooling mode '{mode}', which distill does not support; "
            f"use a model with one of {', '.join(POOLING_MODES)}"
        )
    return check_pooling(mode, f"{what} {path}")


def _dense_weights(folder: Path, role: str) -> tuple[Path, dict]:
    """2_Dense's tensors: model.safetensors first, else pytorch_model.bin loaded weights_only."""
    what = f"the {role}'s Dense weights"
    safe, pickled = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safe.is_file():
        try:
            return safe, load_file(safe)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise DistillError(f"could not read {what} {safe}: {first_line(e)}; {ST_FIX}") from None
    if not pickled.is_file():
        raise DistillError(f"{folder} has no model.safetensors or pytorch_model.bin; {ST_FIX}")
    try:
        with reading(pickled, what, ST_FIX):
            state = torch.load(pickled, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DistillError(
            f"refusing to load {what} {pickled}: it is a pickle that needs more than tensors and "
            "could run code; convert it to safetensors where you trust it"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DistillError(f"{what} {pickled} is not a mapping of tensors; {ST_FIX}")
    return pickled, state


def read_dense(folder: Path, role: str) -> tuple[torch.nn.Linear, str]:
    """2_Dense/: its config.json and weights as an nn.Linear, and its activation's name."""
    path = folder / "config.json"
    config = read_json(
        path,
        f"the {role}'s Dense config",
        ST_FIX,
        required={"in_features": int, "out_features": int},
        optional={
            "bias": bool,
            "activation_function": str,
            "use_residual": bool,
            "module_input_name": str,
            "module_output_name": str,
        },
    )
    if config.get("use_residual"):
        raise DistillError(f"{path} sets use_residual, which distill does not read; {READS}")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, SENTENCE_EMBEDDING) != SENTENCE_EMBEDDING:
            raise DistillError(
                f"{path}: {key} is '{config[key]}'; distill reads a Dense layer on the sentence "
                "embedding only"
            )
    n_in, n_out, bias = config["in_features"], config["out_features"], config.get("bias", True)
    activation = config.get("activation_function", TANH)
    activation_module(activation, str(path))  # fails here, naming the file
    weights_path, state = _dense_weights(folder, role)
    names = {"linear.weight", *(["linear.bias"] if bias else [])}
    if set(state) != names:
        got = ", ".join(sorted(state)) or "no tensors"
        raise DistillError(
            f"{weights_path} holds {got} but {path} (bias {str(bias).lower()}) needs "
            f"{', '.join(sorted(names))}; use the config the Dense weights were saved with"
        )
    shape = list(state["linear.weight"].shape)
    if shape != [n_out, n_in] or (bias and list(state["linear.bias"].shape) != [n_out]):
        raise DistillError(
            f"{path} gives in_features {n_in} and out_features {n_out} (a weight of shape "
            f"{[n_out, n_in]}) but {weights_path} holds linear.weight of shape {shape}"
            + (f" and linear.bias of shape {list(state['linear.bias'].shape)}" if bias else "")
            + "; use the config the Dense weights were saved with"
        )
    linear = torch.nn.Linear(n_in, n_out, bias=bias)
    linear.load_state_dict({k.removeprefix("linear."): v.float() for k, v in state.items()})
    return linear, activation


def _max_seq_length(folder: Path, role: str) -> int | None:
    path = folder / "sentence_bert_config.json"
    if not path.is_file():
        return None
    optional = {"max_seq_length": (int, type(None)), "do_lower_case": bool}
    return read_json(
        path, f"the {role}'s sentence-transformers config", ST_FIX, optional=optional
    ).get("max_seq_length")


def load_embedder(
    path: str,
    role: str,
    trust_remote_code: bool = False,
    pooling: str | None = None,
    require_pooling: bool = False,
):
    """An Embedder and its tokenizer, from a sentence-transformers folder (local or a Hub name)
    or a plain HF model (pooled with ``pooling``, default mean). ``pooling`` given overrides the
    folder's; with ``require_pooling``, a plain model without ``pooling`` is an error. A folder's
    max_seq_length becomes the tokenizer's model_max_length, so ``tokenizer(texts,
    truncation=True)`` cuts texts where sentence-transformers does."""
    if pooling is not None:
        check_pooling(pooling, f"the {role}'s pooling")
    folder = Path(path).expanduser()
    hub = None
    if not is_sentence_transformers_folder(folder):
        hub = folder = _hub_folder(path)
    if folder is None:
        if pooling is None and require_pooling:
            raise DistillError(
                f"{role} '{path}' is not a sentence-transformers model (no modules.json), so it "
                "has no pooling; set pooling: mean (or cls, max, lasttoken, auto) in the recipe"
            )
        model, tokenizer = load_encoder(path, role, trust_remote_code)
        return _checked(Embedder(model, pooling or "mean"), role, path), tokenizer

    paths = _modules(folder, role, path)
    if hub is not None:
        _hub_bin_weights(path, folder, paths["Transformer"])
    transformer = folder / paths["Transformer"]
    model, tokenizer = load_encoder(str(transformer), role, trust_remote_code)
    mode = read_pooling(folder / paths["Pooling"] / "config.json", role)
    dense, activation = None, IDENTITY
    if "Dense" in paths:
        dense, activation = read_dense(folder / paths["Dense"], role)
    max_length = _max_seq_length(transformer, role)
    if max_length:
        tokenizer.model_max_length = max_length
    embedder = Embedder(model, pooling or mode, dense, activation, "Normalize" in paths, max_length)
    return _checked(embedder, role, path), tokenizer


def _checked(embedder: Embedder, role: str, name: str) -> Embedder:
    config = embedder.model.config
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(
            config.model_type, "sentence embedding", "encoder-decoder models are not read; "
            "use an encoder or a decoder model"
        )  # fmt: skip
    dense = embedder.dense
    if dense is not None and dense.in_features != embedder.hidden_size:
        raise DistillError(
            f"{role} '{name}': its Dense layer takes {dense.in_features} features but the "
            f"transformer's hidden size is {embedder.hidden_size}; use the Dense layer saved "
            "with this transformer"
        )
    return embedder.eval()


def add_projection(embedder: Embedder, dim: int) -> None:
    """A trainable Dense (identity activation) from the transformer's width to ``dim``, for a
    student whose width differs from the teacher's embedding size; nothing when it matches."""
    if embedder.embedding_dim == dim:
        return
    weight = next(embedder.model.parameters())
    embedder.dense = torch.nn.Linear(embedder.hidden_size, dim).to(weight.device, weight.dtype)
    embedder.activation = torch.nn.Identity()


def _saved_max_length(embedder: Embedder, tokenizer) -> int | None:
    """The shortest of: the embedder's max_seq_length, the tokenizer's limit, the positions."""
    limits = (
        embedder.max_seq_length,
        tokenizer.model_max_length,
        getattr(embedder.model.config, "max_position_embeddings", None),
    )
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else None


def save_embedder(embedder: Embedder, tokenizer, folder: Path) -> None:
    """Write a complete sentence-transformers folder: the transformer and tokenizer at the top
    (as sentence-transformers saves them), modules.json, 1_Pooling, 2_Dense when there is one,
    and a Normalize module when the embedder normalises. Call it on a staging folder and
    publish that (distill_cli.outputs) for an atomic write."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    embedder.model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_json_atomic(
        folder / "sentence_bert_config.json",
        {"max_seq_length": _saved_max_length(embedder, tokenizer), "do_lower_case": False},
    )
    write_json_atomic(
        folder / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    pooling = folder / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    flags = {key: embedder.pooling == mode for key, mode in POOLING_FLAGS.items()}
    if embedder.pooling != "lasttoken":  # releases before lasttoken do not know its flag
        flags = {k: v for k, v in flags.items() if k != "pooling_mode_lasttoken"}
    write_json_atomic(
        pooling / "config.json", {"word_embedding_dimension": embedder.hidden_size, **flags}
    )
    if embedder.dense is not None:
        dense = folder / "2_Dense"
        dense.mkdir(exist_ok=True)
        linear = embedder.dense
        config = {
            "in_features": linear.in_features,
            "out_features": linear.out_features,
            "bias": linear.bias is not None,
            "activation_function": embedder.dense_activation,
        }
        write_json_atomic(dense / "config.json", config)
        state = {
            f"linear.{k}": v.detach().float().cpu().contiguous()
            for k, v in linear.state_dict().items()
        }
        save_file(state, dense / "model.safetensors")
        modules.append(("2_Dense", "Dense"))
    if embedder.normalize:
        name = f"{len(modules)}_Normalize"
        (folder / name).mkdir(exist_ok=True)
        modules.append((name, "Normalize"))
    listed = [
        {"idx": i, "name": str(i), "path": sub, "type": f"sentence_transformers.models.{kind}"}
        for i, (sub, kind) in enumerate(modules)
    ]
    write_text_atomic(folder / "modules.json", json.dumps(listed, indent=2) + "\n")


def head_of(embedder: Embedder) -> Embedder:
    """The embedder's pooling, Dense and normalisation without its transformer: what a
    training student keeps beside its model."""
    head = Embedder(None, embedder.pooling, embedder.dense, IDENTITY, embedder.normalize)
    head.activation, head.max_seq_length = embedder.activation, embedder.max_seq_length
    return head


def with_model(head: Embedder, model) -> Embedder:
    """A whole embedder from a head and a transformer (to save or run it)."""
    whole = Embedder(model, head.pooling, head.dense, IDENTITY, head.normalize)
    whole.activation, whole.max_seq_length = head.activation, head.max_seq_length
    return whole

"""Load teachers; build students from a checkpoint, a truncated teacher, or a teacher config."""

from __future__ import annotations

import copy
import functools
import re
import warnings
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
)

from distill_cli import tasks
from distill_cli.data.tables import looks_like_path
from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.models.attention import efficient, prepared
from distill_cli.models.forward import is_causal
from distill_cli.recipe import StudentConfig
from distill_cli.user_files import first_line, read_json, read_text

# Matches the index of a transformer block in a state-dict key: encoder.layer.3., h.3., layers.3.
LAYER_KEY = re.compile(r"(^|\.)(layer|layers|h|block)\.(\d+)\.")


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# tokenizer files that must be JSON objects, and plain-text ones (one token / merge a line)
TOKENIZER_JSON = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
)
TOKENIZER_TEXT = ("vocab.txt", "merges.txt")
# other JSON files transformers reads from a model folder (config.json is read_config's)
MODEL_JSON = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "generation_config.json",
)
MODEL_FIX = "restore it from the original model, or save the model again with save_pretrained"
GGUF_INSTALL = "pip install 'distill-cli[gguf]' (or pip install gguf)"


def gguf_source(name: str, role: str) -> tuple[str, str | None]:
    """(folder or name, GGUF file name or None): a .gguf file, or a folder without config.json
    holding exactly one, is read with transformers' GGUF support; anything else is as given."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(path.parent), path.name
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(p.name for p in path.glob("*.gguf") if p.is_file())
        if len(found) > 1:
            raise DistillError(
                f"{role} folder '{name}' holds {len(found)} .gguf files ({', '.join(found)}); "
                "pass the path of the one to load"
            )
        if found:
            return str(path), found[0]
    return name, None


def _check_gguf(name: str, role: str) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise DistillError(
            f"{role} '{name}' is a GGUF file, and reading one needs the gguf package; "
            f"install it with {GGUF_INSTALL}"
        ) from None


def _gguf_architectures() -> list[str]:
    """The GGUF architectures the installed transformers reads."""
    names: set[str] = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names |= set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
        from transformers.integrations.gguf import GGUF_CONFIG_ARCHS

        names |= set(GGUF_CONFIG_ARCHS)
    except ImportError:
        pass
    return sorted(names)


def _gguf_error(name: str, role: str, err: Exception) -> DistillError | None:
    """One line for a GGUF whose architecture transformers cannot read; None for other errors."""
    found = re.search(r"architecture (\S+) is not supported", str(err))
    if not found:
        return None
    known = _gguf_architectures()
    reads = f"it reads {', '.join(known)}" if known else "its architecture is unsupported"
    return DistillError(
        f"{role} '{name}' is a GGUF of architecture '{found[1]}', which transformers cannot read "
        f"from GGUF ({reads}); convert the model to a safetensors folder instead"
    )


def _gguf_kwargs(gguf_file: str | None, model: bool = False) -> dict:
    """from_pretrained's arguments for a GGUF file: named, and for a model dequantised."""
    if gguf_file is None:
        return {}
    kwargs = {"gguf_file": gguf_file}
    if model:
        try:
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers: always dequantised
            pass
    return kwargs


def _plain_model(model):
    """A model loaded from GGUF, dequantised, as a plain model save_pretrained writes."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model


def _load_error(role: str, name: str, err: Exception) -> DistillError:
    if looks_like_path(name) and not Path(name).expanduser().exists():
        return DistillError(f"{role} folder not found: {name}; pass an existing model folder")
    if Path(name).expanduser().exists():
        return DistillError(
            f"{role} '{name}' could not be loaded: {first_line(err)}; check its config.json and "
            "weights, or save the model again with save_pretrained"
        )
    if hub_constants.HF_HUB_OFFLINE:
        return DistillError(
            f"{role} '{name}' is not a local folder and is not cached locally "
            "(HF_HUB_OFFLINE is set); pass a local model folder"
        )
    return DistillError(
        f"{role} '{name}' is not a local folder and could not be loaded from the Hugging Face Hub "
        "(not cached locally, offline, or no such model); pass a local model folder"
    )


def check_model_source(name: str, role: str) -> None:
    """Fail early on a local folder that is not an HF model, or whose config.json is bad."""
    if gguf_source(name, role)[1]:
        _check_gguf(name, role)
        return
    path = Path(name).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise DistillError(
            f"{role} '{name}' is not a Hugging Face model folder (no config.json); "
            "pass a folder written by save_pretrained or a Hub name"
        )
    if path.exists():
        read_config(path, role)
        for name in MODEL_JSON:
            if (path / name).is_file():
                read_json(path / name, f"the {role}'s model file", MODEL_FIX)


def read_config(folder: Path, role: str) -> dict:
    """A local model folder's config.json as a dict; one error line when it is not one."""
    layers = {"num_hidden_layers": int, "n_layer": int}
    return read_json(
        folder / "config.json", f"the {role}'s model config", MODEL_FIX, optional=layers
    )


def from_pretrained(auto, name: str, role: str, **kwargs):
    """``auto.from_pretrained`` with one clear line for each way a checkpoint can be bad.

    transformers loads safetensors first and a ``.bin`` only with ``torch.load(weights_only=True)``;
    a pickle that needs more than tensors is refused, never run.
    """
    folder, gguf_file = gguf_source(name, role)
    if gguf_file:
        _check_gguf(name, role)
    try:
        loaded = auto.from_pretrained(folder, **kwargs, **_gguf_kwargs(gguf_file, model=True))
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if gguf_file:
            _plain_model(model)
        prepared(model)  # an efficient-attention model's per-call settings
        return loaded
    except DistillError:
        raise
    except Exception as e:
        if gguf_file and (unread := _gguf_error(name, role, e)):
            raise unread from None
        text = str(e)
        if type(e).__name__ == "SafetensorError" or "deserializ" in text.lower():
            raise DistillError(
                f"{role} '{name}' has a corrupted or truncated safetensors file "
                f"({text.splitlines()[0]}); download or save the model again"
            ) from None
        if type(e).__name__ == "UnpicklingError" or "Weights only load failed" in text:
            what = re.search(r"GLOBAL ([\w.]+)", text)
            raise DistillError(
                f"refusing to load {role} '{name}': its .bin checkpoint is a pickle that needs "
                f"more than tensors{f' ({what[1]})' if what else ''} and could run code; "
                "convert it to safetensors where you trust it, or use a safetensors checkpoint"
            ) from None
        if "ignore_mismatched_sizes" in text or "size mismatch" in text:
            raise _shape_error(auto, name, role, kwargs) from None
        raise _load_error(role, name, e) from None


def _config(name: str, role: str, trust_remote_code: bool):
    folder, gguf_file = gguf_source(name, role)
    try:
        return AutoConfig.from_pretrained(
            folder, trust_remote_code=trust_remote_code, **_gguf_kwargs(gguf_file)
        )
    except Exception as e:
        if gguf_file and (unread := _gguf_error(name, role, e)):
            raise unread from None
        raise _load_error(role, name, e) from None


def _shape_error(auto, name: str, role: str, kwargs: dict) -> DistillError:
    """Name the first tensor whose saved shape disagrees with the config."""
    try:
        _, info = auto.from_pretrained(
            name, **{**kwargs, "ignore_mismatched_sizes": True, "output_loading_info": True}
        )
        key, saved, expected = sorted(info["mismatched_keys"])[0]
        detail = f"tensor {key} has shape {list(saved)} but the config gives {list(expected)}"
    except Exception:
        detail = "a tensor's shape disagrees with config.json"
    return DistillError(
        f"{role} '{name}': config.json and the weights disagree: {detail}; "
        "use the config the weights were saved with"
    )


def _check_tokenizer_files(folder: Path, role: str) -> None:
    """Every tokenizer file in the folder parses: a bad one is named, not a library traceback."""
    fix = "restore it from the original model, or save the tokenizer again with save_pretrained"
    for name in TOKENIZER_JSON:
        if (folder / name).is_file():
            read_json(folder / name, f"the {role}'s tokenizer file", fix)
    for name in TOKENIZER_TEXT:
        if (folder / name).is_file():
            read_text(folder / name, f"the {role}'s tokenizer file", fix)


def load_tokenizer(name: str, role: str, trust_remote_code: bool = False):
    source, gguf_file = gguf_source(name, role)
    if gguf_file:  # the tokenizer and chat template are in the file's metadata
        _check_gguf(name, role)
        try:
            return AutoTokenizer.from_pretrained(
                source, trust_remote_code=trust_remote_code, gguf_file=gguf_file
            )
        except Exception as e:
            if unread := _gguf_error(name, role, e):
                raise unread from None
            raise DistillError(
                f"{role} '{name}': the tokenizer in its GGUF metadata could not be read "
                f"({first_line(e)}); use a GGUF written by llama.cpp's converter"
            ) from None
    folder = Path(name).expanduser()
    # transformers 5 builds an all-[UNK] tokenizer from config.json alone: refuse that.
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise DistillError(
            f"{role} '{name}' has no tokenizer files; save one beside the model "
            "with tokenizer.save_pretrained"
        )
    if folder.is_dir():
        _check_tokenizer_files(folder, role)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, ... for missing files
        if folder.is_dir():
            raise DistillError(
                f"{role} '{name}': its tokenizer could not be loaded ({first_line(e)}); restore "
                "the tokenizer files, or save the tokenizer again with save_pretrained"
            ) from None
        raise _load_error(role, name, e) from None


# the first module name of each task head's weights, across architectures
HEAD_MODULES = ("classifier", "score", "qa_outputs")


def is_head_key(key: str, pooler: bool = True) -> bool:
    """A weight of the task head (or, with ``pooler``, of the pooler a head may read)."""
    first = key.split(".")[0]
    head = first in HEAD_MODULES or "classifier" in first  # DistilBERT's pre_classifier too
    return head or (pooler and (first == "pooler" or ".pooler." in key))


def _default_names(config) -> bool:
    return all(name == f"LABEL_{i}" for i, name in config.id2label.items())


def check_label_sets(config, labels: list[str] | None, task_type: str, role: str) -> None:
    """A model's classifier must match the task's label set (count, and names when it has any)."""
    expected = tasks.get(task_type).num_outputs(labels)
    if expected is None:
        return
    if config.num_labels != expected:
        raise DistillError(
            f"{role} has {config.num_labels} output labels but the data has {expected}; "
            "use a model fine-tuned on this task's labels"
        )
    if labels and not _default_names(config):
        names = [config.id2label[i] for i in range(config.num_labels)]
        if [n.lower() for n in names] != [n.lower() for n in labels]:
            raise DistillError(
                f"{role} labels {names} differ from the data's labels {labels}; "
                "set data.labels to the model's label order"
            )


def load_teacher(name: str, labels, task_type: str, trust_remote_code: bool = False):
    """A task teacher: a model with the task's head (classifier, tagger or QA reader) whose label
    set matches the data."""
    check_model_source(name, "teacher")
    model, info = from_pretrained(
        tasks.get(task_type).auto_class,
        name,
        "teacher",
        dtype=torch.float32,
        output_loading_info=True,
        trust_remote_code=trust_remote_code,
    )
    missing = [k for k in info.get("missing_keys", ()) if is_head_key(k, pooler=False)]
    if missing:
        what = tasks.get(task_type).description
        raise DistillError(
            f"teacher '{name}' has no trained {what} head ({', '.join(sorted(missing))} "
            "missing); fine-tune it first with recipes/finetune.yaml"
        )
    check_label_sets(model.config, labels, task_type, "teacher")
    tokenizer = load_tokenizer(name, "teacher", trust_remote_code)
    return model.eval(), tokenizer


def truncated_layer_ids(teacher_layers: int, student_layers: int) -> list[int]:
    """Every k-th teacher layer, k = teacher_layers // student_layers, as DistilBERT does."""
    if not 1 <= student_layers <= teacher_layers:
        raise DistillError(
            f"student.num_layers is {student_layers} but the teacher has {teacher_layers} layers; "
            f"choose 1..{teacher_layers}"
        )
    k = teacher_layers // student_layers
    return [i * k for i in range(student_layers)]


@functools.cache
def _generic_fields() -> frozenset[str]:
    """Fields every config has (labels, architectures, ...): never per layer."""
    from transformers import PretrainedConfig

    return frozenset(PretrainedConfig().to_dict())


def _by_layer_index(value: dict, n: int) -> bool:
    return len(value) == n and {str(k) for k in value} == {str(i) for i in range(n)}


def _one_per_layer(value, n: int) -> bool:
    if isinstance(value, dict):
        return _by_layer_index(value, n)
    return isinstance(value, (list, tuple)) and len(value) == n


def per_layer_fields(config) -> dict:
    """The config's per-layer fields: a list with one entry per layer, or a mapping keyed by
    layer index (layer types, sliding-window flags, per-layer head counts or sizes, ...); never
    labels, architectures or token ids, whatever their length.

    A list is per layer because the config class makes it follow the depth, not because its
    length happens to equal it (DeBERTa-v2's pos_att_type ['p2c', 'c2p'] in a 2-layer model):
    built again at two other depths without it, the class must give it one entry per layer.
    A field the class never sets (added by hand) is judged by its length."""
    n = config.num_hidden_layers
    fields = {}
    for key, value in vars(config).items():
        if key.startswith("_") or key in _generic_fields() or "token_id" in key:
            continue
        if _one_per_layer(value, n):
            fields[key] = value
    if not fields:
        return fields
    probes = {depth: _built_at(config, depth, without=fields) for depth in (n + 1, n + 2)}
    if None in probes.values():  # the class cannot be built from its own values: lengths decide
        return fields
    return {
        key: value
        for key, value in fields.items()
        if all(
            key not in vars(c) or _one_per_layer(getattr(c, key), d) or _scalar(getattr(c, key))
            for d, c in probes.items()
        )
    }


def _scalar(value) -> bool:
    """A number that stands for every layer, which a per-layer list may replace (Longformer's
    attention_window: 512, or one window a layer)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _built_at(config, depth: int, without: dict):
    """A config of the same class and values at ``depth`` layers, ``without`` those fields
    (left to the class's defaults); None where the class refuses that."""
    layers_key = type(config).attribute_map.get("num_hidden_layers", "num_hidden_layers")
    values = {k: v for k, v in config.to_dict().items() if k not in without}
    values[layers_key] = depth
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return type(config)(**values)
    except Exception:  # noqa: BLE001 - config validators raise many types
        return None


def _kept(value, layer_ids: list[int]):
    """A per-layer field's entries for ``layer_ids``, renumbered from 0."""
    if isinstance(value, dict):
        keys = {str(k): k for k in value}
        kind = type(next(iter(value)))
        return {kind(j): value[keys[str(i)]] for j, i in enumerate(layer_ids)}
    return type(value)(value[i] for i in layer_ids)


def layers_config(config, layer_ids: list[int]):
    """A copy of ``config`` holding only the blocks ``layer_ids``: num_hidden_layers, and every
    per-layer field cut to those blocks."""
    new = copy.deepcopy(config)
    for key, value in per_layer_fields(config).items():
        setattr(new, key, _kept(value, layer_ids))
    set_layer_count(new, len(layer_ids))
    return new


def set_layer_count(config, num_layers: int) -> None:
    """Set num_hidden_layers (whatever the config calls it); one line where it cannot be set."""
    try:
        config.num_hidden_layers = num_layers
    except Exception:  # noqa: BLE001 - a property computed from other fields (Funnel's blocks)
        raise UnsupportedModel(
            config.model_type,
            "choosing student layers",
            "its config derives num_hidden_layers from other fields; use student.init: checkpoint",
        ) from None


def lost_layer_kinds(config, layer_ids: list[int]) -> list[str]:
    """Per-layer values the teacher has and none of the kept layers has, as ``field value``
    (``layer_types 'full_attention'`` when every kept layer is a sliding-window one)."""
    lost = []
    for key, value in per_layer_fields(config).items():
        kept = _kept(value, layer_ids)
        kept = {repr(v) for v in (kept.values() if isinstance(kept, dict) else kept)}
        every = value.values() if isinstance(value, dict) else value
        lost += [f"{key} {v}" for v in dict.fromkeys(map(repr, every)) if v not in kept]
    return lost


def _new_model(cls, config, step: str):
    """``cls(config)``; a config the model class rejects is one line, not a traceback."""
    try:
        return cls(config)
    except Exception as e:  # noqa: BLE001 - transformers' validators raise many types
        last = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        why = f"its config is rejected ({last})"
        raise UnsupportedModel(config.model_type, step, why) from None


_PLAIN = (bool, int, float, str, type(None))


def _plain_attributes(module) -> dict:
    """The settings a module was built with: its plain (non-tensor, non-module) attributes."""
    out = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, _PLAIN) or (
            isinstance(value, (tuple, list)) and all(isinstance(x, _PLAIN) for x in value)
        ):
            out[key] = value
    return out


def _teacher_name(name: str, layer_ids: list[int]) -> str:
    """The teacher tensor or module a student one is copied from: block i ← block layer_ids[i]."""
    sub = LAYER_KEY.sub(lambda m: f"{m[1]}{m[2]}.{layer_ids[int(m[3])]}.", name + ".", count=1)
    return sub[:-1]


def _block_index(name: str) -> int | None:
    m = LAYER_KEY.search(name + ".")
    return int(m[3]) if m else None


def layer_mismatch(teacher, student, layer_ids: list[int]) -> str | None:
    """How a module of a student block differs from the teacher module it is copied from (its
    class, or a setting such as a sliding window), or None when every student block is built like
    the teacher block it keeps. The block's own index and the layer count may differ."""
    teacher_modules = dict(teacher.named_modules())
    counts = (len(layer_ids), teacher.config.num_hidden_layers)
    for name, module in student.named_modules():
        i = _block_index(name)
        if i is None:
            continue  # outside the blocks: built from the same config
        if i >= len(layer_ids):
            return f"it has blocks that num_hidden_layers does not count ({name})"
        t_name = _teacher_name(name, layer_ids)
        other = teacher_modules.get(t_name)
        if other is None or type(other) is not type(module):
            theirs = type(other).__name__ if other is not None else "missing"
            return f"student {name} would be a {type(module).__name__}, teacher {t_name}: {theirs}"
        mine, theirs = _plain_attributes(module), _plain_attributes(other)
        for key in sorted(mine.keys() | theirs.keys()):
            a, b = mine.get(key), theirs.get(key)
            if a != b and (a, b) not in ((i, layer_ids[i]), counts):
                return f"student {name}.{key} would be {a!r} but teacher {t_name}.{key} is {b!r}"
    return None


def _keeps_consistently(teacher, num_layers: int) -> bool:
    ids = truncated_layer_ids(teacher.config.num_hidden_layers, num_layers)
    try:
        with torch.device("meta"):  # structure only, no memory
            student = type(teacher)(layers_config(teacher.config, ids))
    except Exception:  # noqa: BLE001 - any failure means this count does not work
        return False
    return layer_mismatch(teacher, student, ids) is None


def truncate(teacher, num_layers: int):
    """A copy of the teacher with num_layers blocks, initialised from every k-th teacher block.

    Per-layer config fields are cut to the kept blocks; then every student block must be built
    like the teacher block it keeps (a periodic rule such as "every 3rd layer is global" may not
    survive keeping every k-th layer), or one error lists the layer counts that work.
    """
    n, model_type = teacher.config.num_hidden_layers, teacher.config.model_type
    layer_ids = truncated_layer_ids(n, num_layers)
    step = "student.init: truncate"
    student = _new_model(type(teacher), layers_config(teacher.config, layer_ids), step)
    problem = layer_mismatch(teacher, student, layer_ids)
    if problem:
        fits = [k for k in range(1, n) if k != num_layers and _keeps_consistently(teacher, k)]
        choose = f"student.num_layers {', '.join(map(str, fits))} or " if fits else ""
        raise UnsupportedModel(
            model_type,
            step,
            f"keeping teacher layers {layer_ids}, {problem}; choose {choose}student.init: config",
        )
    source = teacher.state_dict()
    state = {}
    for key, value in student.state_dict().items():
        t_key = _teacher_name(key, layer_ids)
        if t_key not in source or source[t_key].shape != value.shape:
            raise UnsupportedModel(
                model_type, step, f"student tensor {key} has no matching teacher tensor {t_key}"
            )
        state[key] = source[t_key]
    student.load_state_dict(state)
    return student


def _load_by_config(name: str, role: str, trust_remote_code: bool, pick_class):
    """Check the folder, read its config, load the class ``pick_class(config)`` names in fp32,
    and its tokenizer."""
    check_model_source(name, role)
    config = _config(name, role, trust_remote_code)
    model = from_pretrained(
        pick_class(config),
        name,
        role,
        config=config,
        dtype=torch.float32,
        trust_remote_code=trust_remote_code,
    )
    return model, load_tokenizer(name, role, trust_remote_code)


def _lm_class(config):
    archs = getattr(config, "architectures", None) or []
    if is_causal(config):
        return AutoModelForCausalLM
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
        return AutoModelForMaskedLM
    return AutoModel


def load_lm(name: str, role: str, trust_remote_code: bool = False):
    """A model for the pre-training stage: causal LM, masked LM, or bare encoder, as saved."""
    return _load_by_config(name, role, trust_remote_code, _lm_class)


def load_encoder(name: str, role: str, trust_remote_code: bool = False):
    """The bare transformer (AutoModel: no head) and its tokenizer, as sentence embedders use."""
    return _load_by_config(name, role, trust_remote_code, lambda config: AutoModel)


def build_student(
    spec: StudentConfig,
    teacher,
    teacher_tokenizer,
    labels=None,
    task_type: str | None = None,
    trust_remote_code: bool = False,
    log=print,
):
    """The student model and its tokenizer (see ``_build_student``), converted to the recipe's
    attention (student.attention: BigBird, Longformer or a sliding-window Mistral)."""
    student, tokenizer = _build_student(
        spec, teacher, teacher_tokenizer, labels, task_type, trust_remote_code, log
    )
    return prepared(efficient(student, spec, log, tokenizer)), tokenizer


def _build_student(
    spec: StudentConfig,
    teacher,
    teacher_tokenizer,
    labels=None,
    task_type: str | None = None,
    trust_remote_code: bool = False,
    log=print,
):
    """The student model and its tokenizer.

    With a ``task_type`` (task stage) the student is a classifier with the task's label set;
    without one (pre-training stage) it has the teacher's architecture class.
    """
    label_kwargs = tasks.get(task_type).label_kwargs(labels) if task_type else {}
    if spec.init == "checkpoint":
        if not task_type:
            return load_lm(spec.path, "student", trust_remote_code)
        check_model_source(spec.path, "student")
        model, info = from_pretrained(
            tasks.get(task_type).auto_class,
            spec.path,
            "student",
            dtype=torch.float32,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # a new label set gets a fresh head
            trust_remote_code=trust_remote_code,
            **label_kwargs,
        )
        body = sorted(m for m in info.get("mismatched_keys", ()) if not is_head_key(m[0]))
        if body:
            key, saved, expected = body[0]
            raise DistillError(
                f"student '{spec.path}': config.json and the weights disagree: tensor {key} has "
                f"shape {list(saved)} but the config gives {list(expected)}; use the config the "
                "weights were saved with"
            )
        fresh = [*info.get("missing_keys", ()), *(m[0] for m in info.get("mismatched_keys", ()))]
        if fresh:
            log(f"student: newly initialised weights: {', '.join(sorted(fresh))}")
        return model, load_tokenizer(spec.path, "student", trust_remote_code)

    if spec.init == "truncate":
        student = truncate(teacher, spec.num_layers)
        ids = truncated_layer_ids(teacher.config.num_hidden_layers, spec.num_layers)
        lost = lost_layer_kinds(teacher.config, ids)
        if lost:
            log(
                f"student: the kept teacher layers {ids} have no {'; no '.join(lost)}; "
                "another student.num_layers may keep some"
            )
        return student, teacher_tokenizer

    # init == "config": the teacher's architecture with overrides, randomly initialised; fewer
    # layers take their per-layer settings from every k-th teacher layer, as truncation does
    config = copy.deepcopy(teacher.config)
    n = config.num_hidden_layers
    if spec.num_layers is not None and spec.num_layers <= n:
        config = layers_config(config, truncated_layer_ids(n, spec.num_layers))
    elif spec.num_layers is not None:
        set_layer_count(config, spec.num_layers)
    for key in ("hidden_size", "num_attention_heads", "intermediate_size"):
        value = getattr(spec, key)
        if value is not None:
            setattr(config, key, value)
    heads = config.num_attention_heads
    if config.hidden_size % heads:
        raise DistillError(
            f"student hidden_size {config.hidden_size} is not divisible by "
            f"num_attention_heads {heads}; change one of them"
        )
    if hasattr(config, "head_dim") and spec.hidden_size is not None:
        config.head_dim = config.hidden_size // heads  # Llama-style configs store it
    for key, value in label_kwargs.items():
        setattr(config, key, value)
    return _new_model(type(teacher), config, "student.init: config").float(), teacher_tokenizer


def load_classifier(path: str, role: str = "model", trust_remote_code: bool = False, task=None):
    """A trained task model (classifier, tagger or QA reader, as saved) and its tokenizer, for
    evaluation (ONNX exports run in onnxruntime). ``task``: load it with that task's model class
    (a cloze reads a masked or causal LM) instead of the one its config names."""
    from distill_cli.models.onnx_model import OnnxClassifier, is_onnx_folder

    if is_onnx_folder(path):
        check_model_source(path, role)
        return OnnxClassifier(path), load_tokenizer(path, role)
    pick = _task_class if task is None else (lambda config: task.auto_class)
    model, tokenizer = _load_by_config(path, role, trust_remote_code, pick)
    if not model.config.architectures:  # a GGUF's config names none: the class loaded tells
        model.config.architectures = [type(model).__name__]
    return model.eval(), tokenizer


def _task_class(config):
    """The Auto class of a saved model's task; a causal LM without a task head (or saved
    without its architecture, as GGUF configs are) is a chat model."""
    task = tasks.with_head(config)
    if task is None:
        task = tasks.CHAT if is_causal(config) else tasks.of_config(config)
    return task.auto_class


def label_names(config) -> list[str] | None:
    """A model's label names, or None when they are transformers' LABEL_i defaults."""
    if not tasks.of_config(config).class_logits or _default_names(config):
        return None
    return [config.id2label[i] for i in range(config.num_labels)]


def saved_label_names(name: str, role: str, trust_remote_code: bool = False) -> list[str] | None:
    """A model's label names, read from its config alone (None: LABEL_i defaults, or none)."""
    check_model_source(name, role)
    return label_names(_config(name, role, trust_remote_code))


def give_pad_token(model, tokenizer) -> None:
    """A decoder classifier reads its last non-pad token, so it needs a pad id, and causal
    tokenizers often have none: use EOS, in the tokenizer and the config saved with the model."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def same_vocab(a, b) -> bool:
    return a is b or a.get_vocab() == b.get_vocab()


def load_as_saved(name: str, role: str, trust_remote_code: bool = False):
    """A model with the head it was saved with (its config's architecture), and its tokenizer."""
    import transformers

    def saved_class(config):
        archs = getattr(config, "architectures", None) or []
        if not archs:  # a GGUF names none: its LM head, for a causal LM
            return _lm_class(config)
        return getattr(transformers, archs[0], None) or AutoModel

    model, tokenizer = _load_by_config(name, role, trust_remote_code, saved_class)
    return model.eval(), tokenizer

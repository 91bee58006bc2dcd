"""The model card (README.md) of an HF export: templates/model_card.md filled from typed data.

The data: the model's config (and for a sentence embedder its pooling, Dense and
normalisation), its resolved_recipe.yaml as a ``Recipe``, and the reports that training,
compress-vocab and evaluate left beside it. Any of them may be absent.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from distill_cli import tasks
from distill_cli.errors import DistillError
from distill_cli.export.cloze import ClozeClassifier, pair_template
from distill_cli.export.sentence import TAG as EMBEDDING_TAG
from distill_cli.export.sentence import SentenceEmbedding, dense_activation_code
from distill_cli.models.embedder import Embedder
from distill_cli.models.forward import is_causal
from distill_cli.recipe import Recipe, from_dict, load_recipe
from distill_cli.tasks import cloze as cloze_task
from distill_cli.user_files import read_json

TEMPLATE = "templates/model_card.md"
AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "fill-mask": "AutoModelForMaskedLM",
    "text-generation": "AutoModelForCausalLM",
    "feature-extraction": "AutoModel",
    EMBEDDING_TAG: "AutoModel",
}


@dataclass
class TrainResults:
    """train_results.json, as far as the card uses it."""

    steps: int | None = None
    stage: str | None = None
    final_loss: float | None = None
    phases: dict[str, int] = field(default_factory=dict)  # optimizer steps per phase
    eval_split: str | None = None
    eval: dict[str, float] = field(default_factory=dict)


@dataclass
class Compression:
    """compression.json, as far as the card uses it."""

    vocab_before: int
    vocab_after: int
    ratio: float
    similarity: str
    remapped_share: float


@dataclass
class ModelScores:
    metrics: dict[str, float]
    size_mb: float


@dataclass
class Evaluation:
    """evaluation.json, as far as the card uses it."""

    data: str
    split: str
    num_examples: int
    primary_metric: str
    models: dict[str, ModelScores]


@dataclass
class EmbeddingUsage:
    """What the card's plain-transformers snippet writes out after the transformer."""

    pooling: str
    dense_out: int | None  # the Dense layer's output size; None without one
    activation: str | None  # Python for its activation (torch.nn.Tanh()); None for identity
    normalize: bool
    dim: int

    @classmethod
    def of(cls, embedder: Embedder) -> EmbeddingUsage:
        dense = embedder.dense
        return cls(
            pooling=embedder.pooling,
            dense_out=None if dense is None else dense.out_features,
            activation=None if dense is None else dense_activation_code(embedder),
            normalize=embedder.normalize,
            dim=embedder.embedding_dim,
        )


@dataclass
class ClozeUsage:
    """What the card's snippet for a cloze model (cloze.json beside it) reads the class with."""

    labels: list[str]
    next_token: bool  # a causal LM: the next-token logits at the end of the prompt
    lm_head: bool  # its word logits come from its LM head (else H·Eᵀ at word_logit_scale)
    pair: bool  # the template takes {text_a} and {text_b}

    @classmethod
    def of(cls, config, saved: dict) -> ClozeUsage:
        return cls(
            labels=list(saved["labels"]),
            next_token=cloze_task.saved_reads_next_token(saved, config),
            lm_head=saved.get("word_logits", "lm_head") == "lm_head",
            pair=pair_template(saved["template"]),
        )


@dataclass
class CardData:
    """Everything the template reads."""

    name: str
    arch: str
    dtype: str
    tag: str
    recipe: Recipe | None = None
    train: TrainResults | None = None
    compression: Compression | None = None
    evaluation: Evaluation | None = None
    embedding: EmbeddingUsage | None = None  # a sentence embedder's
    chat: bool = False  # a causal LM whose tokenizer carries a chat template
    cloze: ClozeUsage | None = None  # a classifier read through its word head (cloze.json)

    @property
    def auto(self) -> str:
        return AUTO_CLASSES[self.tag]

    @property
    def header(self) -> str:
        """The YAML front matter the Hub reads."""
        embedder = self.tag == EMBEDDING_TAG
        meta = {"library_name": "sentence-transformers" if embedder else "transformers"}
        if self.recipe is not None and self.recipe.teacher:
            meta["base_model"] = self.recipe.teacher
        tags = ["distill-cli", "distillation"]
        if embedder:
            tags += ["sentence-transformers", "feature-extraction", EMBEDDING_TAG]
        meta.update(pipeline_tag=self.tag, tags=tags)
        return yaml.safe_dump(meta, sort_keys=False).strip()


def pipeline_tag(model_or_config) -> str:
    if isinstance(model_or_config, (Embedder, SentenceEmbedding)):
        return EMBEDDING_TAG
    if isinstance(model_or_config, ClozeClassifier):  # its ONNX graph: the class logits
        return "text-classification"
    config = getattr(model_or_config, "config", model_or_config)
    task = tasks.with_head(config)
    if task is not None:
        return task.pipeline
    archs = getattr(config, "architectures", None) or []
    arch = archs[0] if archs else ""
    if arch.endswith(("ForMaskedLM", "ForPreTraining")):
        return "fill-mask"
    if is_causal(config):
        return "text-generation"
    return "feature-extraction"


def card_data(
    config,
    model_dir: Path,
    name: str,
    dtype: str = "fp32",
    evaluation: Path | None = None,
    embedder: Embedder | None = None,
) -> CardData:
    """Read what the card shows from the config and the files beside the model (the
    evaluation from ``evaluation`` when given); ``embedder``: the model is that sentence
    embedder's transformer."""
    recipe_path = model_dir / "resolved_recipe.yaml"
    saved = None if embedder is not None else cloze_task.read_saved(model_dir)
    return CardData(
        name=name,
        arch=(getattr(config, "architectures", None) or ["?"])[0],
        dtype=dtype,
        tag=pipeline_tag(embedder if embedder is not None else config),
        embedding=EmbeddingUsage.of(embedder) if embedder is not None else None,
        chat=is_causal(config) and has_chat_template(model_dir),
        cloze=ClozeUsage.of(config, saved) if saved is not None else None,
        recipe=load_recipe(recipe_path) if recipe_path.is_file() else None,
        train=read_report(TrainResults, model_dir / "train_results.json"),
        compression=read_report(Compression, model_dir / "compression.json"),
        evaluation=read_report(Evaluation, evaluation or model_dir / "evaluation.json"),
    )


def model_card(
    config,
    model_dir: Path,
    name: str,
    dtype: str = "fp32",
    evaluation: Path | None = None,
    embedder: Embedder | None = None,
) -> str:
    """README.md in the HF convention: YAML header, then how it was made, metrics, usage."""
    return render(card_data(config, model_dir, name, dtype, evaluation, embedder))


def render(data: CardData) -> str:
    import jinja2

    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters["num"] = _num
    text = resources.files("distill_cli").joinpath(TEMPLATE).read_text(encoding="utf-8")
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    return env.from_string(text).render(**fields, auto=data.auto, header=data.header)


def _num(value) -> str:
    if value is None:
        return "?"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def has_chat_template(model_dir: Path) -> bool:
    """Whether the tokenizer saved in ``model_dir`` carries a chat template (its own file, as
    transformers 5 saves it, or a key in tokenizer_config.json)."""
    if (model_dir / "chat_template.jinja").is_file():
        return True
    config = model_dir / "tokenizer_config.json"
    return config.is_file() and '"chat_template"' in config.read_text(encoding="utf-8")


# ---------------------------------------------------------------- reports beside the model


def read_report(cls: type, path: Path):
    """A JSON report as ``cls``: the keys ``cls`` declares, type-checked; None when absent."""
    if not path.is_file():
        return None
    raw = read_json(
        path, "record beside the model", "fix or delete it; the model card is made from it"
    )
    return from_dict(cls, _declared(cls, raw, path), "", str(path))


def _declared(cls: type, raw: dict, path: Path, prefix: str = "") -> dict:
    """The keys of ``raw`` that ``cls`` declares, in nested reports too; a missing one that
    ``cls`` requires is an error. Other keys are the report's business, not the card's."""
    hints = typing.get_type_hints(cls)
    kept = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            required = f.default is dataclasses.MISSING
            if required and f.default_factory is dataclasses.MISSING:
                raise DistillError(
                    f"{path}: key '{prefix}{f.name}' is missing; fix or remove the file"
                )
            continue
        value = raw[f.name]
        args = typing.get_args(hints[f.name])
        if typing.get_origin(hints[f.name]) is dict and dataclasses.is_dataclass(args[1]):
            if isinstance(value, dict):
                value = {
                    k: _declared(args[1], v, path, f"{prefix}{f.name}.{k}.")
                    if isinstance(v, dict)
                    else v
                    for k, v in value.items()
                }
        kept[f.name] = value
    return kept

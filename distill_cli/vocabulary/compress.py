"""compress-vocab's core: load, compress (vocabulary.surgery), write a plain HF folder."""

from __future__ import annotations

from pathlib import Path

from distill_cli.data import chat
from distill_cli.data import text as text_data
from distill_cli.errors import DistillError
from distill_cli.models.load import load_as_saved
from distill_cli.outputs import (
    check_free_space,
    claim,
    mark_finished,
    save_model_atomic,
    weights_bytes,
    write_json_atomic,
)
from distill_cli.recipe import DataConfig
from distill_cli.reporting import log
from distill_cli.vocabulary import surgery as vocab


def run(
    model_dir: str,
    teacher: str,
    corpus: str,
    ratio: float,
    output_dir: str | Path,
    similarity: str = "inner",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Compress a model's vocabulary; writes the model, vocab_map.json and compression.json."""
    if not 0 < ratio <= 1:
        raise DistillError(f"--ratio must be in (0, 1], got {ratio}; e.g. --ratio 0.5")
    if similarity not in vocab.SIMILARITIES:
        raise DistillError(
            f"unknown --similarity '{similarity}'; choose {', '.join(vocab.SIMILARITIES)}"
        )
    out, _ = claim(
        output_dir,
        "compress-vocab",
        {"ratio": ratio, "similarity": similarity},
        [("model", model_dir), ("teacher", teacher), ("corpus", corpus)],
        overwrite=overwrite,
        writes=("vocab_map.json", "compression.json"),
    )
    check_free_space(out, weights_bytes(model_dir), "the compressed model")
    model, tokenizer = load_as_saved(model_dir, "model", trust_remote_code)
    teacher_model, _ = load_as_saved(teacher, "teacher", trust_remote_code)
    texts = corpus_texts(corpus, tokenizer)
    model, new_tokenizer, vocab_map, report = vocab.compress(
        model, tokenizer, teacher_model, texts, ratio, similarity
    )
    result = {"model": str(model_dir), "teacher": str(teacher), "corpus": corpus}
    result.update(ratio=ratio, similarity=similarity, **report.to_dict())
    write_json_atomic(out / "vocab_map.json", vocab_map)
    write_json_atomic(out / "compression.json", result)
    save_model_atomic(model, new_tokenizer, out)  # weights last
    mark_finished(out)
    result["output_dir"] = str(out)
    return result


def corpus_texts(corpus: str, tokenizer) -> list[str]:
    """The texts whose tokens are counted: raw text as ``--data`` reads it, or, for chat data, the
    train split's conversations rendered with the model's chat template (so the template's own
    tokens count as often as a chat run reads them)."""
    cfg = DataConfig(name=corpus)
    if not chat.looks_like(cfg):
        texts = text_data.load_texts(cfg)["text"]
        log(f"counting tokens in {len(texts):,} texts")
        return texts
    template = chat.chat_template(tokenizer)
    conversations = chat.load_conversations(cfg, [cfg.train_split])[cfg.train_split]
    log(f"counting tokens in {len(conversations):,} conversations rendered with the chat template")
    return [
        chat.render(tokenizer, template, messages, f"{cfg.train_split} row {i}", False)[0]
        for i, messages in enumerate(conversations)
    ]

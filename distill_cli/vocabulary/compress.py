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
from distill_cli.tasks import cloze
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
        writes=("vocab_map.json", "compression.json", cloze.FILE),
    )
    check_free_space(out, weights_bytes(model_dir), "the compressed model")
    model, tokenizer = load_as_saved(model_dir, "model", trust_remote_code)
    teacher_model, _ = load_as_saved(teacher, "teacher", trust_remote_code)
    saved = cloze.read_saved(model_dir)
    prompt = cloze.saved_prompt(saved) if saved is not None else None
    keep = cloze.verbalizer_ids(prompt, tokenizer) if prompt is not None else []
    texts = corpus_texts(corpus, tokenizer, prompt)
    model, new_tokenizer, vocab_map, report = vocab.compress(
        model, tokenizer, teacher_model, texts, ratio, similarity, keep_ids=keep
    )
    if prompt is not None:  # the verbalizers are kept: cloze.json names their new ids
        new_id = {old: new for new, old in enumerate(vocab_map["kept_ids"])}
        saved = cloze_with_ids(saved, prompt, new_tokenizer, [new_id[i] for i in keep])
    result = {"model": str(model_dir), "teacher": str(teacher), "corpus": corpus}
    result.update(ratio=ratio, similarity=similarity, **report.to_dict())
    write_json_atomic(out / "vocab_map.json", vocab_map)
    write_json_atomic(out / "compression.json", result)
    if saved is not None:
        write_json_atomic(out / cloze.FILE, saved)
    save_model_atomic(model, new_tokenizer, out)  # weights last
    mark_finished(out)
    result["output_dir"] = str(out)
    return result


def cloze_with_ids(saved: dict, prompt: cloze.Prompt, tokenizer, ids: list[int]) -> dict:
    """cloze.json with the compressed tokenizer's verbalizer ids, checked against it."""
    got = cloze.verbalizer_ids(prompt, tokenizer)
    if got != ids:
        raise DistillError(
            f"the compressed tokenizer reads the verbalizers {list(prompt.verbalizers)} as ids "
            f"{got}, not the kept ids {ids}; compress at a higher --ratio"
        )
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return {**saved, "verbalizer_ids": ids, "verbalizer_tokens": tokens}


def cloze_texts(corpus: str, tokenizer, prompt: cloze.Prompt) -> list[str] | None:
    """The train split of ``corpus`` in the cloze template, as the model reads it, when the
    corpus is labelled data the template fits (the cloze task's data); else None."""
    cfg = DataConfig(
        name=corpus,
        task_type=cloze.NAME,
        template=prompt.template,
        verbalizers=list(prompt.verbalizers),
        labels=list(prompt.labels),
    )
    try:
        data = cloze.load(cfg, splits=[cfg.train_split])
    except DistillError:
        return None
    rows = data.splits[cfg.train_split]
    columns = [rows[c] for c in data.text_columns]
    return [cloze.render(prompt.template, list(t), tokenizer) for t in zip(*columns, strict=True)]


def corpus_texts(corpus: str, tokenizer, prompt: cloze.Prompt | None = None) -> list[str]:
    """The texts whose tokens are counted: raw text as ``--data`` reads it, or, for chat data, the
    train split's conversations rendered with the model's chat template (so the template's own
    tokens count as often as a chat run reads them); for a cloze model (``prompt``) and its
    task's data, the train split's texts in its template."""
    if prompt is not None:
        texts = cloze_texts(corpus, tokenizer, prompt)
        if texts is not None:
            log(f"counting tokens in {len(texts):,} texts in the cloze template")
            return texts
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

"""Build what a training stage needs: models, tokenized data and how batches are made.

The task stage (finetune-distill) reads labelled data into classifiers; the pre-training stage
(pretrain-distill) reads raw text into base, masked-LM or causal-LM models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from distill_cli import tasks
from distill_cli.data import batching, windows
from distill_cli.data import text as text_data
from distill_cli.data.tables import TaskData
from distill_cli.errors import DistillError, UnsupportedModel
from distill_cli.models.attention import check_attention_maps
from distill_cli.models.embedder import (
    Embedder,
    add_projection,
    head_of,
    is_sentence_transformers_folder,
    load_embedder,
    with_model,
)
from distill_cli.models.forward import is_causal, word_mode
from distill_cli.models.load import (
    build_student,
    give_pad_token,
    load_lm,
    load_teacher,
    same_vocab,
    saved_label_names,
)
from distill_cli.recipe import Recipe
from distill_cli.reporting import log
from distill_cli.tasks import cloze
from distill_cli.training import losses
from distill_cli.user_files import read_json


@dataclass
class Built:
    student: torch.nn.Module
    tokenizer: object  # the student's
    teacher: torch.nn.Module | None
    train_ds: object
    collate: object
    causal: bool = False
    task: TaskData | None = None
    eval_ds: tasks.EvalFeatures | None = None
    batch_sampler: list[list[int]] | None = None
    student_mode: str = "embeddings"
    teacher_mode: str = "embeddings"
    vocab_index: torch.Tensor | None = None  # teacher rows of a compressed student vocabulary
    id_remap: torch.Tensor | None = None  # teacher ids → compressed student ids
    input_tokenizer: object = None  # what the inputs were tokenized with (masking uses it)
    teacher_embedder: Embedder | None = None  # the teacher's transformer, pooling, Dense, norm
    student_head: Embedder | None = None  # the student's pooling, Dense, norm (no transformer)
    # how each model reads inputs longer than its positions (None: whole)
    teacher_window: windows.Spec | None = None
    student_window: windows.Spec | None = None


def _names(recipe: Recipe, teacher_only: bool = False) -> list[str]:
    """The recipe's terms (``teacher_only``: those that run the teacher), sorted."""
    names = sorted(term_names(recipe))
    return [n for n in names if losses.KD_LOSSES[n].needs_teacher] if teacher_only else names


def _needs(recipe: Recipe, teacher_only: bool = False):
    """What the recipe's terms read (``teacher_only``: those that run the teacher)."""
    return losses.needs_of(dict.fromkeys(_names(recipe, teacher_only), {}))


def window_specs(recipe: Recipe, models, kind, causal: bool, pairs=False, blank=False, main=True):
    """The (teacher, student) window specs: a model whose positions (or data.teacher_window)
    are fewer than data.max_length reads each input through windows; the terms must allow it.
    ``models``: (teacher, its tokenizer, student, its tokenizer); the teacher is None when no
    term runs it. ``kind``: the task type whose logits are combined (None: raw text)."""
    teacher, teacher_tok, student, student_tok = models
    d, specs = recipe.data, []
    for role, model, tok in (("teacher", teacher, teacher_tok), ("student", student, student_tok)):
        spec = None
        if model is not None:
            spec = windows.spec_for(model, tok, d, kind, causal, pairs, role == "teacher")
        if spec is not None:
            # the terms to name: a cloze's blank only troubles those reading its logits
            needs = {n: losses.KD_LOSSES[n].needs for n in _names(recipe, role == "teacher")}
            bad = [
                n
                for n, x in needs.items()
                if windows.unreadable(x, blank and x.logits, spec.logits)
            ]
            windows.refuse(_needs(recipe, role == "teacher"), blank, role, spec.logits, bad)
            by_rows = spec.logits and spec.position_dim is None  # sequence logits: mean or max
            if main:
                log(
                    f"{role}: reads inputs of up to data.max_length={d.max_length} tokens through "
                    f"{spec.describe()} (data.teacher_window, data.doc_stride)"
                    + (f", logits by their {spec.combine}" if by_rows else "")
                )
        specs.append(spec)
    return tuple(specs)


def _pad_id(tokenizer) -> int:
    """Causal tokenizers often have no pad token; padded positions are masked out anyway."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def term_names(recipe: Recipe) -> set[str]:
    return {name for phase in recipe.phases for name in phase.terms}


def _word_mode(recipe: Recipe, model, kind: tasks.TaskType | None = None, path=None) -> str:
    """How ``model``'s word logits are read, checked now when a loss term (or the task: cloze)
    reads them. A cloze model (``path`` has cloze.json) keeps the mode it was trained in."""
    word_terms = any(losses.KD_LOSSES[n].needs.word for n in term_names(recipe))
    word_head = kind is not None and kind.word_head
    if model is None or not (word_terms or word_head):
        return "embeddings"
    requested = recipe.word_logits
    if word_head and requested == "auto":
        requested = cloze.saved_word_logits(path) or requested
    return word_mode(requested, model, prefer_head=word_head)


def _needs_teacher(recipe: Recipe) -> bool:
    names = term_names(recipe)
    return recipe.student.init != "checkpoint" or any(
        losses.KD_LOSSES[n].needs_teacher for n in names
    )


def _rows(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


VOCAB_MAP_FIX = "run compress-vocab again to write it"


def compressed_vocab(
    student_path: str | None, teacher_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For a student made by compress-vocab (it has vocab_map.json): the teacher rows of its
    vocabulary (the fused loss's vocab_index) and the map from teacher ids to student ids
    (a dropped token becomes its substitute). Both models then read one tokenization."""
    path = Path(student_path or "") / "vocab_map.json"
    report = path.with_name("compression.json")  # copied beside the trained model at the end
    if student_path and report.is_file():
        read_json(report, "compression report", VOCAB_MAP_FIX)
    if not (student_path and path.is_file()):
        return None
    shape = {"kept_ids": list, "vocab_size_before": int, "dropped": dict}
    vmap = read_json(path, "vocabulary map", VOCAB_MAP_FIX, required=shape)
    size = vmap["vocab_size_before"]
    if teacher_rows is not None and teacher_rows != size:
        raise DistillError(
            f"vocabulary map {path} is for a teacher with {size} vocabulary rows but this one has "
            f"{teacher_rows}; compress the student with this teacher (compress-vocab --teacher)"
        )
    kept_ids, dropped = vmap["kept_ids"], vmap["dropped"]
    ids = [*kept_ids, *dropped.values(), *(int(k) if k.isdigit() else -1 for k in dropped)]
    if not all(type(i) is int and 0 <= i < size for i in ids):
        raise DistillError(
            f"vocabulary map {path} holds ids that are not token ids 0..{size - 1}; {VOCAB_MAP_FIX}"
        )
    kept = torch.tensor(kept_ids, dtype=torch.long)
    remap = torch.full((size,), -1, dtype=torch.long)
    remap[kept] = torch.arange(len(kept))
    for old_id, substitute in dropped.items():
        remap[int(old_id)] = remap[substitute]
    if (remap < 0).any():
        raise DistillError(f"{path} does not map every teacher id; {VOCAB_MAP_FIX}")
    return kept, remap


def _check_aligned(recipe: Recipe, separate: bool) -> None:
    """Token-level terms compare positions, so both models must read the same tokens."""
    token_level = {n for n in term_names(recipe) if losses.KD_LOSSES[n].token_level}
    if separate and token_level:
        raise DistillError(
            f"{', '.join(sorted(token_level))} compare token positions, so teacher and student "
            "must share a tokenizer (or the student a compressed copy of the teacher's vocabulary)"
        )
    if separate and any(p.mlm_probability > 0 for p in recipe.phases):
        raise DistillError("masking needs teacher and student to share a tokenizer")


def _check_positions_tokenizers(recipe: Recipe, separate: bool, kind: tasks.TaskType) -> None:
    """A task whose KD terms compare distributions over positions (QA start and end)."""
    teacher_terms = sorted(n for n in term_names(recipe) if losses.KD_LOSSES[n].needs_teacher)
    if separate and teacher_terms:
        raise DistillError(
            f"{', '.join(teacher_terms)} on {kind.description} compare answer positions, so "
            "teacher and student must share a tokenizer; use a student built from the teacher "
            "(student.init: truncate or config), or drop the teacher's terms"
        )


def _cloze_teacher(recipe: Recipe) -> None:
    """A teacher trained as a cloze (its folder has cloze.json) makes the data a cloze with its
    template and verbalizers, where the recipe sets no task type or these keys itself."""
    d = recipe.data
    teacher = recipe.teacher if _needs_teacher(recipe) else None
    saved = cloze.read_saved(teacher) if teacher and Path(teacher).is_dir() else None
    if saved is None or (d.task_type is not None and not tasks.get(d.task_type).word_head):
        return
    for key, value in cloze.data_settings(saved).items():
        if getattr(d, key) is None:
            setattr(d, key, value)


def _student_source(recipe: Recipe) -> str | None:
    """The folder a student's weights come from: its checkpoint, or the teacher it is built from."""
    return recipe.student.path if recipe.student.init == "checkpoint" else recipe.teacher


def build_task(recipe: Recipe, main: bool, trust_remote_code: bool) -> Built:
    d = recipe.data
    _cloze_teacher(recipe)
    # labels the data does not name follow the teacher's order, as evaluate reads them
    names = None
    if _needs_teacher(recipe):
        names = saved_label_names(recipe.teacher, "teacher", trust_remote_code)
    task = tasks.load_task_data(
        d, splits=[d.train_split], label_names=names, optional=(d.eval_split,)
    )
    kind = tasks.of(task)
    has_eval = d.eval_split != d.train_split and d.eval_split in task.splits
    if main and not has_eval:
        log(f"no '{d.eval_split}' split in the data: skipping evaluation after training")
    if _embedding_terms(recipe):
        raise DistillError(
            f"{', '.join(_embedding_terms(recipe))} train a sentence embedder: use them in "
            "pretrain-distill (recipes/embedding.yaml), not finetune-distill"
        )
    class_terms = sorted(n for n in term_names(recipe) if losses.KD_LOSSES[n].class_logits)
    if class_terms and not kind.class_logits:
        usable = [n for n, t in losses.KD_LOSSES.items() if t.task_only and not t.class_logits]
        raise DistillError(
            f"{', '.join(class_terms)} need class logits, and this task is regression; "
            f"use {' or '.join(usable)} instead"
        )

    teacher = teacher_tok = None
    if _needs_teacher(recipe):
        teacher, teacher_tok = load_teacher(
            recipe.teacher, task.labels, task.task_type, trust_remote_code
        )
    student, student_tok = build_student(
        recipe.student, teacher, teacher_tok, task.labels, task.task_type, trust_remote_code, log
    )
    check_attention_maps(student, term_names(recipe))
    for model, tok, role in ((teacher, teacher_tok, "teacher"), (student, student_tok, "student")):
        if model is not None:
            give_pad_token(model, tok)
            if kind.word_head:  # a cloze: the blank is read as the tokenizer allows
                cloze.check_reader(model.config, tok, role)
    compressed = (
        compressed_vocab(recipe.student.path, _rows(teacher)) if teacher is not None else None
    )
    separate = teacher_tok is not None and not compressed
    separate = separate and not same_vocab(student_tok, teacher_tok)
    if kind.compares_positions:
        _check_positions_tokenizers(recipe, separate, kind)
    _check_aligned(recipe, separate)
    input_tok = teacher_tok if compressed else student_tok
    t_tok = teacher_tok if separate else None
    causal = is_causal((teacher or student).config)
    # a model with fewer positions than data.max_length reads windows (checked before the data)
    t_window, s_window = window_specs(
        recipe,
        (teacher if _needs(recipe, True).teacher else None, teacher_tok, student, student_tok),
        kind,
        causal,
        windows.keeps_first_text(task),
        kind.word_head,
        main,
    )
    train_ds = kind.train_features(task.splits[d.train_split], task, input_tok, d, t_tok)
    eval_ds = None
    if has_eval:
        eval_ds = kind.eval_features(task.splits[d.eval_split], task, student_tok, d, d.eval_split)
    collate = batching.PadCollator(_pad_id(student_tok), _pad_id(teacher_tok) if separate else None)
    return Built(
        student=student,
        tokenizer=student_tok,
        teacher=teacher,
        train_ds=train_ds,
        collate=collate,
        causal=causal,  # next-token words, never masked
        task=task,
        eval_ds=eval_ds,
        # a student built from the teacher is read as the teacher is
        student_mode=_word_mode(recipe, student, kind, _student_source(recipe)),
        teacher_mode=_word_mode(recipe, teacher, kind, recipe.teacher),
        vocab_index=compressed[0] if compressed else None,
        id_remap=compressed[1] if compressed else None,
        input_tokenizer=input_tok,
        teacher_window=t_window,
        student_window=s_window,
    )


def _embedding_terms(recipe: Recipe) -> list[str]:
    return sorted(n for n in term_names(recipe) if losses.KD_LOSSES[n].needs.embedding)


def _load_teacher_embedder(recipe: Recipe, trust_remote_code: bool):
    """The teacher as a sentence embedder: its sentence-transformers pooling, or the recipe's."""
    pooling = None if recipe.pooling in (None, "auto") else recipe.pooling
    return load_embedder(
        recipe.teacher,
        "teacher",
        trust_remote_code,
        pooling,
        require_pooling=recipe.pooling is None,
    )


def _student_embedder(recipe: Recipe, teacher: Embedder, tokenizer, trust_remote_code: bool):
    """The student transformer and its head: a sentence-transformers checkpoint's own, else the
    teacher's pooling and normalisation, the teacher's Dense when the widths allow, and a new
    projection to the teacher's embedding size when they differ."""
    spec = recipe.student
    if spec.init == "checkpoint" and is_sentence_transformers_folder(spec.path):
        whole, student_tok = load_embedder(spec.path, "student", trust_remote_code)
    else:
        student, student_tok = build_student(
            spec, teacher.model, tokenizer, trust_remote_code=trust_remote_code, log=log
        )
        if spec.init == "checkpoint":
            student = student.base_model  # a checkpoint with an LM head: its encoder
        whole = with_model(head_of(teacher), student)
        whole.max_seq_length = teacher.max_seq_length
        if teacher.dense is not None:
            if whole.hidden_size == teacher.hidden_size:
                whole.dense = copy.deepcopy(teacher.dense)
                whole.activation = copy.deepcopy(teacher.activation)
            else:
                whole.dense = None
    add_projection(whole, teacher.embedding_dim)
    return whole.model, student_tok, head_of(whole)


def build_pretrain(recipe: Recipe, main: bool, trust_remote_code: bool) -> Built:
    task_terms = sorted(n for n in term_names(recipe) if losses.KD_LOSSES[n].task_only)
    if task_terms:
        usable = [n for n, t in losses.KD_LOSSES.items() if not t.task_only]
        raise DistillError(
            f"{', '.join(task_terms)} need a classifier and labels: use them in "
            f"finetune-distill; pretrain-distill takes {', '.join(usable)}"
        )
    teacher_embedder = student_head = None
    if _embedding_terms(recipe):
        teacher_embedder, tokenizer = _load_teacher_embedder(recipe, trust_remote_code)
        teacher = teacher_embedder.model
    else:
        teacher, tokenizer = load_lm(recipe.teacher, "teacher", trust_remote_code)
    if teacher.config.is_encoder_decoder:
        raise UnsupportedModel(
            teacher.config.model_type,
            "pretrain-distill",
            "it is an encoder-decoder model; this stage distils encoder-only and decoder-only LMs",
        )
    if teacher_embedder is not None:
        student, student_tok, student_head = _student_embedder(
            recipe, teacher_embedder, tokenizer, trust_remote_code
        )
    else:
        student, student_tok = build_student(
            recipe.student, teacher, tokenizer, trust_remote_code=trust_remote_code, log=log
        )
    check_attention_maps(student, term_names(recipe))
    compressed = compressed_vocab(recipe.student.path, _rows(teacher))
    if not compressed and not same_vocab(student_tok, tokenizer):
        _check_aligned(recipe, separate=True)
    causal = is_causal(teacher.config)
    if causal and any(p.mlm_probability > 0 for p in recipe.phases) and main:
        log("causal LM: token masking is off (mlm_probability applies to encoders only)")
    # a teacher (or student) with fewer positions than data.max_length reads windows
    t_window, s_window = window_specs(
        recipe, (teacher, tokenizer, student, student_tok), None, causal, main=main
    )
    d = recipe.data
    texts = text_data.load_texts(d)
    train_ds = text_data.tokenize_texts(texts, tokenizer, d.max_length, d.packing, causal)
    sampler = None
    if d.packing == "bucket":
        lengths = [len(ids) for ids in train_ds["input_ids"]]
        sampler = text_data.bucket_batches(lengths, recipe.train.batch_size, recipe.train.seed)
    return Built(
        student=student,
        tokenizer=student_tok,
        teacher=teacher,
        train_ds=train_ds,
        collate=batching.PadCollator(_pad_id(tokenizer)),
        causal=causal,
        batch_sampler=sampler,
        student_mode=_word_mode(recipe, student),
        teacher_mode=_word_mode(recipe, teacher),
        vocab_index=compressed[0] if compressed else None,
        id_remap=compressed[1] if compressed else None,
        input_tokenizer=tokenizer,
        teacher_embedder=teacher_embedder,
        student_head=student_head,
        teacher_window=t_window,
        student_window=s_window,
    )

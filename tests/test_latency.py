"""latency.median_ms: warm-up calls untimed, then every batch timed per repeat; median in ms."""

from distill_cli.evaluation import latency
from distill_cli.evaluation.latency import median_ms


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

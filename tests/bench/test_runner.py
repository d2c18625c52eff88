import pytest

from leanvision.bench import Case, format_table, run_cases, time_call


def test_time_call_warms_up_then_samples():
    counter = {"calls": 0}

    def work():
        counter["calls"] += 1
        return sum(range(50000))

    samples = time_call(work, warmup=3, repeat=4, min_sample_s=0.0)
    assert len(samples) == 4
    assert all(sample > 0 for sample in samples)
    assert counter["calls"] == 3 + 1 + 4  # warm-up, calibration call, samples


def test_short_calls_are_looped_inside_a_sample():
    counter = {"calls": 0}

    def noop():
        counter["calls"] += 1

    time_call(noop, warmup=0, repeat=2, min_sample_s=0.01)
    assert counter["calls"] > 10


def test_speedup_is_relative_to_the_baseline_of_the_same_group(monkeypatch):
    # A fake clock that only the timed functions advance: the ratios are exact, not timings.
    now = [0.0]
    monkeypatch.setattr("leanvision.bench.runner.time.perf_counter", lambda: now[0])

    def costs(seconds):
        return lambda: now.__setitem__(0, now[0] + seconds)

    cases = [
        Case("base", costs(0.4), group="a", baseline=True),
        Case("quarter", costs(0.1), group="a"),
        Case("alone", costs(0.2), group="b"),
    ]
    rows = {t.case: t for t in run_cases("demo", cases, repeat=5)}
    assert rows["base"].speedup == pytest.approx(1.0)
    assert rows["quarter"].speedup == pytest.approx(4.0)
    assert rows["alone"].speedup is None
    table = format_table(list(rows.values()))
    assert "baseline" in table and "quarter" in table

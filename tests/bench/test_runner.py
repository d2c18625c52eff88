import json

import numpy as np
import pytest

from leanvision.bench import Case, format_table, run_cases, time_call, write_json


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


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that only the timed functions advance (so every ratio is exact), and a log of
    which case each call belonged to."""
    clock = {"now": 0.0, "calls": []}
    monkeypatch.setattr("leanvision.bench.runner.time.perf_counter", lambda: clock["now"])

    def costs(name, seconds, slow=None):
        """A call of ``name`` taking ``seconds`` (an iterator: one value per call), five times
        that when its index among all calls is in ``slow``."""
        values = iter(seconds) if not isinstance(seconds, float) else None

        def call():
            cost = next(values) if values is not None else seconds
            if slow is not None and len(clock["calls"]) in slow:
                cost *= 5
            clock["calls"].append(name)
            clock["now"] += cost

        return call

    clock["costs"] = costs
    return clock


def table_row(table: str, case: str) -> list[str]:
    header, _rule, *rows = table.splitlines()
    columns = header.split()
    row = next(row for row in rows if f"  {case}  " in row)
    return row, columns


def test_case_and_baseline_alternate_and_the_ratio_is_the_median_of_pair_ratios(fake_clock):
    # per-call seconds, the first of each list being the calibration call
    base = [0.4, 0.40, 0.44, 0.40, 0.50, 0.42]
    fast = [0.1, 0.10, 0.12, 0.08, 0.10, 0.20]
    cases = [
        Case("base", fake_clock["costs"]("base", base), group="g", baseline=True),
        Case("fast", fake_clock["costs"]("fast", fast), group="g"),
    ]
    rows = {t.case: t for t in run_cases("demo", cases, warmup=0, repeat=5)}
    assert fake_clock["calls"] == ["base", "fast"] + ["base", "fast"] * 5
    ratios = np.array(base[1:]) / np.array(fast[1:])  # [4, 3.67, 5, 5, 2.1]
    row = rows["fast"]
    assert row.speedup == pytest.approx(np.median(ratios))  # 4.0; the medians' ratio is 4.2
    assert row.speedup_low == pytest.approx(np.percentile(ratios, 25))
    assert row.speedup_high == pytest.approx(np.percentile(ratios, 75))
    assert row.samples_s == pytest.approx(fast[1:]) and row.repeats == 5
    assert row.paired_baseline_s == pytest.approx(base[1:])
    assert row.spread == pytest.approx(
        (np.percentile(fast[1:], 75) - np.percentile(fast[1:], 25)) / np.median(fast[1:])
    )
    assert rows["base"].speedup == 1.0 and rows["base"].median_s == pytest.approx(0.42)
    cells, columns = table_row(format_table(list(rows.values())), "fast")
    assert "4.00x" in cells and f"{np.percentile(ratios, 25):.2f}-" in cells


def test_the_baseline_pools_its_samples_from_every_pair(fake_clock):
    cases = [
        Case("base", fake_clock["costs"]("base", 0.4), group="g", baseline=True),
        Case("half", fake_clock["costs"]("half", 0.2), group="g"),
        Case("quarter", fake_clock["costs"]("quarter", 0.1), group="g"),
    ]
    rows = {t.case: t for t in run_cases("demo", cases, warmup=1, repeat=3)}
    timed = fake_clock["calls"][-6:]
    assert timed == ["base", "quarter"] * 3  # the last case's pairs, in turn
    assert rows["base"].repeats == 6 and rows["half"].repeats == 3
    assert rows["half"].speedup == pytest.approx(2.0)
    assert rows["quarter"].speedup == pytest.approx(4.0)


def test_one_slow_patch_of_time_does_not_decide_the_ratio(fake_clock):
    # Calls 4-7 (after one calibration call each) run 5x slower: two whole pairs. Timed in
    # blocks (base x5 then case x5), three of the baseline's five samples would be slow.
    slow = range(4, 8)
    cases = [
        Case("base", fake_clock["costs"]("base", 0.4, slow), group="g", baseline=True),
        Case("fast", fake_clock["costs"]("fast", 0.1, slow), group="g"),
    ]
    rows = {t.case: t for t in run_cases("demo", cases, warmup=0, repeat=5)}
    assert rows["fast"].speedup == pytest.approx(4.0)
    assert rows["fast"].speedup_low == pytest.approx(4.0)
    assert rows["fast"].speedup_high == pytest.approx(4.0)
    assert max(rows["fast"].samples_s) == pytest.approx(0.5)  # the patch was in the samples


@pytest.mark.parametrize("repeat", [1, 2])
def test_fewer_than_three_samples_show_the_count_and_no_spread(fake_clock, repeat):
    cases = [
        Case("base", fake_clock["costs"]("base", 0.4), group="g", baseline=True),
        Case("fast", fake_clock["costs"]("fast", 0.1), group="g"),
    ]
    timings = run_cases("demo", cases, warmup=0, repeat=repeat)
    fast = timings[1]
    assert fast.repeats == repeat and fast.spread is None
    assert fast.speedup == pytest.approx(4.0) and fast.speedup_low is None
    cells, columns = table_row(format_table(timings), "fast")
    assert "±" not in cells
    values = cells.split()
    assert values[columns.index("spread")] == "-" and values[columns.index("n")] == str(repeat)


def test_three_samples_show_a_spread_and_an_interval(fake_clock):
    cases = [
        Case("base", fake_clock["costs"]("base", 0.4), group="g", baseline=True),
        Case("fast", fake_clock["costs"]("fast", 0.1), group="g"),
    ]
    timings = run_cases("demo", cases, warmup=0, repeat=3)
    cells, _ = table_row(format_table(timings), "fast")
    assert "±0.0%" in cells and "4.00-4.00x" in cells


def test_a_ratio_above_its_flops_bound_is_flagged_as_noise(fake_clock, tmp_path):
    cases = [
        Case("base", fake_clock["costs"]("base", 0.4), group="g", baseline=True),
        # 4x faster while doing half the work: at most 2x is possible, so this is noise
        Case("too fast", fake_clock["costs"]("too fast", 0.1), group="g", compute_ratio=0.5),
        Case("honest", fake_clock["costs"]("honest", 0.1), group="g", compute_ratio=0.2),
        Case("at bound", fake_clock["costs"]("at bound", 0.1), group="g", compute_ratio=0.25),
    ]
    timings = run_cases("demo", cases, warmup=0, repeat=3)
    rows = {t.case: t for t in timings}
    assert rows["too fast"].bound == pytest.approx(2.0) and rows["too fast"].above_bound
    assert rows["honest"].bound == pytest.approx(5.0) and not rows["honest"].above_bound
    assert not rows["at bound"].above_bound and rows["base"].bound is None
    table = format_table(timings)
    assert "NOISE" in table_row(table, "too fast")[0]
    assert "NOISE" not in table_row(table, "honest")[0]
    assert "<=5.00x" in table_row(table, "honest")[0]
    path = write_json(timings, tmp_path / "t.json", {}, {})
    written = {row["case"]: row for row in json.loads(path.read_text())["results"]}
    assert written["too fast"]["above_bound"] is True and written["honest"]["above_bound"] is False
    assert written["too fast"]["bound"] == pytest.approx(2.0)


def test_setup_runs_before_every_sample(fake_clock):
    # Two cases sharing one model: each must be timed in its own state, whatever ran before.
    state = {"patch": None}
    seen = {"base": set(), "patched": set()}

    def call(name, seconds):
        advance = fake_clock["costs"](name, seconds)
        return lambda: (seen[name].add(state["patch"]), advance())

    cases = [
        Case(
            "base",
            call("base", 0.4),
            group="g",
            baseline=True,
            setup=lambda: state.update(patch=None),
        ),
        Case("patched", call("patched", 0.1), group="g", setup=lambda: state.update(patch="p")),
    ]
    run_cases("demo", cases, warmup=1, repeat=3)
    assert seen == {"base": {None}, "patched": {"p"}}

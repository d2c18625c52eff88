import dataclasses
import json
import math

import numpy as np
import pytest

from leanvision.bench import BenchOptions, get_suite, run_cases, write_json
from leanvision.bench.suites import DEFAULT_SUITES, SUITES
from leanvision.bench.suites.vlm import (
    BASELINE,
    IN_LLM,
    PRE_LLM,
    REFERENCE_TOKENS,
    VIDEO_ONLY,
    VLMBenchConfig,
    default_config,
    method_options,
    vlm_cases,
)
from leanvision.compat import transformers as tf_compat
from leanvision.vlm.registry import load_methods

# Real token counts (576 per image, 196 per video frame) on the narrowest shapes; batch 2 so
# left padding and per-row prompts are exercised, one budget, 2 frames.
TINY = VLMBenchConfig(
    scales=(1 / 64, 1 / 8),
    video_scales=(1 / 64, 1 / 8),
    video_frames=2,
    budgets=(64,),
    batches=(2,),
    new_tokens=3,
    repeats=1,
)


@pytest.fixture(scope="module")
def quick_cases(one_thread):
    return list(vlm_cases(BenchOptions(quick=True), TINY))


@pytest.fixture(scope="module")
def recorded(quick_cases):
    """The cases timed by the runner (2 pairs each), recording the KV-cache length of the last
    layer every timed call of a case left behind: one value per case if its own patch was
    always in place (in-LLM methods prune after layer 0, so the last layer tells)."""
    lengths: dict[str, list[int]] = {}

    def recording(case):
        def call():
            output = case.fn()
            cache = tf_compat.output_cache(output)
            key = f"{case.group} / {case.name}"
            lengths.setdefault(key, []).append(cache.get_seq_length(len(cache.layers) - 1))
            return output

        return dataclasses.replace(case, fn=call)

    cases = [recording(case) for case in quick_cases]
    timings = run_cases("vlm", cases, BenchOptions(quick=True), warmup=0, repeat=2)
    return timings, lengths


@pytest.fixture(scope="module")
def timings(recorded):
    return recorded[0]


def test_vlm_suite_is_registered_but_not_a_default():
    assert SUITES["vlm"] == "leanvision.bench.suites.vlm"
    assert "vlm" not in DEFAULT_SUITES
    assert "FLOPs" in get_suite("vlm").description


def test_quick_config_is_smaller_and_cuda_runs_batch_8():
    full, quick = default_config(BenchOptions()), default_config(BenchOptions(quick=True))
    assert quick.budgets == (64,) and set(full.budgets) == {192, 128, 64}
    assert quick.scales[0] < full.scales[0] and quick.repeats < full.repeats
    cuda = default_config(BenchOptions(device="cuda"))
    assert cuda.scales == (1.0, 1.0) and 8 in cuda.batches
    assert 8 in default_config(BenchOptions(device="cuda", quick=True)).batches


@pytest.mark.parametrize("budget", [192, 128, 64])
def test_every_method_resolves_to_a_valid_config_ending_at_the_budget(budget):
    keep = budget / REFERENCE_TOKENS
    for method in PRE_LLM + IN_LLM + VIDEO_ONLY:
        name, options = method_options(method, budget)
        config, _apply = load_methods().resolve(name, **options)  # validates the options
        if name in ("temporal", "progressive_pool"):
            assert getattr(config, "keep", None) in (None, pytest.approx(keep))
        else:
            assert config.keep == pytest.approx(keep)
    with pytest.raises(ValueError, match="method must be one of"):
        method_options("nonsense", 64)


def test_quick_suite_has_every_method_and_one_baseline_per_group(quick_cases):
    groups: dict[str, list] = {}
    for case in quick_cases:
        groups.setdefault(case.group, []).append(case)
    assert len(groups) == 2  # images, video
    for name, cases in groups.items():
        assert [case.name for case in cases if case.baseline] == [BASELINE], name
    image = next(cases for name, cases in groups.items() if "image" in name)
    video = next(cases for name, cases in groups.items() if "video 2f" in name)
    assert {case.name for case in image} == {BASELINE} | {f"{m} @64" for m in PRE_LLM + IN_LLM}
    video_names = {case.name.split(" @")[0] for case in video}
    assert set(VIDEO_ONLY) <= video_names and "fastv" in video_names
    assert all(case.items == 2 and case.unit == "prompts" for case in quick_cases)


def test_compressed_rows_report_fewer_tokens_flops_and_cache(quick_cases):
    baselines = {case.group: case.metrics for case in quick_cases if case.baseline}
    image_base = next(m for group, m in baselines.items() if "image" in group)
    assert image_base["visual tokens"] == 576 and image_base["FLOPs ratio"] == 1.0
    for case in quick_cases:
        if case.baseline:
            continue
        base, metrics = baselines[case.group], case.metrics
        assert metrics["visual tokens"] < base["visual tokens"], case.name
        assert 0 < metrics["FLOPs ratio"] < 1 and metrics["GFLOPs"] < base["GFLOPs"], case.name
        assert 0 < metrics["KV MiB"] < base["KV MiB"], case.name
        assert metrics["decode tok/s"] > 0 and math.isfinite(metrics["decode vs base"])
        assert metrics["decode IQR"] == "n=1", case.name  # TINY.repeats pairs: no interval
        assert case.compute_ratio == metrics["FLOPs ratio"], case.name
        method = case.name.split(" @")[0]
        if method in IN_LLM:  # early layers still see every visual token
            assert metrics["avg visual/layer"] > metrics["visual tokens"], case.name
        assert not any("scoring" in name for name in metrics), case.name
    pre_llm_image = [
        c for c in quick_cases if "image" in c.group and c.name.split(" @")[0] in PRE_LLM
    ]
    # pre-LLM methods at @64 feed exactly 64 of 576 tokens per image
    assert {c.metrics["visual tokens"] for c in pre_llm_image} == {64}


def test_every_timed_call_ran_with_its_own_patch(recorded, quick_cases):
    # The runner alternates each row with the baseline on the same model: a row whose setup
    # did not switch the patch back would leave another row's cache length.
    _timings, lengths = recorded
    per_group = {}
    for case in quick_cases:
        seen = set(lengths[f"{case.group} / {case.name}"])
        assert len(seen) == 1, (case.group, case.name, seen)
        per_group.setdefault(case.group, {})[case.name] = seen.pop()
    for group, seq in per_group.items():
        assert all(seq[BASELINE] > n for name, n in seq.items() if name != BASELINE), group


def test_ratios_are_pair_medians_checked_against_the_flops_bound(timings, quick_cases, tmp_path):
    assert [t.case for t in timings] == [c.name for c in quick_cases]
    for timing, case in zip(timings, quick_cases, strict=True):
        if timing.baseline:
            others = sum(c.group == case.group and not c.baseline for c in quick_cases)
            assert timing.speedup == 1.0 and timing.bound is None
            assert timing.repeats == 2 * others  # its samples from every pair of its group
            continue
        assert timing.repeats == 2 and timing.spread is None and timing.speedup_low is None
        pairs = np.array(timing.paired_baseline_s) / np.array(timing.samples_s)
        assert timing.speedup == pytest.approx(np.median(pairs)), timing.case
        assert timing.bound == pytest.approx(1 / case.metrics["FLOPs ratio"]), timing.case
        assert timing.above_bound == (timing.speedup > timing.bound), timing.case
    path = write_json(timings, tmp_path / "vlm.json", {"device": "cpu"}, {"quick": True})
    rows = json.loads(path.read_text())["results"]
    assert [row["case"] for row in rows] == [t.case for t in timings]
    assert all("visual tokens" in row["metrics"] for row in rows)
    assert [row["above_bound"] for row in rows] == [t.above_bound for t in timings]


def test_cases_switch_patches_so_any_order_runs(quick_cases):
    # Timing order is the runner's business: a case's setup must apply its own method whatever ran
    # before it, and the baseline must run unpatched after a compressed case.
    image = [case for case in quick_cases if "image" in case.group]
    baseline = next(case for case in image if case.baseline)
    fastv = next(case for case in image if case.name.startswith("fastv"))
    pool = next(case for case in image if case.name.startswith("pool"))

    def run(case):
        case.setup()
        return tf_compat.output_cache(case.fn()).get_seq_length()

    seq = {name: run(case) for name, case in (("fastv", fastv), ("base", baseline), ("pool", pool))}
    assert seq["pool"] < seq["base"]
    assert run(baseline) == seq["base"]


def test_decode_is_measured_in_turn_with_the_baseline(monkeypatch):
    # A stand-in workload: what _decode_pairs measures is which patch is on, in which order.
    from leanvision.bench.suites import vlm as suite

    class Patches:
        key = "unset"

        def use(self, method, options):
            self.key = method

    work = suite._Workload("g", None, {}, Patches(), 1, "cpu")
    calls = []

    def decode_seconds(work, new_tokens):
        calls.append(work.patches.key)
        return float(len(calls))

    monkeypatch.setattr(suite, "_decode_seconds", decode_seconds)
    config = dataclasses.replace(TINY, repeats=3)
    base, own = suite._decode_pairs(work, ("pool", {"keep": 0.5}), config)
    assert calls == [None, "pool"] * 4  # a warm-up pair, then 3 pairs
    assert (base, own) == ([3.0, 5.0, 7.0], [4.0, 6.0, 8.0])

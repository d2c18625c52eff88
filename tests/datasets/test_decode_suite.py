import os

import pytest

from leanvision.bench import BenchOptions, get_suite, run_cases
from leanvision.datasets.video_backends import import_optional

pytest.importorskip("av")


@pytest.fixture(scope="module")
def quick_cases():
    return list(get_suite("decode").cases(BenchOptions(quick=True)))


def test_decode_suite_is_registered():
    from leanvision.bench.suites import SUITES

    assert SUITES["decode"] == "leanvision.bench.suites.decode"
    assert "decord" in get_suite("decode").description


def test_groups_have_one_baseline_and_two_video_resolutions(quick_cases):
    groups: dict[str, list] = {}
    for case in quick_cases:
        groups.setdefault(case.group, []).append(case)
    for name, cases in groups.items():
        assert sum(case.baseline for case in cases) == 1, name
    video_groups = [name for name in groups if name.startswith("video")]
    assert {name.split()[1] for name in video_groups} == {"320x240", "1280x960"}
    assert {"image -> 224px", "image -> 336px"} <= set(groups)
    names = {case.name for case in quick_cases}
    assert "pyav all frames" in names
    if import_optional("decord") is not None:
        assert "decord all frames" in names


def test_every_case_runs_and_returns_what_it_claims(quick_cases):
    for case in quick_cases:
        result = case.fn()
        if case.unit == "frames":
            assert len(result) == case.items and result.frames.shape[0] == case.items
            expected = [int(part) for part in case.metrics["resolution"].split("x")]
            assert list(result.frames.shape[1:3]) == expected[::-1]
        else:
            assert case.unit == "images" and len(result) == case.items


def test_quick_mode_decodes_fewer_frames(quick_cases):
    def frames_per_group(cases):
        return {case.group: case.items for case in cases if case.unit == "frames"}

    full = frames_per_group(get_suite("decode").cases(BenchOptions()))
    quick = frames_per_group(quick_cases)
    assert set(quick) == set(full)
    assert all(quick[group] < full[group] for group in quick)


def test_the_runner_times_the_quick_suite(quick_cases):
    # One case per group keeps this short; the runner itself is tested in tests/bench.
    firsts = {case.group: case for case in reversed(quick_cases)}
    timings = run_cases(
        "decode", list(firsts.values()), BenchOptions(quick=True), warmup=0, repeat=1
    )
    assert len(timings) == len(firsts)
    assert all(timing.throughput > 0 for timing in timings)


def test_scratch_files_live_in_a_temporary_directory(quick_cases):
    video_paths = {case.fn().path for case in quick_cases if case.unit == "frames"}
    upscaled = [path for path in video_paths if "1280x960" in os.path.basename(path)]
    assert upscaled and all(os.path.exists(path) for path in upscaled)
    assert all("leanvision-bench-decode-" in path for path in upscaled)

"""benchmarks/diffusion_steps.py: per-call costs composed into a 50-step run, on a tiny UNet."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("diffusion_steps")


def test_compose_mixes_full_and_cached_calls_by_the_schedule(script):
    rows = {
        "baseline": {"seconds": {"full": 2.0, "cached": 2.0}, "macs": {"full": 100, "cached": 100}},
        "deepcache interval=3": {
            "seconds": {"full": 2.0, "cached": 0.5},
            "macs": {"full": 100, "cached": 10},
        },
    }
    table = script.compose(rows, {"baseline": 50, "deepcache interval=3": 17})
    base, cached = table
    assert base["speedup"] == 1.0 and base["macs_ratio"] == 1.0 and base["cached_s"] is None
    assert cached["steps"] == "17F+33C"
    assert cached["total_s"] == pytest.approx(17 * 2.0 + 33 * 0.5)
    assert cached["speedup"] == pytest.approx(100.0 / (34.0 + 16.5))
    assert cached["macs_ratio"] == pytest.approx((17 * 100 + 33 * 10) / 5000)


def test_full_steps_follow_the_deepcache_interval(script):
    assert script._full_steps([]) == 50
    assert script._full_steps([("tome", {"ratio": 0.5})]) == 50
    assert script._full_steps([("deepcache", {"interval": 3}), ("tome", {"ratio": 0.5})]) == 17
    assert script._full_steps([("deepcache", {"interval": 5})]) == 10


def test_runs_end_to_end_on_a_tiny_unet(script, tmp_path):
    out = tmp_path / "steps.txt"
    assert script.main(["--image", "64", "--width", "0.1", "--repeat", "1", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert set(script.SETTINGS) <= set(rows)
    # The MACs ratios are exact: DeepCache's cached calls cost less, so the ratio drops.
    ratio = {name: float(rows[name].split(" | ")[-1].strip(" |")) for name in script.SETTINGS}
    assert ratio["baseline"] == 1.0
    assert ratio["deepcache interval=5"] < ratio["deepcache interval=3"] < ratio["tome r=0.5"] < 1
    assert ratio["deepcache interval=3 + tome r=0.5"] < ratio["deepcache interval=3"]
    assert ratio["deepcache interval=5 + tome r=0.5"] < ratio["deepcache interval=5"]

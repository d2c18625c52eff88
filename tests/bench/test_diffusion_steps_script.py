"""benchmarks/diffusion_steps.py: per-call costs composed into a 50-step run, on a tiny UNet."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("diffusion_steps")


def test_compose_mixes_full_and_cached_calls_by_the_schedule(script):
    rows = {
        "baseline": {
            "seconds": {"full": [2.0, 2.4, 2.0], "cached": [2.0, 2.4, 2.0]},
            "baseline_s": [2.0, 2.4, 2.0],
            "macs": {"full": 100, "cached": 100},
        },
        "deepcache interval=3": {  # its third sample fell in a slow patch, with its baseline
            "seconds": {"full": [2.0, 2.0, 4.0], "cached": [0.5, 0.5, 1.0]},
            "baseline_s": [2.0, 2.4, 4.4],
            "macs": {"full": 100, "cached": 10},
        },
        "deepcache interval=5": {  # 7x faster at 0.28 of the MACs: noise
            "seconds": {"full": [1.0, 1.0, 1.0], "cached": [0.1, 0.1, 0.1]},
            "baseline_s": [2.0, 2.0, 2.0],
            "macs": {"full": 100, "cached": 10},
        },
    }
    full_steps = {"baseline": 50, "deepcache interval=3": 17, "deepcache interval=5": 10}
    base, cached, noisy = script.compose(rows, full_steps)
    assert base["speedup"] == 1.0 and base["macs_ratio"] == 1.0 and base["cached_s"] is None
    assert cached["steps"] == "17F+33C"
    assert cached["total_s"] == pytest.approx(17 * 2.0 + 33 * 0.5)  # from the medians
    assert cached["paired_baseline_s"] == pytest.approx(2.4)
    pairs = 50 * np.array([2.0, 2.4, 4.4]) / np.array([50.5, 50.5, 101.0])
    assert cached["speedup"] == pytest.approx(np.median(pairs))  # 2.18; medians' ratio: 2.38
    low, high = np.percentile(pairs, 25), np.percentile(pairs, 75)
    assert cached["speedup_iqr"] == f"{low:.2f}-{high:.2f}x" and cached["pairs"] == 3
    assert cached["macs_ratio"] == pytest.approx((17 * 100 + 33 * 10) / 5000)
    assert not cached["above_bound"]
    assert noisy["speedup"] == pytest.approx(100 / 14) and noisy["bound"] == pytest.approx(1 / 0.28)
    assert noisy["above_bound"]
    table = script.format_rows([base, cached, noisy], "title")
    assert [line.count("NOISE") for line in table.splitlines()[-3:]] == [0, 0, 1]


def test_fewer_than_three_samples_give_no_interval(script):
    rows = {
        "baseline": {
            "seconds": {"full": [2.0, 2.0], "cached": [2.0, 2.0]},
            "baseline_s": [2.0, 2.0],
            "macs": {"full": 100, "cached": 100},
        },
        "tome r=0.5": {
            "seconds": {"full": [1.0, 1.0], "cached": [1.0, 1.0]},
            "baseline_s": [2.0, 2.0],
            "macs": {"full": 60, "cached": 60},
        },
    }
    _base, tome = script.compose(rows, {"baseline": 50, "tome r=0.5": 50})
    assert tome["speedup"] == pytest.approx(2.0) and tome["speedup_iqr"] == "n=2"


def test_full_steps_follow_the_deepcache_interval(script):
    assert script._full_steps([]) == 50
    assert script._full_steps([("tome", {"ratio": 0.5})]) == 50
    assert script._full_steps([("deepcache", {"interval": 3}), ("tome", {"ratio": 0.5})]) == 17
    assert script._full_steps([("deepcache", {"interval": 5})]) == 10


def test_runs_end_to_end_on_a_tiny_unet(script, tmp_path):
    out = tmp_path / "steps.txt"
    assert script.main(["--image", "64", "--width", "0.1", "--repeat", "1", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header = next(row for row in cells if row[0] == "setting")
    rows = {row[0]: row for row in cells if len(row) == len(header)}
    assert set(script.SETTINGS) <= set(rows)
    # The MACs ratios are exact: DeepCache's cached calls cost less, so the ratio drops.
    column = header.index("MACs ratio")
    ratio = {name: float(rows[name][column]) for name in script.SETTINGS}
    assert ratio["baseline"] == 1.0
    assert ratio["deepcache interval=5"] < ratio["deepcache interval=3"] < ratio["tome r=0.5"] < 1
    assert ratio["deepcache interval=3 + tome r=0.5"] < ratio["deepcache interval=3"]
    assert ratio["deepcache interval=5 + tome r=0.5"] < ratio["deepcache interval=5"]


def test_measure_takes_each_sample_in_turn_with_a_baseline_call(script, monkeypatch):
    import diffusers as df
    import torch

    from leanvision.bench.suites.diffusion import build_seeded, sd15_unet_config

    config = sd15_unet_config(0.1)
    unet = build_seeded("cpu", torch.float32, lambda: df.UNet2DConditionModel(**config))
    inputs = dict(
        sample=torch.randn(2, 4, 8, 8),
        encoder_hidden_states=torch.randn(2, 77, config["cross_attention_dim"]),
    )
    # A clock that returns the index of each timed call: the lists then show the order.
    order = iter(range(1, 100))

    def numbered(fn, device="cpu"):
        fn()
        return float(next(order))

    monkeypatch.setattr("leanvision.bench.runner.call_seconds", numbered)
    with torch.no_grad():
        row = script.measure(unet, inputs, [("deepcache", {"interval": 3})], 3, "cpu")
    assert row["baseline_s"] == [1.0, 4.0, 7.0]  # B F C, B F C, B F C
    assert row["seconds"] == {"full": [2.0, 5.0, 8.0], "cached": [3.0, 6.0, 9.0]}
    assert row["macs"]["cached"] < row["macs"]["full"]

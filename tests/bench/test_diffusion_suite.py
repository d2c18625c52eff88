"""The ``diffusion`` benchmark suite: registration, its model shapes, and its cases measured on
a tiny pipeline (MACs ratio, fidelity columns, a timed run through the runner)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import diffusers as df
import numpy as np
import pytest
import torch

from leanvision.bench import BenchOptions, run_cases
from leanvision.bench.registry import load_suites
from leanvision.bench.suites import DEFAULT_SUITES, SUITES
from leanvision.bench.suites import diffusion as suite
from leanvision.testing.tiny_diffusion import tiny_sd_pipeline


def test_registered_but_not_a_default():
    assert SUITES["diffusion"] == "leanvision.bench.suites.diffusion"
    assert "diffusion" not in DEFAULT_SUITES
    assert load_suites()["diffusion"].name == "diffusion"


def test_sd15_config_is_the_real_unet():
    with torch.device("meta"):
        unet = df.UNet2DConditionModel(**suite.SD15_UNET)
    # SD 1.5's UNet has 859.52M parameters.
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964


def test_dit_config_is_dit_xl_2():
    with torch.device("meta"):
        dit = df.DiTTransformer2DModel(**suite.DIT_XL_2, sample_size=64)
    assert len(dit.transformer_blocks) == 28 and dit.inner_dim == 1152
    # DiT-XL/2 has 675M parameters; diffusers' port repeats the timestep and class
    # embedders in each block's adaLN-Zero, which adds 75M.
    assert sum(p.numel() for p in dit.parameters()) == 749_826_464


@pytest.mark.parametrize(
    ("device", "quick", "full", "want"),
    [
        ("cuda", False, False, {"width": 1.0, "image": 512, "steps": 50}),
        ("cpu", True, False, {"width": 0.1, "image": 256, "steps": 10}),
        ("cpu", False, False, {"width": 0.2, "image": 256, "steps": 25}),
        ("cpu", True, True, {"width": 1.0, "image": 256, "steps": 50}),
        ("cuda", True, True, {"width": 1.0, "image": 512, "steps": 50}),
    ],
)
def test_sizes_follow_the_device(device, quick, full, want):
    assert suite._sd_sizes(BenchOptions(device=device, quick=quick, full=full)) == want


def test_full_on_a_cpu_builds_dit_xl_2_at_256px():
    scenario = suite.dit_scenario(BenchOptions(device="meta", quick=True, full=True))
    dit = scenario.pipe.transformer
    assert len(dit.transformer_blocks) == 28 and dit.inner_dim == 1152
    assert dit.config.sample_size == 32 and scenario.group == "DiT XL/2 256px 50 DDIM steps"
    assert scenario.make_inputs()["num_inference_steps"] == 50
    assert [label for label, _ in scenario.settings] == ["tome r=0.5", "residual (default)"]


def tiny_scenario() -> suite.Scenario:
    tiny = tiny_sd_pipeline(seed=0, output_type="pt")

    def make_inputs():
        return dict(tiny.info["make_inputs"](), num_inference_steps=6)

    settings = [
        ("tome r=0.5", [("tome", {"ratio": 0.5})]),
        ("deepcache interval=3", [("deepcache", {"interval": 3})]),
    ]
    return suite.Scenario("tiny sd", tiny.model, make_inputs, settings, few_step=True)


def test_cases_report_macs_and_fidelity_against_the_baseline():
    cases = list(suite.scenario_cases(tiny_scenario(), "cpu"))
    by_name = {case.name: case for case in cases}
    assert list(by_name) == [
        "baseline",
        "tome r=0.5",
        "deepcache interval=3",
        "lcm 4 steps (few_step)",
    ]  # the unregistered setting is left out
    base = by_name["baseline"].metrics
    assert by_name["baseline"].baseline and base["macs_ratio"] == 1.0
    assert base["psnr"] == math.inf and base["ssim"] == 1.0 and base["latent_err"] == 0.0
    for name in ("tome r=0.5", "deepcache interval=3", "lcm 4 steps (few_step)"):
        metrics = by_name[name].metrics
        assert metrics["macs_ratio"] < 1.0, name
        assert math.isfinite(metrics["psnr"]) and metrics["ssim"] < 1.0, name
        assert 0.0 < metrics["latent_err"] < 10.0, name
    # LCM: 4 steps without CFG against 6 steps with it.
    assert by_name["lcm 4 steps (few_step)"].metrics["macs_ratio"] < 0.5

    assert by_name["tome r=0.5"].compute_ratio == by_name["tome r=0.5"].metrics["macs_ratio"]
    assert by_name["baseline"].compute_ratio is None


def test_whole_pipeline_calls_alternate_with_the_baseline_and_meet_the_macs_bound():
    cases = list(itertools.islice(suite.scenario_cases(tiny_scenario(), "cpu"), 2))
    calls = []

    def logged(case):
        def call():
            calls.append(case.name)
            return case.fn()

        return dataclasses.replace(case, fn=call)

    base, tome = run_cases("diffusion", [logged(c) for c in cases], warmup=0, repeat=3)
    assert calls[-6:] == ["baseline", "tome r=0.5"] * 3  # A B A B A B after calibration
    assert base.speedup == 1.0 and base.bound is None and base.repeats == 3
    pairs = np.array(tome.paired_baseline_s) / np.array(tome.samples_s)
    assert tome.paired_baseline_s == base.samples_s
    assert tome.speedup == pytest.approx(np.median(pairs))
    assert (tome.speedup_low, tome.speedup_high) == pytest.approx(
        (np.percentile(pairs, 25), np.percentile(pairs, 75))
    )
    assert tome.bound == pytest.approx(1 / cases[1].metrics["macs_ratio"])
    assert tome.above_bound == (tome.speedup > tome.bound)


def test_only_keeps_the_named_cases_and_skips_groups_without_any(monkeypatch):
    built = []

    def fake(name, settings, few_step):
        def build(options):
            built.append(name)
            return suite.Scenario(name, None, dict, list(settings), few_step=few_step)

        return build

    monkeypatch.setattr(suite, "sd15_scenario", fake("sd", suite.SD_SETTINGS, True))
    monkeypatch.setattr(suite, "dit_scenario", fake("dit", suite.DIT_SETTINGS, False))
    chosen = []
    monkeypatch.setattr(
        suite, "scenario_cases", lambda scenario, device: chosen.append(scenario) or []
    )
    only = ("deepcache interval=5 + tome r=0.5", suite.LCM_CASE)
    list(suite.diffusion_suite(BenchOptions(only=only)))
    assert built == ["sd", "dit"] and [s.group for s in chosen] == ["sd"]
    assert [label for label, _ in chosen[0].settings] == [only[0]] and chosen[0].few_step
    chosen.clear()
    list(suite.diffusion_suite(BenchOptions(only=("residual (default)",))))
    assert [(s.group, [label for label, _ in s.settings], s.few_step) for s in chosen] == [
        ("sd", ["residual (default)"], False),
        ("dit", ["residual (default)"], False),
    ]


def test_the_script_refuses_an_unknown_case_name(capsys, load_benchmark):
    script = load_benchmark("diffusion")
    with pytest.raises(SystemExit) as exit_:
        script.main(["--device", "cpu", "--only", "deepcache interval=4"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err

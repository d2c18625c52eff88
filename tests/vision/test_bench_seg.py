"""The ``seg`` benchmark suite: what it plans, and that its cases agree with timm."""

import math

import torch

from leanvision.bench.registry import BenchOptions
from leanvision.bench.suites import SUITES
from leanvision.bench.suites.seg import _cases, dtypes, max_rel_err, plan


def test_suite_is_registered():
    assert SUITES["seg"] == "leanvision.bench.suites.seg"


def test_plan_and_dtypes_per_device():
    cpu_quick = BenchOptions(device="cpu", quick=True)
    assert plan(cpu_quick) == [("b0", (512, 512)), ("b1", (512, 512))]
    assert dtypes(cpu_quick) == (torch.float32,)
    full = plan(BenchOptions(device="cpu"))
    assert len(full) == 8 and ("b3", (1024, 2048)) in full
    gpu_quick = BenchOptions(device="cuda", quick=True)
    assert ("b1", (1024, 2048)) in plan(gpu_quick)
    assert dtypes(gpu_quick) == (torch.float16, torch.bfloat16)
    assert dtypes(BenchOptions(device="cuda", dtype=torch.bfloat16)) == (torch.bfloat16,)


def test_max_rel_err_is_per_image_and_flags_non_finite():
    ref = torch.ones(2, 4)
    out = ref.clone()
    out[1] *= 1.5
    assert max_rel_err(out, ref) == 0.5
    out[0, 0] = float("nan")
    assert math.isinf(max_rel_err(out, ref))


def test_cases_agree_with_timm_and_run():
    cases = list(_cases("b0", (64, 96), "cpu", torch.float32))
    assert [c.name for c in cases] == [
        "timm",
        "leanvision LiteMLA",
        "timm channels_last",
        "leanvision optimized",
    ]
    assert [c.baseline for c in cases] == [True, False, False, False]
    assert {c.group for c in cases} == {"B0 64x96 fp32"}
    for case in cases:
        assert case.metrics["max rel err"] <= 1e-5, case.name
        assert case.fn().shape == (1, 19, 8, 12)

"""DeepCache and inherit against oracles computed another way (DESIGN rule 9).

* A hand-written DDIM loop over a hand-run UNet (``cache_helpers.ManualUNet``): DeepCache as
  the paper states it (keep the hidden state entering the up path at the skip branch on a
  full step, resume there on cached steps) and inherit as named units passing on their last
  output. Final latents and every UNet output must agree to float tolerance.
* The published ``DeepCacheSDHelper`` (``DeepCache`` on PyPI) on the same pipeline and noise:
  our ``deepcache`` must equal it at every skip branch.

Runs use 6 steps (10 for the non-uniform schedule) on 8x8 latents, ``output_type="latent"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from cache_helpers import (
    STEPS,
    ManualUNet,
    deepcache_oracle,
    inherit_oracle,
    initial_latents,
    oracle_run,
    pipeline_run,
)

import leanvision as lv
from leanvision.diffusion import DeepCache, Inherit
from leanvision.diffusion.cache.inherit import inheritable_parts
from leanvision.diffusion.cache.schedules import nonuniform_full_steps
from leanvision.testing.tiny_diffusion import tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5  # relative L2 error; a stale cache moves the output by ~1e-2
# Every skip branch of the tiny UNet: conv_in, then down layers d0.r0, d0.r1, d0.ds, d1.r0,
# d1.r1 (branch 5 keeps only the mid block).
BRANCHES = range(6)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def assert_matches(got: tuple, want: tuple, what: str) -> None:
    """Final latents and per-call UNet outputs of two runs agree to ``TOLERANCE``."""
    (got_final, got_steps), (want_final, want_steps) = got, want
    assert len(got_steps) == len(want_steps), what
    errors = [relative_error(a, b) for a, b in zip(got_steps, want_steps, strict=True)]
    assert all(error <= TOLERANCE for error in errors), (what, errors)  # NaN fails too
    assert relative_error(got_final, want_final) <= TOLERANCE, what


def schedule(last_run: str) -> list[bool]:
    return [kind == "F" for kind in last_run]


@pytest.fixture(scope="module")
def sd():
    tiny = tiny_sd_pipeline(seed=0, size=16)
    tiny.info["manual"] = ManualUNet(tiny.model.unet)
    tiny.info["latents"] = initial_latents(tiny)
    tiny.info["baseline"] = pipeline_run(tiny, tiny.info["latents"])
    return tiny


@pytest.fixture(scope="module")
def controlnet():
    """A ControlNet pipeline whose zero-initialised convs are given random weights, so its
    residuals (down and mid) are non-zero and reach the UNet."""
    tiny = tiny_sd_pipeline(seed=3, controlnet=True, size=16)
    control = tiny.model.controlnet
    zero_convs = [
        *control.controlnet_down_blocks,
        control.controlnet_mid_block,
        control.controlnet_cond_embedding.conv_out,
    ]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in (p for conv in zero_convs for p in conv.parameters()):
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    tiny.info["manual"] = ManualUNet(tiny.model.unet)
    tiny.info["latents"] = initial_latents(tiny)
    tiny.info["baseline"] = pipeline_run(tiny, tiny.info["latents"])
    return tiny


def test_manual_unet_is_the_unet(sd, controlnet):
    """The oracle's hand-run UNet and loop reproduce the plain pipelines."""
    for tiny in (sd, controlnet):
        always = [True] * STEPS
        oracle = oracle_run(
            tiny, tiny.info["latents"], deepcache_oracle(tiny.info["manual"], 0, always)
        )
        assert_matches(tiny.info["baseline"], oracle, tiny.info["family"])
    residuals = controlnet.model.controlnet(
        controlnet.info["latents"],
        torch.tensor(500),
        encoder_hidden_states=torch.randn(1, 77, 32),
        controlnet_cond=torch.rand(1, 3, 16, 16),
        return_dict=False,
    )
    assert all(r.abs().max() > 0 for r in [*residuals[0], residuals[1]])


def _deepcache_case(tiny, config: DeepCache, expected_run: str, **overrides) -> None:
    latents = initial_latents(tiny, batch=overrides.get("num_images_per_prompt", 1))
    with lv.diffusion.accelerate(tiny.model, config) as handle:
        got = pipeline_run(tiny, latents, **overrides)
    assert handle.stats["last_run"] == expected_run
    step = deepcache_oracle(tiny.info["manual"], config.branch, schedule(expected_run))
    want = oracle_run(tiny, latents, step, **overrides)
    assert_matches(got, want, f"{config}")
    base = tiny.info["baseline"] if not overrides else pipeline_run(tiny, latents, **overrides)
    assert relative_error(got[0], base[0]) > 1e-3  # the cache changed something


@pytest.mark.parametrize("branch", BRANCHES)
def test_deepcache_uniform_matches_the_oracle_at_every_branch(sd, branch):
    # Uniform interval 3: steps 0 and 3 are full (written out, not taken from the library).
    _deepcache_case(sd, DeepCache(interval=3, branch=branch), "FCCFCC")


@pytest.mark.parametrize("branch", [0, 2])
def test_deepcache_nonuniform_matches_the_oracle(sd, branch):
    steps = 10
    full = nonuniform_full_steps(steps, 3, center=0.3, power=1.4)
    expected = "".join("F" if f else "C" for f in full)
    positions = [index for index, is_full in enumerate(full) if is_full]
    gaps = {b - a for a, b in zip(positions, positions[1:], strict=False)}
    assert len(positions) == 4 and len(gaps) > 1  # e.g. FCCFCFCCCF: not uniform
    config = DeepCache(interval=3, branch=branch, schedule="nonuniform")
    _deepcache_case(sd, config, expected, num_inference_steps=steps)


@pytest.mark.parametrize(
    "overrides",
    [{"guidance_scale": 1.0}, {"num_images_per_prompt": 2}],
    ids=["no-cfg", "cfg-batch2"],
)
def test_deepcache_without_cfg_and_with_batch_two(sd, overrides):
    _deepcache_case(sd, DeepCache(interval=2, branch=1), "FCFCFC", **overrides)


@pytest.mark.parametrize("branch", [0, 2, 5])
def test_deepcache_with_controlnet_matches_the_oracle(controlnet, branch):
    """The ControlNet runs every step: its residuals reach the recomputed shallow skip
    samples (and, at the deepest branch, the kept mid-block output) fresh."""
    _deepcache_case(controlnet, DeepCache(interval=3, branch=branch), "FCCFCC")


# ---------------------------------------------------------------- the published DeepCache


@contextlib.contextmanager
def deepcache_helper(pipe, interval: int, branch: int) -> Iterator[None]:
    """``DeepCacheSDHelper`` enabled on ``pipe``; its ``disable()`` leaves instance
    ``forward`` attributes behind, which are deleted here so the pipeline is as before."""
    from DeepCache import DeepCacheSDHelper

    had_forward = {id(m) for m in pipe.unet.modules() if "forward" in m.__dict__}
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch, skip_mode="uniform")
    helper.enable()
    try:
        yield
    finally:
        helper.disable()
        for module in pipe.unet.modules():
            if id(module) not in had_forward:
                module.__dict__.pop("forward", None)


def _check_helper_branch_ids(unet) -> None:
    # The helper numbers branches block * 3 + layer (two resnets and a downsampler per down
    # block, as in SD 1.x); our branch b is skip sample b. They coincide when every down
    # block but the last has exactly three layers, as here.
    for block in unet.down_blocks[:-1]:
        assert len(block.resnets) == 2 and len(block.downsamplers) == 1


def test_deepcache_equals_the_published_helper_at_every_branch(sd):
    _check_helper_branch_ids(sd.model.unet)
    latents = sd.info["latents"]
    for branch in BRANCHES:
        with deepcache_helper(sd.model, 3, branch):
            want = pipeline_run(sd, latents)
        with lv.diffusion.accelerate(sd.model, "deepcache", interval=3, branch=branch):
            got = pipeline_run(sd, latents)
        assert_matches(got, want, f"branch={branch}")
        assert relative_error(got[0], sd.info["baseline"][0]) > 1e-3
    assert torch.equal(pipeline_run(sd, latents)[0], sd.info["baseline"][0])


def test_deepcache_equals_the_published_helper_with_controlnet(controlnet):
    _check_helper_branch_ids(controlnet.model.unet)
    latents = controlnet.info["latents"]
    for branch in (0, 3, 5):
        with deepcache_helper(controlnet.model, 3, branch):
            want = pipeline_run(controlnet, latents)
        with lv.diffusion.accelerate(controlnet.model, "deepcache", interval=3, branch=branch):
            got = pipeline_run(controlnet, latents)
        assert_matches(got, want, f"branch={branch}")


# ---------------------------------------------------------------- inherit


def units_under(manual: ManualUNet, *prefixes: str) -> frozenset[str]:
    """The units named by ``prefixes`` (a block, a unit, or ``mid_block``)."""
    return frozenset(
        unit
        for unit in manual.units
        if any(unit == p or unit.startswith(p + ".") for p in prefixes)
    )


# Targets at each granularity, and the units they name, written out by hand from the tiny
# UNet's layout (execution order; see the BRANCHES comment and ManualUNet.units).
INHERIT_CASES = [
    ("block", (1, 2), "uniform", ["down_blocks.1", "mid_block"]),
    ("block", (3,), "early", ["up_blocks.0"]),
    (
        "layer",
        (4, 5, 6, 7),
        "uniform",
        [
            "down_blocks.1.resnets.1",
            "mid_block",
            "up_blocks.0.resnets.0",
            "up_blocks.0.resnets.1",
        ],
    ),
    (
        "layer",
        (0, 9),
        "early",
        ["down_blocks.0.resnets.0", "down_blocks.0.attentions.0", "up_blocks.0.upsamplers.0"],
    ),
    (
        "unit",
        None,  # the default: the middle third, units 6..12
        "uniform",
        ["down_blocks.1.resnets.1", "mid_block", "up_blocks.0.resnets"],
    ),
    (
        "unit",
        (1, 7, 13, 17),
        "uniform",
        [
            "down_blocks.0.attentions.0",
            "mid_block.resnets.0",
            "up_blocks.0.upsamplers.0",
            "up_blocks.1.attentions.1",
        ],
    ),
]
# 6 steps: "uniform" (interval 2) inherits on odd steps; "early" (fraction 0.5) on steps
# 1..floor(0.5 * 5) = 1..2.
INHERIT_RUNS = {"uniform": "FCFCFC", "early": "FCCFFF"}


@pytest.mark.parametrize(
    "granularity, targets, steps, names",
    INHERIT_CASES,
    ids=[f"{case[0]}-{case[1]}-{case[2]}" for case in INHERIT_CASES],
)
def test_inherit_matches_the_oracle(sd, granularity, targets, steps, names):
    config = Inherit(granularity=granularity, targets=targets, steps=steps, fraction=0.5)
    latents = sd.info["latents"]
    with lv.diffusion.accelerate(sd.model, config) as handle:
        got = pipeline_run(sd, latents)
    expected = INHERIT_RUNS[steps]
    assert handle.stats["last_run"] == expected
    units = units_under(sd.info["manual"], *names)
    inheriting = [kind == "C" for kind in expected]
    want = oracle_run(sd, latents, inherit_oracle(sd.info["manual"], units, inheriting))
    assert_matches(got, want, f"{config}")
    assert relative_error(got[0], sd.info["baseline"][0]) > 1e-4


def test_inherit_units_are_in_execution_order(sd):
    """``targets`` index units in execution order, the mid block's included (resnet,
    attention, resnet), as the oracle's hand-run UNet calls them."""
    unet = sd.model.unet
    names = {id(module): name for name, module in unet.named_modules()}
    parts = inheritable_parts(unet, "unit")
    assert all(len(part) == 1 for part in parts)
    assert [names[id(part[0])] for part in parts] == sd.info["manual"].units

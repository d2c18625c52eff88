"""Step caches on UNet pipelines (SD 1.x, SDXL): deepcache, inherit, residual.

Runs use 6 denoising steps and ``output_type="latent"`` (the VAE is irrelevant here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cache_helpers import STEPS, run

import leanvision as lv
from leanvision.core.errors import AlreadyPatchedError, UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.diffusion import DeepCache, Inherit, Residual
from leanvision.diffusion.cache.schedules import nonuniform_full_steps, uniform_full_steps
from leanvision.testing.tiny_diffusion import tiny_sd_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sd():
    tiny = tiny_sd_pipeline(seed=0, size=16)
    tiny.info["baseline"] = run(tiny)
    return tiny


def test_deepcache_contract(sd):
    pipe, baseline = sd.model, sd.info["baseline"]
    base_macs = lv.diffusion.denoising_macs(
        pipe, {**sd.info["make_inputs"](), "num_inference_steps": STEPS, "output_type": "latent"}
    )
    with lv.diffusion.accelerate(pipe, "deepcache", interval=3) as handle:
        report = lv.diffusion.denoising_macs(
            pipe,
            {**sd.info["make_inputs"](), "num_inference_steps": STEPS, "output_type": "latent"},
        )
        cached = torch.as_tensor(np.asarray(report.output.images))
        assert handle.stats["last_run"] == "FCCFCC"
        with pytest.raises(AlreadyPatchedError):
            lv.diffusion.accelerate(pipe, "deepcache")
        with pytest.raises(AlreadyPatchedError):
            lv.diffusion.accelerate(pipe.unet, "residual")
        again = run(sd)  # state resets at the start of every call
    assert torch.equal(cached, again)
    assert not torch.allclose(cached, baseline, atol=1e-4)
    assert torch.isfinite(cached).all()
    # MACs drop exactly as the schedule predicts: full calls cost what the baseline costs,
    # cached calls all cost the same smaller amount.
    full_cost = base_macs.per_call[0]
    assert all(macs == full_cost for macs in base_macs.per_call)
    kinds = handle.stats["last_run"]
    cached_costs = {m for m, k in zip(report.per_call, kinds, strict=True) if k == "C"}
    assert len(cached_costs) == 1 and cached_costs.pop() < full_cost / 2
    schedule = uniform_full_steps(STEPS, 3)
    cached_cost = min(report.per_call)
    predicted = sum(full_cost if full else cached_cost for full in schedule)
    assert report.total == predicted
    assert torch.equal(run(sd), baseline)  # removal restores the exact output
    assert Handle.active(pipe.unet) == {}
    assert "forward" not in pipe.unet.down_blocks[1].resnets[0].__dict__
    assert not hasattr(pipe.unet, "_diffusers_hook")


def _layers_run_on_a_cached_step(tiny, branch: int) -> list[str]:
    """Names of the UNet's resnets, attentions, samplers and mid block that compute on the
    second step of a deepcache run (a cached step). A reused layer is still called, but its
    forward returns the kept output, so its first child (``conv1`` / ``norm`` / ``conv``)
    never runs."""
    unet = tiny.model.unet
    kinds = ("resnets", "attentions", "downsamplers", "upsamplers")
    watched = [
        (name, next(module.children()))
        for name, module in unet.named_modules()
        if name == "mid_block.resnets.0" or (name.count(".") == 3 and name.split(".")[2] in kinds)
    ]
    ran: list[str] = []
    calls = [0]

    def count(*_):
        calls[0] += 1

    def record(name):
        return lambda *_: ran.append(name) if calls[0] == 2 else None

    hooks = [unet.register_forward_pre_hook(count)]
    hooks += [module.register_forward_pre_hook(record(name)) for name, module in watched]
    try:
        with lv.diffusion.accelerate(tiny.model, "deepcache", interval=3, branch=branch) as handle:
            run(tiny)
    finally:
        for hook in hooks:
            hook.remove()
    assert handle.stats["last_run"] == "FCCFCC"
    return ran


def test_deepcache_branches_are_the_reference_skip_branches(sd):
    # Branch 0 (DeepCacheSDHelper's default cache_branch_id=0): a cached step runs conv_in,
    # the last up layer (its resnet and attention) and conv_out; nothing else.
    last = f"up_blocks.{len(sd.model.unet.up_blocks) - 1}"
    assert _layers_run_on_a_cached_step(sd, 0) == [f"{last}.resnets.2", f"{last}.attentions.2"]
    # Branch 1, the default: the authors' SD code at cache_layer_id=0, cache_block_id=0 (the
    # paper's SD 1.5 setting) also runs down block 0's first layer (exist_block_number=0
    # stops it after one layer) and enters up block 3 at its second layer.
    assert DeepCache().branch == 1
    assert _layers_run_on_a_cached_step(sd, 1) == [
        "down_blocks.0.resnets.0",
        "down_blocks.0.attentions.0",
        f"{last}.resnets.1",
        f"{last}.attentions.1",
        f"{last}.resnets.2",
        f"{last}.attentions.2",
    ]


def test_interval_one_and_max_threshold_reproduce_baseline(sd):
    with lv.diffusion.accelerate(sd.model, DeepCache(interval=1)) as handle:
        assert torch.equal(run(sd), sd.info["baseline"])
    assert handle.stats["cached_calls"] == 0
    with lv.diffusion.accelerate(sd.model, Residual(threshold=1e-9)) as handle:
        assert torch.equal(run(sd), sd.info["baseline"])
    assert handle.stats["last_run"] == "F" * STEPS


def test_bare_denoiser_matches_pipeline_mode(sd):
    with lv.diffusion.accelerate(sd.model, "deepcache", interval=2, branch=1):
        via_pipe = run(sd)
    with lv.diffusion.accelerate(sd.model.unet, "deepcache", interval=2, branch=1) as handle:
        via_unet = run(sd)
        assert handle.stats["last_run"] == "FCFCFC"
        with pytest.raises(AlreadyPatchedError):
            lv.diffusion.accelerate(sd.model, "inherit")
    assert torch.equal(via_pipe, via_unet)


def test_few_steps_warn_and_run_full(sd):
    short = run(sd, num_inference_steps=4)
    with (
        lv.diffusion.accelerate(sd.model, "deepcache", interval=2) as handle,
        pytest.warns(UserWarning, match="at least 5"),
    ):
        out = run(sd, num_inference_steps=4)
    assert handle.stats["last_run"] == "FFFF"
    assert torch.equal(out, short)


def test_batch_two_with_cfg(sd):
    base = run(sd, num_images_per_prompt=2)
    with lv.diffusion.accelerate(sd.model, "deepcache", interval=3) as handle:
        out = run(sd, num_images_per_prompt=2)
        single = run(sd)  # a new batch size in the next call must not reuse stale features
    assert out.shape == base.shape == (2, 4, 8, 8)
    assert handle.stats["last_run"] == "FCCFCC"
    assert torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-4)
    assert single.shape[0] == 1


def test_heun_counts_loop_iterations():
    tiny = tiny_sd_pipeline(seed=1, scheduler="heun", size=16)
    base = run(tiny, num_inference_steps=4)  # 2 * 4 - 1 = 7 UNet calls, repeated timesteps
    with lv.diffusion.accelerate(tiny.model, "deepcache", interval=3) as handle:
        out = run(tiny, num_inference_steps=4)
    assert handle.stats["last_run"] == "FCCFCCF"
    assert torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-4)


def test_img2img_offsets_steps():
    tiny = tiny_sd_pipeline(seed=2, img2img=True, size=16)
    base = run(tiny, num_inference_steps=12)  # strength 0.5: 6 of 12 steps
    with lv.diffusion.accelerate(tiny.model, "deepcache", interval=3, schedule="nonuniform") as h:
        out = run(tiny, num_inference_steps=12)
    expected = "".join("F" if full else "C" for full in nonuniform_full_steps(6, 3, 0.3, 1.4))
    assert h.stats["last_run"] == expected and expected.count("F") == 2
    assert torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-4)


def test_controlnet_shallow_residuals_are_fresh_on_cached_steps():
    """Rule: the ControlNet runs every step; on cached steps its residuals reach the
    recomputed shallow branch, deep features come from the last full step."""
    tiny = tiny_sd_pipeline(seed=3, controlnet=True, size=16)
    base = run(tiny)
    with lv.diffusion.accelerate(tiny.model, "deepcache", interval=1):
        assert torch.equal(run(tiny), base)
    with lv.diffusion.accelerate(tiny.model, "deepcache", interval=3) as handle:
        cached = run(tiny)
        counted = {"calls": 0}

        def shift_residuals_on_cached_steps(module, args, output):
            step = counted["calls"]
            counted["calls"] += 1
            if step % 3 == 0:
                return output
            down, mid = output  # (its zero-initialised convs give zeros: shift them)
            return [d + 1.0 for d in down], mid + 1.0

        hook = tiny.model.controlnet.register_forward_hook(shift_residuals_on_cached_steps)
        try:
            without = run(tiny)
        finally:
            hook.remove()
    assert handle.stats["last_run"] == "FCCFCC"
    assert not torch.allclose(cached, base, atol=1e-4)
    assert not torch.allclose(cached, without, atol=1e-6)


@pytest.mark.parametrize("granularity", ["block", "layer", "unit"])
def test_inherit_granularities(sd, granularity):
    with lv.diffusion.accelerate(sd.model, Inherit(granularity=granularity)) as handle:
        out = run(sd)
    assert handle.stats["last_run"] == "FCFCFC"
    assert torch.isfinite(out).all() and not torch.allclose(out, sd.info["baseline"], atol=1e-5)
    assert torch.equal(run(sd), sd.info["baseline"])


def test_inherit_late_steps(sd):
    config = Inherit(granularity="layer", steps="late", fraction=0.4, targets=(3, 4))
    with lv.diffusion.accelerate(sd.model, config) as handle:
        run(sd)
    assert handle.stats["last_run"] == "FFFFCC"


def test_residual_unet_adaptive(sd):
    with lv.diffusion.accelerate(sd.model, "residual", threshold=1e3, max_consecutive_skips=2) as h:
        report = lv.diffusion.denoising_macs(
            sd.model,
            {**sd.info["make_inputs"](), "num_inference_steps": STEPS, "output_type": "latent"},
        )
    assert h.stats["last_run"] == "FCCFCC"
    full = [m for m, k in zip(report.per_call, h.stats["last_run"], strict=True) if k == "F"]
    cached = [m for m, k in zip(report.per_call, h.stats["last_run"], strict=True) if k == "C"]
    assert max(cached) < min(full)


def test_sdxl_deepcache_and_residual():
    tiny = tiny_sdxl_pipeline(seed=0)
    base = run(tiny)
    for method, options in (("deepcache", {"interval": 2}), ("residual", {"threshold": 1e3})):
        with lv.diffusion.accelerate(tiny.model, method, **options) as handle:
            out = run(tiny)
        assert "C" in handle.stats["last_run"], method
        assert torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-5)
    assert torch.equal(run(tiny), base)


def test_compose_with_tome(sd):
    tome = pytest.importorskip("leanvision.diffusion.tome")
    configs = [DeepCache(interval=3), tome.ToMe(ratio=0.5)]
    with lv.diffusion.accelerate(sd.model, configs) as handle:
        out = run(sd)
    assert handle.method == "deepcache+tome"
    assert handle.stats["last_run"] == "FCCFCC"
    assert torch.isfinite(out).all()
    assert torch.equal(run(sd), sd.info["baseline"])


def test_errors_leave_the_model_untouched(sd):
    unet = sd.model.unet
    with pytest.raises(ValueError, match="unknown diffusion method"):
        lv.diffusion.accelerate(sd.model, "nope")
    with pytest.raises(TypeError, match="no option"):
        lv.diffusion.accelerate(sd.model, "deepcache", interval=2, depth=3)
    with pytest.raises(ValueError, match="interval"):
        DeepCache(interval=0)
    with pytest.raises(ValueError, match="schedule"):
        DeepCache(schedule="random")
    with pytest.raises(ValueError, match="branch=9"):
        lv.diffusion.accelerate(sd.model, "deepcache", branch=9)
    with pytest.raises(ValueError, match="granularity"):
        Inherit(granularity="layers")
    with pytest.raises(UnsupportedModelError, match="Linear"):
        lv.diffusion.accelerate(torch.nn.Linear(2, 2), "deepcache")
    with pytest.raises(UnsupportedModelError):
        lv.diffusion.accelerate(sd.model, "first_block_cache")
    assert Handle.active(unet) == {}
    assert not hasattr(unet, "_diffusers_hook")
    assert "set_timesteps" not in sd.model.scheduler.__dict__


def test_scheduler_swap_is_detected(sd):
    scheduler = sd.model.scheduler
    with lv.diffusion.accelerate(sd.model, "deepcache"):
        sd.model.scheduler = type(scheduler).from_config(scheduler.config)
        try:
            with pytest.raises(RuntimeError, match="scheduler was replaced"):
                run(sd)
        finally:
            sd.model.scheduler = scheduler


def test_nonuniform_schedule_counts():
    for steps, interval in ((50, 3), (50, 5), (20, 4), (6, 3), (7, 7)):
        full = nonuniform_full_steps(steps, interval, center=0.3, power=1.4)
        assert len(full) == steps and full[0]
        assert sum(full) == -(-steps // interval)
    dense = nonuniform_full_steps(50, 5, center=0.3, power=1.4)
    positions = [i for i, f in enumerate(dense) if f]
    gaps = np.diff(positions)
    assert gaps.min() < gaps.max()  # denser somewhere than elsewhere

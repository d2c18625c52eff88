"""Delegated ``faster_cache`` against diffusers' own FasterCache, and torch.compile with
``deepcache``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FasterCacheConfig, HookRegistry, apply_faster_cache

import leanvision as lv
from leanvision.core.handle import Handle
from leanvision.diffusion import FasterCache
from leanvision.diffusion.cache.delegated import CFG_INPUTS
from leanvision.testing.tiny_diffusion import (
    tiny_dit,
    tiny_flux,
    tiny_pixart,
    tiny_sd3,
    tiny_sd_pipeline,
)

# 8 steps: with spatial_skip=2 the attention of every other step inside the range is reused.
STEPS = 8


def run(tiny, steps: int = STEPS, **overrides) -> torch.Tensor:
    inputs = {**tiny.info["make_inputs"](), "num_inference_steps": steps, "output_type": "latent"}
    inputs.update(overrides)
    return torch.as_tensor(np.asarray(tiny.model(**inputs).images))


def diffusers_faster_cache(timestep, distilled: bool) -> FasterCacheConfig:
    """The diffusers config matching ``FasterCache(spatial_skip=2, unconditional_skip=2)``."""
    return FasterCacheConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_timestep_skip_range=(-1, 681),
        unconditional_batch_skip_range=2,
        unconditional_batch_timestep_skip_range=(-1, 641),
        attention_weight_callback=lambda _module: 0.5,
        tensor_format="BCHW",
        is_guidance_distilled=distilled,
        current_timestep_callback=timestep,
        _unconditional_conditional_input_kwargs_identifiers=CFG_INPUTS,
    )


def test_faster_cache_matches_diffusers_on_flux():
    """Flux has ``enable_cache`` and sets cache contexts itself; guidance-distilled."""
    tiny = tiny_flux(seed=0)
    pipe, transformer = tiny.model, tiny.model.transformer
    base = run(tiny)
    transformer.enable_cache(diffusers_faster_cache(lambda: pipe.current_timestep, True))
    try:
        expected = run(tiny)
    finally:
        transformer.disable_cache()
    config = FasterCache(spatial_skip=2, unconditional_skip=2)
    with lv.diffusion.accelerate(pipe, config) as handle:
        with pytest.raises(ValueError, match="already"):
            transformer.enable_cache(diffusers_faster_cache(lambda: 0.0, True))
        got = run(tiny)
        again = run(tiny)  # state is reset between pipeline calls
    assert handle.method == "faster_cache"
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert not torch.allclose(got, base, atol=1e-6)
    assert torch.equal(run(tiny), base)
    assert transformer._cache_config is None and Handle.active(transformer) == {}


def test_faster_cache_first_step_inside_range_on_flux():
    """diffusers crashes when a guidance-distilled model's first timestep is inside the range
    (its block hook reuses an empty cache); leanvision computes the first call in full."""
    tiny = tiny_flux(seed=0)
    pipe = tiny.model
    base = run(tiny)
    wide = dict(spatial_skip=2, timestep_range=(-1, 1001))
    apply_faster_cache(
        pipe.transformer,
        FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            is_guidance_distilled=True,
            current_timestep_callback=lambda: pipe.current_timestep,
        ),
    )
    try:
        with pytest.raises(TypeError, match="NoneType"):
            run(tiny)
    finally:
        registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
        for name in ("faster_cache_denoiser", "faster_cache_block"):
            registry.remove_hook(name, recurse=True)
    assert torch.equal(run(tiny), base)
    with lv.diffusion.accelerate(pipe, "faster_cache", **wide):
        got = run(tiny)
    assert torch.isfinite(got).all() and not torch.allclose(got, base, atol=1e-6)
    assert torch.equal(run(tiny), base)


@pytest.mark.parametrize("factory", [tiny_pixart, tiny_dit, tiny_sd3])
def test_faster_cache_matches_diffusers_without_cache_context(factory):
    """PixArt / DiT / SD3: batched CFG, no ``enable_cache`` on the model (PixArt, DiT) and no
    ``cache_context`` in the pipeline; compare with ``apply_faster_cache`` called directly."""
    tiny = factory(seed=0)
    pipe, transformer = tiny.model, tiny.model.transformer
    base = run(tiny)
    seen: list[float] = []  # diffusers needs the current timestep: read it off the input

    def record(_module, args, kwargs):
        value = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        seen.append(float(torch.as_tensor(value).flatten()[0]))

    recorder = transformer.register_forward_pre_hook(record, with_kwargs=True)
    apply_faster_cache(transformer, diffusers_faster_cache(lambda: seen[-1], False))
    try:
        expected = run(tiny)
    finally:
        recorder.remove()
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        for name in ("faster_cache_denoiser", "faster_cache_block"):
            registry.remove_hook(name, recurse=True)
    assert torch.equal(run(tiny), base)
    with lv.diffusion.accelerate(pipe, "faster_cache", spatial_skip=2, unconditional_skip=2):
        got = run(tiny)
        again = run(tiny)
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert not torch.allclose(got, base, atol=1e-6)
    assert torch.equal(run(tiny), base)
    assert Handle.active(transformer) == {}


@pytest.mark.slow  # inductor compiles the tiny UNet in ~1.5 min on 2 CPU cores
def test_deepcache_under_torch_compile():
    """``pipe.unet.compile()`` (in place, default mode) after applying deepcache: same images
    as the eager cached run, and no recompile per call (the runtime's bookkeeping runs
    eagerly). ``remove()`` drops the hooks; the UNet stays compiled."""
    tiny = tiny_sd_pipeline(seed=0, size=16)
    pipe = tiny.model
    base = run(tiny, steps=6)
    with lv.diffusion.accelerate(pipe, "deepcache", interval=3):
        eager = run(tiny, steps=6)
    wrapped = tiny_sd_pipeline(seed=0, size=16).model
    wrapped.unet = torch.compile(wrapped.unet)
    with pytest.raises(lv.UnsupportedModelError, match="OptimizedModule"):
        lv.diffusion.accelerate(wrapped, "deepcache", interval=3)

    handle = lv.diffusion.accelerate(pipe, "deepcache", interval=3)
    pipe.unet.compile()
    torch._dynamo.reset()
    try:
        compiled = run(tiny, steps=6)
        counters = torch._dynamo.utils.counters
        frames_before = counters["stats"]["unique_graphs"]
        assert frames_before > 0  # dynamo did compile the hooked UNet
        again = run(tiny, steps=6)  # no new graphs: the second call reuses the compiled ones
        assert counters["stats"]["unique_graphs"] == frames_before
    finally:
        handle.remove()
    assert handle.stats["last_run"] == "FCCFCC"
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
    torch.testing.assert_close(again, eager, atol=1e-4, rtol=0)
    restored = run(tiny, steps=6)
    assert Handle.active(pipe.unet) == {}
    # Compiled vs eager kernels differ by ~1e-5; the cache's effect is far larger.
    assert (restored - base).abs().max() < 1e-4 < (eager - base).abs().max()

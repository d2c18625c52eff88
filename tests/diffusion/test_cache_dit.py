"""Step caches on transformer pipelines (PixArt, DiT, SD3, Flux): residual, inherit and the
delegated diffusers caches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cache_helpers import STEPS, run

import leanvision as lv
from leanvision.core.errors import UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.diffusion import FirstBlockCache, PyramidAttentionBroadcast, Residual, TaylorSeer
from leanvision.testing.tiny_diffusion import tiny_dit, tiny_flux, tiny_pixart, tiny_sd3


@pytest.fixture(scope="module")
def flux():
    tiny = tiny_flux(seed=0)
    tiny.info["baseline"] = run(tiny)
    return tiny


@pytest.mark.parametrize("factory", [tiny_dit, tiny_pixart, tiny_sd3, tiny_flux])
def test_residual_contract(factory, tmp_path):
    tiny = factory(seed=0)
    base = run(tiny)
    inputs = {**tiny.info["make_inputs"](), "num_inference_steps": STEPS, "output_type": "latent"}
    with lv.diffusion.accelerate(tiny.model, "residual", threshold=1e3) as handle:
        report = lv.diffusion.denoising_macs(tiny.model, inputs)
        again = run(tiny)
    cached = torch.as_tensor(np.asarray(report.output.images))
    assert handle.stats["last_run"] == "FCCCFC"
    assert torch.equal(cached, again)
    assert torch.isfinite(cached).all() and not torch.allclose(cached, base, atol=1e-5)
    kinds = handle.stats["last_run"]
    full = {m for m, k in zip(report.per_call, kinds, strict=True) if k == "F"}
    skipped = {m for m, k in zip(report.per_call, kinds, strict=True) if k == "C"}
    assert len(full) == len(skipped) == 1 and skipped.pop() < full.pop()
    assert torch.equal(run(tiny), base)
    assert Handle.active(tiny.model.transformer) == {}
    if factory is tiny_dit:  # calibrate once, replay the mask: same decisions, same output
        path = tmp_path / "mask.json"
        data = lv.diffusion.calibrate(
            tiny.model,
            tiny.info["make_inputs"]() | {"num_inference_steps": STEPS, "output_type": "latent"},
            path,
            threshold=1e3,
        )
        assert data["full_steps"] == [k == "F" for k in kinds]
        assert json.loads(path.read_text())["model"] == "DiTTransformer2DModel"
        with lv.diffusion.accelerate(tiny.model, Residual(mask=str(path), threshold=1e-9)) as h:
            replay = run(tiny)
        assert h.stats["last_run"] == kinds and torch.equal(replay, cached)


def test_residual_keeps_one_cache_per_cfg_pass(flux):
    """Flux true CFG runs cond and uncond as separate calls: each branch has its cache."""
    inputs = dict(true_cfg_scale=2.0, negative_prompt="blurry")
    base = run(flux, **inputs)
    with lv.diffusion.accelerate(flux.model, "residual", threshold=1e3) as handle:
        out = run(flux, **inputs)
    assert handle.stats["last_run"] == "FFCCCCCCFFCC"
    assert torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-5)


def test_inherit_on_dit_blocks(flux):
    with lv.diffusion.accelerate(flux.model, "inherit", granularity="unit") as handle:
        out = run(flux)
    assert handle.stats["last_run"] == "FCFCFC"
    assert not torch.allclose(out, flux.info["baseline"], atol=1e-5)


@pytest.mark.parametrize(
    "config, diffusers_config",
    [
        (
            FirstBlockCache(threshold=0.5),
            lambda pipe: __import__("diffusers").FirstBlockCacheConfig(threshold=0.5),
        ),
        (
            TaylorSeer(cache_interval=2, disable_cache_before_step=1),
            lambda pipe: __import__("diffusers").TaylorSeerCacheConfig(
                cache_interval=2, disable_cache_before_step=1, taylor_factors_dtype=torch.float32
            ),
        ),
        (
            PyramidAttentionBroadcast(spatial_skip=2, timestep_range=(-1, 1001)),
            lambda pipe: __import__("diffusers").PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=2,
                spatial_attention_timestep_skip_range=(-1, 1001),
                current_timestep_callback=lambda: pipe.current_timestep,
            ),
        ),
    ],
    ids=["first_block_cache", "taylorseer", "pab"],
)
def test_delegated_matches_diffusers(flux, config, diffusers_config):
    transformer = flux.model.transformer
    transformer.enable_cache(diffusers_config(flux.model))
    try:
        expected = run(flux)
    finally:
        transformer.disable_cache()
    with lv.diffusion.accelerate(flux.model, config):
        with pytest.raises(ValueError, match="already"):
            transformer.enable_cache(diffusers_config(flux.model))
        got = run(flux)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, flux.info["baseline"], atol=1e-6)
    assert torch.equal(run(flux), flux.info["baseline"])
    assert transformer._cache_config is None


def test_delegated_on_pipelines_without_cache_context():
    """SD3 / PixArt / DiT pipelines never call cache_context: the runtime provides it."""
    tiny = tiny_pixart(seed=0)
    base = run(tiny)
    with lv.diffusion.accelerate(tiny.model, "first_block_cache", threshold=0.5):
        out = run(tiny)
    assert torch.isfinite(out).all() and not torch.allclose(out, base, atol=1e-6)
    assert torch.equal(run(tiny), base)
    with pytest.raises(UnsupportedModelError, match="first_block_cache"):
        lv.diffusion.accelerate(tiny_sd3().model, "first_block_cache")

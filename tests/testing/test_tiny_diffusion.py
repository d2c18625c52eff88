"""Tiny diffusers pipelines: real pipeline classes, offline, seeded, 10-step calls."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import leanvision as lv
from leanvision.diffusion.runtime import MIN_CACHE_STEPS
from leanvision.testing import tiny_diffusion as td

FACTORIES = ["tiny_sd_pipeline", "tiny_sdxl_pipeline", "tiny_pixart", "tiny_dit", "tiny_flux"]
FACTORIES += ["tiny_sd3"]


@pytest.mark.parametrize("name", FACTORIES)
def test_default_call_gives_finite_images_of_the_stated_size(name):
    tiny = getattr(td, name)(seed=0)
    assert tiny.inputs["num_inference_steps"] == td.DEFAULT_STEPS == 10
    images = td.images_of(tiny.model(**tiny.inputs))
    assert images.shape == (1, tiny.info["height"], tiny.info["width"], 3)
    assert np.isfinite(images).all()
    assert images.std() > 0  # not a constant image


@pytest.mark.parametrize("name", ["tiny_sd_pipeline", "tiny_pixart", "tiny_flux"])
def test_make_inputs_reproduces_the_call_and_seed_changes_it(name):
    tiny = getattr(td, name)(seed=0)
    first = td.images_of(tiny.model(**tiny.info["make_inputs"]()))
    again = td.images_of(tiny.model(**tiny.info["make_inputs"]()))
    np.testing.assert_array_equal(first, again)
    other = getattr(td, name)(seed=1)
    assert not np.allclose(first, td.images_of(other.model(**other.info["make_inputs"]())))


def test_factory_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    td.tiny_dit(seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("scheduler", sorted(td.SCHEDULERS))
def test_every_scheduler_runs(scheduler):
    tiny = td.tiny_sd_pipeline(scheduler=scheduler)
    assert isinstance(tiny.model.scheduler, td.SCHEDULERS[scheduler])
    assert np.isfinite(td.images_of(tiny.model(**tiny.inputs))).all()


@pytest.mark.parametrize("variant", ["img2img", "controlnet"])
def test_conditioned_sd_variants_run(variant):
    tiny = td.tiny_sd_pipeline(**{variant: True})
    assert "image" in tiny.inputs
    images = td.images_of(tiny.model(**tiny.inputs))
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_output_type_pt_is_converted_by_images_of():
    tiny = td.tiny_dit(output_type="pt")
    assert td.images_of(tiny.model(**tiny.inputs)).shape == (1, 32, 32, 3)


def test_bad_arguments_raise_naming_what_is_allowed():
    with pytest.raises(ValueError, match="ddim"):
        td.tiny_sd_pipeline(scheduler="nope")
    with pytest.raises(ValueError, match="multiple of 4"):
        td.tiny_sd_pipeline(size=30)
    with pytest.raises(ValueError, match="cannot both"):
        td.tiny_sd_pipeline(img2img=True, controlnet=True)
    with pytest.raises(ValueError):
        td.tiny_pixart(output_type="jpeg")


# Every method at its default options does its work on the default inputs, without a warning:
# the defaults run enough steps to cache (issue 14: "accelerate(tiny, 'deepcache') only warns").
DEFAULT_METHODS = [
    ("tiny_sd_pipeline", "deepcache"),
    ("tiny_sd_pipeline", "inherit"),
    ("tiny_sd_pipeline", "residual"),
    ("tiny_sd_pipeline", "tome"),
    ("tiny_pixart", "inherit"),
    ("tiny_pixart", "residual"),
    ("tiny_pixart", "tome"),
    ("tiny_flux", "residual"),
]


@pytest.mark.parametrize(("name", "method"), DEFAULT_METHODS)
def test_default_inputs_show_each_method_working(name, method):
    tiny = getattr(td, name)(seed=0)
    assert tiny.inputs["num_inference_steps"] >= MIN_CACHE_STEPS
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with lv.diffusion.accelerate(tiny.model, method) as handle:
            tiny.model(**tiny.inputs)
    if method == "tome":
        assert handle.stats["tome_merged_tokens"] > 0
    else:
        assert handle.stats["cached_calls"] > 0, handle.stats["last_run"]


def test_img2img_default_runs_enough_denoising_steps_to_cache():
    tiny = td.tiny_sd_pipeline(img2img=True)
    with lv.diffusion.accelerate(tiny.model, "deepcache") as handle:
        tiny.model(**tiny.inputs)
    assert len(handle.stats["last_run"]) == td.DEFAULT_STEPS
    assert handle.stats["cached_calls"] > 0

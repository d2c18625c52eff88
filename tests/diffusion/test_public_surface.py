"""lv.diffusion as a newcomer meets it: names that stay functions, one entry point for every
method (few-step samplers included), discovery, errors and warnings that point the way."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import pytest

import leanvision as lv
from leanvision import UnsupportedModelError
from leanvision.diffusion import LCM, TCD, DeepCache, FewStepConfig
from leanvision.testing import tiny_llava, tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

README_IMPORT = "from leanvision.diffusion import DistillConfig, distill, few_step"


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_readme_import_line_then_few_step_works_in_a_fresh_interpreter():
    out = _python(
        f"{README_IMPORT}\n"
        "from leanvision.testing import tiny_sd_pipeline\n"
        "pipe = tiny_sd_pipeline().model\n"
        "handle = few_step(pipe, 'lcm', steps=2)\n"
        "print(handle.method, handle.stats['steps'], callable(distill), DistillConfig.__name__)"
    )
    assert out.splitlines()[-1] == "lcm 2 True DistillConfig"


@pytest.mark.parametrize(
    "order", [("few_step", "distill"), ("distill", "few_step"), ("FewStepConfig", "few_step")]
)
def test_few_step_and_distill_stay_functions_whichever_is_touched_first(order):
    touches = "; ".join(f"first = lv.diffusion.{name}" for name in order)
    out = _python(
        f"import inspect, leanvision as lv; {touches}; "
        "print(inspect.isfunction(lv.diffusion.few_step), inspect.isfunction(lv.diffusion.distill))"
    )
    assert out == "True True"


def test_no_module_is_named_like_a_public_function():
    import pkgutil

    import leanvision.diffusion.consistency as consistency

    for package in (lv.diffusion, consistency):
        modules = {info.name for info in pkgutil.iter_modules(package.__path__)}
        assert not modules & set(package.__all__), package.__name__


# ---------------------------------------------------------------- discovery


def test_dir_lists_lazy_names_and_metrics_loads_without_an_import():
    names = dir(lv.diffusion)
    expected = ["few_step", "distill", "ToMe", "FewStepConfig", "DistillConfig", "LCM", "TCD"]
    for name in [*expected, "metrics", "methods", "accelerate", "cache"]:
        assert name in names, name
    assert not {"Any", "importlib", "annotations", "lazy_exports", "_hooks"} & set(names)
    out = _python("import leanvision as lv; print(lv.diffusion.metrics.psnr.__name__)")
    assert out == "psnr"


def test_methods_lists_every_method_with_its_config_summary_and_exports_its_config():
    listing = lv.diffusion.methods()
    assert listing == lv.diffusion.METHODS.describe()
    assert {"deepcache", "inherit", "residual", "tome", "lcm", "tcd"} <= set(listing)
    for name in listing:
        config_class = lv.diffusion.METHODS.entry(name).config_class
        assert getattr(lv.diffusion, config_class.__name__) is config_class
        first_line = inspect.getdoc(config_class).splitlines()[0]
        assert listing[name] == first_line
        # a one-line description: a full sentence, not a field list or a cut-off line
        assert first_line.endswith(".") and not first_line.startswith("``"), (name, first_line)
        assert len(first_line) <= 95, (name, first_line)


# ---------------------------------------------------------------- one entry point


@pytest.fixture(scope="module")
def tiny():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(autouse=True)
def _no_leftover_patch(tiny):
    yield
    for handle in lv.Handle.active(tiny.model.unet).values():
        handle.remove()


def _latents(tiny, **changes):
    """A fresh-noise run; keys mapped to None are left out (so a sampler's defaults apply)."""
    inputs = {**tiny.info["make_inputs"](), "output_type": "latent", **changes}
    return tiny.model(**{key: value for key, value in inputs.items() if value is not None}).images


@pytest.mark.parametrize(
    ("method", "options"),
    [("lcm", {"steps": 2}), ("tcd", {"steps": 3, "eta": 0.5, "guidance_scale": 2.0})],
)
def test_accelerate_lcm_tcd_gives_the_few_step_handle(tiny, method, options):
    scheduler = tiny.model.scheduler
    with lv.diffusion.few_step(tiny.model, method, **options) as handle:
        expected = _latents(tiny, num_inference_steps=None, guidance_scale=None)
        expected_stats = dict(handle.stats)
    with lv.diffusion.accelerate(tiny.model, method, **options) as handle:
        assert lv.Handle.active(tiny.model.unet) == {"diffusion-sampler": handle}
        got = _latents(tiny, num_inference_steps=None, guidance_scale=None)
    assert handle.method == method and handle.family == "diffusion-sampler"
    assert handle.stats == expected_stats and handle.stats["steps"] == options["steps"]
    assert got.equal(expected)
    assert tiny.model.scheduler is scheduler


def test_accelerate_takes_sampler_configs(tiny):
    for config, scheduler in [
        (FewStepConfig(method="tcd", steps=2), "TCDScheduler"),
        (TCD(steps=2), "TCDScheduler"),
        (LCM(steps=2), "LCMScheduler"),
    ]:
        with lv.diffusion.accelerate(tiny.model, config) as handle:
            assert type(tiny.model.scheduler).__name__ == scheduler
        assert handle.config is config and handle.stats["steps"] == 2


def test_sampler_options_are_checked_like_any_method(tiny):
    with pytest.raises(TypeError, match="did you mean 'steps'"):
        lv.diffusion.accelerate(tiny.model, "lcm", step=4)
    with pytest.raises(TypeError, match="'method'"):  # the name says the method already
        lv.diffusion.accelerate(tiny.model, "tcd", **{"method": "lcm"})
    with pytest.raises(TypeError, match="not both"):
        lv.diffusion.accelerate(tiny.model, LCM(steps=2), steps=4)
    with pytest.raises(TypeError, match="separately"):
        lv.diffusion.accelerate(tiny.model, [DeepCache(), LCM()])
    assert lv.Handle.active(tiny.model.unet) == {}


def test_a_step_cache_composes_with_a_sampler(tiny):
    with (
        lv.diffusion.accelerate(tiny.model, "lcm", steps=6) as sampler,
        lv.diffusion.accelerate(tiny.model, "deepcache", interval=2) as cache,
    ):
        _latents(tiny, num_inference_steps=None, guidance_scale=None)
    assert sampler.family != cache.family
    assert cache.stats["last_run"] == "FCFCFC"


# ---------------------------------------------------------------- errors and warnings


def test_a_vlm_is_pointed_at_lv_vlm_compress():
    vlm = tiny_llava().model
    for method in ("deepcache", "lcm"):
        with pytest.raises(UnsupportedModelError, match=r"lv\.vlm\.compress"):
            lv.diffusion.accelerate(vlm, method)
    with pytest.raises(UnsupportedModelError, match=r"lv\.vlm\.compress"):
        lv.diffusion.few_step(vlm)


def test_a_non_model_is_refused_naming_the_supported_denoisers():
    with pytest.raises(UnsupportedModelError, match="UNet2DConditionModel"):
        lv.diffusion.accelerate(object(), "deepcache")


def test_a_bare_denoiser_is_told_to_pass_the_pipeline_for_lcm(tiny):
    with pytest.raises(UnsupportedModelError, match="not their unet/transformer"):
        lv.diffusion.accelerate(tiny.model.unet, "lcm")


def test_more_than_eight_steps_warns_at_the_callers_line(tiny):
    with pytest.warns(UserWarning, match=r"1-8 steps.*deepcache") as caught:
        handle = lv.diffusion.few_step(tiny.model, "lcm", steps=12)
    handle.remove()
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(UserWarning, match="1-8 steps") as caught:
        handle = lv.diffusion.accelerate(tiny.model, "tcd", steps=9)
    handle.remove()
    assert [w.filename for w in caught] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lv.diffusion.few_step(tiny.model, "lcm", steps=8).remove()


def test_too_few_steps_to_cache_warns_at_the_pipe_call(tiny):
    with (
        lv.diffusion.accelerate(tiny.model, "deepcache"),
        pytest.warns(UserWarning, match="at least 5") as caught,
    ):
        tiny.model(**{**tiny.inputs, "num_inference_steps": 3, "output_type": "latent"})
    assert [w.filename for w in caught] == [__file__]
    assert caught[0].lineno == inspect.currentframe().f_lineno - 2


def test_no_diffusion_module_calls_warnings_warn_directly():
    import pathlib

    root = pathlib.Path(lv.diffusion.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "warnings.warn(" in path.read_text()
    ]
    assert not offenders, f"use leanvision.core.warn.warn_user in {offenders}"

"""few_step: LCM / TCD scheduler swap, call defaults, local LoRA, reversibility."""

from __future__ import annotations

import copy
import importlib.util
import types

import diffusers
import numpy as np
import pytest
import torch

from leanvision import AlreadyPatchedError, Handle, MissingDependencyError, UnsupportedModelError
from leanvision.diffusion.consistency import few_step
from leanvision.testing import tiny_pixart, tiny_sd_pipeline, tiny_sdxl_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny UNet calls


@pytest.fixture(scope="module")
def tiny():
    return tiny_sd_pipeline(seed=0)


def _fresh(tiny, **drop_or_set):
    """Fresh inputs (same noise every time); keys mapped to None are dropped."""
    inputs = tiny.info["make_inputs"]()
    for key, value in drop_or_set.items():
        inputs.pop(key) if value is None else inputs.__setitem__(key, value)
    return inputs


def _run(tiny, **changes):
    return tiny.model(**_fresh(tiny, **changes)).images


class _CountCalls:
    def __init__(self, module):
        self.batches: list[int] = []
        self._hook = module.register_forward_hook(self._record)

    def _record(self, module, args, output):
        self.batches.append(args[0].shape[0])

    def remove(self):
        self._hook.remove()


@pytest.fixture
def calls(tiny):
    counter = _CountCalls(tiny.model.unet)
    yield counter
    counter.remove()


@pytest.fixture(autouse=True)
def _no_leftover_patch(tiny):
    yield
    for handle in Handle.active(tiny.model.unet).values():
        handle.remove()


@pytest.fixture(scope="module")
def lora_dir(tiny, tmp_path_factory):
    """A local LCM-style LoRA: peft adapters on the tiny UNet's attention, saved in diffusers
    format with the pipeline's own save_lora_weights."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(tiny.model.unet)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"]))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the LoRA actually do something
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    directory = tmp_path_factory.mktemp("lora")
    type(tiny.model).save_lora_weights(directory, unet_lora_layers=layers)
    return directory


def test_scheduler_swapped_then_same_object_restored(tiny):
    pipe = tiny.model
    original, original_class = pipe.scheduler, type(pipe)
    handle = few_step(pipe, "lcm", steps=4)
    assert isinstance(pipe.scheduler, diffusers.LCMScheduler)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    # same noise schedule as the pipeline's own scheduler
    assert torch.equal(pipe.scheduler.alphas_cumprod, original.alphas_cumprod)
    assert type(pipe).__name__ == original_class.__name__
    handle.remove()
    assert pipe.scheduler is original
    assert type(pipe) is original_class
    assert pipe.config["scheduler"][1] == type(original).__name__


@pytest.mark.parametrize("steps", [1, 3])
def test_plain_call_runs_steps_denoiser_calls_without_cfg(tiny, calls, steps):
    with few_step(tiny.model, "lcm", steps=steps) as handle:
        _run(tiny, num_inference_steps=None, guidance_scale=None)
    assert len(calls.batches) == steps
    assert calls.batches == [1] * steps  # guidance 1.0: no unconditional branch
    assert handle.stats["call_defaults"] == {"num_inference_steps": steps, "guidance_scale": 1.0}


def test_explicit_call_arguments_win(tiny, calls):
    with few_step(tiny.model, "lcm", steps=4):
        _run(tiny, num_inference_steps=2, guidance_scale=5.0)  # explicit keywords
        assert calls.batches == [2, 2]  # 2 steps, CFG doubles the batch
        calls.batches.clear()
        inputs = _fresh(
            tiny,
            num_inference_steps=None,
            guidance_scale=None,
            prompt=None,
            height=None,
            width=None,
        )
        tiny.model("a red fox in snow", 32, 32, 3, **inputs)  # positional num_inference_steps
        assert len(calls.batches) == 3


def test_remove_restores_exact_baseline_and_patched_run_differs(tiny):
    baseline = _run(tiny)
    with few_step(tiny.model, "lcm", steps=2):
        patched = _run(tiny)
    assert not np.array_equal(baseline, patched)
    np.testing.assert_array_equal(_run(tiny), baseline)


def test_applying_twice_raises_and_changes_nothing(tiny):
    pipe = tiny.model
    with few_step(pipe, "lcm", steps=2):
        scheduler, cls = pipe.scheduler, type(pipe)
        with pytest.raises(AlreadyPatchedError):
            few_step(pipe, "tcd", steps=4)
        assert pipe.scheduler is scheduler and type(pipe) is cls


def test_local_lora_loaded_changes_output_and_is_gone_after_remove(tiny, lora_dir):
    pipe = tiny.model
    keys = set(pipe.unet.state_dict())
    baseline = _run(tiny)
    with few_step(pipe, "lcm", steps=2) as plain:
        without_lora = _run(tiny)
    assert plain.stats["lora_adapter"] is None
    with few_step(pipe, "lcm", steps=2, lora=lora_dir) as handle:
        adapter = handle.stats["lora_adapter"]
        assert adapter in pipe.get_list_adapters()["unet"]
        with_lora = _run(tiny)
    assert np.abs(with_lora - without_lora).max() > 1e-3
    assert pipe.get_list_adapters() == {}
    assert set(pipe.unet.state_dict()) == keys  # peft wrappers unwrapped again
    np.testing.assert_array_equal(_run(tiny), baseline)


def test_lora_keeps_a_users_existing_adapter(tiny, lora_dir):
    pipe = tiny.model
    pipe.load_lora_weights(lora_dir, adapter_name="mine")
    try:
        with few_step(pipe, "lcm", steps=2, lora=lora_dir) as handle:
            assert set(pipe.get_active_adapters()) == {"mine", handle.stats["lora_adapter"]}
        assert pipe.get_list_adapters()["unet"] == ["mine"]
        assert pipe.get_active_adapters() == ["mine"]
    finally:
        pipe.unload_lora_weights()


def test_tcd_swaps_scheduler_and_passes_eta(tiny, calls):
    with few_step(tiny.model, "tcd", steps=2, eta=0.0) as handle:
        assert isinstance(tiny.model.scheduler, diffusers.TCDScheduler)
        deterministic = _run(tiny, num_inference_steps=None, guidance_scale=None)
    assert handle.stats["call_defaults"]["eta"] == 0.0
    assert len(calls.batches) == 2
    with few_step(tiny.model, "tcd", steps=2, eta=0.9):
        stochastic = _run(tiny, num_inference_steps=None, guidance_scale=None)
    assert np.isfinite(stochastic).all()
    assert not np.array_equal(deterministic, stochastic)  # gamma reached the scheduler


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"method": "dpm"}, ValueError, "method"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 51}, ValueError, "steps"),
        ({"steps": 2.0}, TypeError, "steps"),
        ({"eta": 1.5}, ValueError, "eta"),
        ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
        ({"lora": "/no/such/lora.safetensors"}, ValueError, "lora"),
    ],
)
def test_bad_settings_raise_before_any_change(tiny, options, error, match):
    scheduler = tiny.model.scheduler
    with pytest.raises(error, match=match):
        few_step(tiny.model, **options)
    assert tiny.model.scheduler is scheduler
    assert Handle.active(tiny.model.unet) == {}


def test_unsupported_pipelines_raise(tiny):
    no_denoiser = types.SimpleNamespace(scheduler=tiny.model.scheduler)
    with pytest.raises(UnsupportedModelError, match="unet"):
        few_step(no_denoiser, "lcm")
    flow = types.SimpleNamespace(
        unet=torch.nn.Linear(1, 1), scheduler=diffusers.FlowMatchEulerDiscreteScheduler()
    )
    with pytest.raises(UnsupportedModelError, match="flow-matching"):
        few_step(flow, "lcm")


def test_missing_peft_raises_missing_dependency(tiny, lora_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a)
    )
    scheduler = tiny.model.scheduler
    with pytest.raises(MissingDependencyError, match="leanvision\\[train\\]"):
        few_step(tiny.model, "lcm", lora=lora_dir)
    assert tiny.model.scheduler is scheduler and Handle.active(tiny.model.unet) == {}


@pytest.mark.parametrize(
    ("factory", "expected_calls"),
    [
        (lambda: tiny_sd_pipeline(img2img=True), 2),  # 4 steps at strength 0.5
        (lambda: tiny_sd_pipeline(controlnet=True), 4),
        (tiny_sdxl_pipeline, 4),
        (tiny_pixart, 4),
    ],
    ids=["sd-img2img", "sd-controlnet", "sdxl", "pixart"],
)
def test_other_pipelines_sample_in_steps_and_restore(factory, expected_calls):
    other = factory()
    pipe = other.model
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    baseline = other.model(**other.info["make_inputs"]()).images
    counter = _CountCalls(denoiser)
    try:
        with few_step(pipe, "lcm", steps=4):
            inputs = other.info["make_inputs"]()
            del inputs["num_inference_steps"], inputs["guidance_scale"]
            patched = np.asarray(pipe(**inputs).images)
        assert len(counter.batches) == expected_calls and set(counter.batches) == {1}
    finally:
        counter.remove()
    assert np.isfinite(patched).all()
    np.testing.assert_array_equal(
        np.asarray(pipe(**other.info["make_inputs"]()).images), np.asarray(baseline)
    )

"""The one place upstream internals are read: names that work on both ends of the supported
window, and an error naming leanvision, the upstream version and the window when they don't."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from packaging.version import Version
from transformers.cache_utils import DynamicCache

import leanvision as lv
from leanvision.compat import transformers as tf_compat
from leanvision.compat import versions
from leanvision.testing import tiny_llava

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# transformers 5.24 renamed the decoder's cache keyword
RENAMED_IN = Version("5.24.0")


def _pyproject_bounds() -> dict[str, str]:
    """Lower bounds parsed from pyproject.toml itself."""
    bounds = {}
    for text in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        for specifier in requirement.specifier:
            if specifier.operator == ">=":
                bounds[requirement.name] = specifier.version
    return bounds


def test_lower_bounds_are_pyprojects():
    assert versions.lower_bounds() == _pyproject_bounds()
    pins = versions.oldest_pins()
    assert "transformers==" + _pyproject_bounds()["transformers"] in pins
    assert not any(pin.startswith(("torch==", "torchvision==")) for pin in pins)


def test_window_names_the_bound_and_the_newest_tested():
    low = _pyproject_bounds()["diffusers"]
    assert versions.window("diffusers") == (
        f"diffusers >={low} (tested up to {versions.NEWEST_TESTED['diffusers']})"
    )
    for library, newest in versions.NEWEST_TESTED.items():
        assert Version(newest) >= Version(_pyproject_bounds()[library])


def test_cache_keyword_follows_the_installed_transformers():
    tiny = tiny_llava()
    language_model = tiny.model.model.language_model
    installed = Version(transformers.__version__)
    expected = "cache" if installed >= RENAMED_IN else "past_key_values"
    assert tf_compat.cache_keyword(language_model) == expected
    assert tf_compat.cache_keyword(language_model.layers[0]) == expected


def test_kv_cache_reads_either_name_and_refuses_an_unknown_one():
    cache = DynamicCache()
    assert tf_compat.kv_cache({"cache": cache, "use_cache": True}) is cache
    assert tf_compat.kv_cache({"past_key_values": cache}) is cache
    assert tf_compat.kv_cache({"past_key_values": None, "input_ids": None}) is None
    with pytest.raises(lv.UpstreamVersionError) as caught:
        tf_compat.kv_cache({"kv_state": cache})
    message = str(caught.value)
    assert caught.value.library == "transformers"
    assert f"leanvision {lv.__version__}" in message
    assert "'kv_state'" in message
    assert f"installed: transformers {transformers.__version__}" in message
    assert versions.window("transformers") in message


def test_output_cache_reads_the_model_output():
    tiny = tiny_llava()
    with torch.no_grad():
        out = tiny.model(**tiny.inputs, use_cache=True)
    cache = tf_compat.output_cache(out)
    assert isinstance(cache, DynamicCache)
    assert cache.get_seq_length() == tiny.inputs["input_ids"].shape[1]


def _rename_cache_keyword(module: torch.nn.Module) -> None:
    """Give ``module`` a forward whose cache keyword leanvision does not know, as a future
    transformers might."""
    original = module.forward

    def forward(input_ids=None, kv_state=None, **kwargs):
        return original(input_ids=input_ids, **kwargs)

    module.forward = forward


@pytest.mark.parametrize(
    ("method", "options", "renamed"),
    [("fastv", {"layer": 1, "keep": 0.5}, "language_model"), ("visionzip", {"keep": 0.5}, "model")],
)
def test_compress_refuses_a_renamed_cache_keyword_before_patching(method, options, renamed):
    tiny = tiny_llava()
    model = tiny.model
    target = model.model.language_model if renamed == "language_model" else model.model
    _rename_cache_keyword(target)
    implementation = model.config.text_config._attn_implementation
    with pytest.raises(lv.UpstreamVersionError, match="takes none of the KV-cache keywords"):
        lv.vlm.compress(model, method, **options)
    assert lv.Handle.active(model) == {}
    assert model.config.text_config._attn_implementation == implementation
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("method", "options"), [("fastv", {"layer": 1, "keep": 0.5}), ("visionzip", {"keep": 0.5})]
)
def test_generate_names_the_versions_when_the_cache_arrives_under_an_unknown_name(
    method, options, monkeypatch
):
    # The bug transformers 5.24 caused: the cache came under a keyword leanvision did not read,
    # so every decode step looked like a prefill and attention failed on a shape mismatch.
    tiny = tiny_llava(batch=2)
    model = tiny.model
    real = tf_compat.cache_keyword(model.model.language_model)
    with lv.vlm.compress(model, method, **options):
        others = tuple(name for name in tf_compat.CACHE_KEYWORDS if name != real)
        monkeypatch.setattr(tf_compat, "CACHE_KEYWORDS", others)
        with pytest.raises(lv.UpstreamVersionError, match=rf"KV cache as '{real}'"):
            model.generate(**tiny.inputs, max_new_tokens=3, do_sample=False)


def test_timm_and_diffusers_name_a_missing_piece():
    from leanvision.compat import diffusers as df_compat
    from leanvision.compat import timm as timm_compat

    with pytest.raises(lv.UpstreamVersionError, match=r"efficientvit_mit has no Nope.*timm "):
        timm_compat.efficientvit_class("Nope")
    assert timm_compat.efficientvit_class("LiteMLA").__module__ == timm_compat.EFFICIENTVIT_MODULE
    with pytest.raises(lv.UpstreamVersionError, match=r"diffusers.hooks has no apply_nope"):
        df_compat.cache_apply_function("apply_nope")


def test_cache_context_is_set_as_diffusers_own_cache_context_sets_it():
    from leanvision.compat import diffusers as df_compat
    from leanvision.testing import tiny_flux

    class Stateful(df_compat.ModelHook):
        _is_stateful = True

        def __init__(self):
            super().__init__()
            self.state_manager = df_compat.StateManager(df_compat.BaseState)

        def reset_state(self, module):
            return module

    transformer = tiny_flux().model.transformer  # a CacheMixin model: has cache_context
    hook = Stateful()
    block = transformer.transformer_blocks[0]
    df_compat.HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, "probe")
    with transformer.cache_context("uncond"):  # the oracle: diffusers' own way
        expected = df_compat.context_name(hook.state_manager)
    assert expected == "uncond"
    assert df_compat.context_name(hook.state_manager) is None
    df_compat.set_cache_context(transformer, "uncond", step_index=3)
    assert df_compat.context_name(hook.state_manager) == expected
    df_compat.set_cache_context(transformer, None, step_index=3)
    assert df_compat.context_name(hook.state_manager) is None
    assert df_compat.own_registry(block) is df_compat.registry(block)
    assert df_compat.own_registry(transformer) is not None  # set_cache_context made one


def test_installed_versions_are_inside_the_window():
    for library in versions.UPSTREAM:
        installed = Version(importlib.metadata.version(library))
        assert installed >= Version(versions.lower_bound(library)), library

"""One-line configs that hand off to diffusers' own caches.

``first_block_cache``, ``pyramid_attention_broadcast``, ``faster_cache`` and ``taylorseer``
build the diffusers config and call diffusers' ``apply_*`` function on the denoiser, so the
result is exactly diffusers' (tested against ``transformer.enable_cache``). What leanvision
adds: the hooks are removed by ``handle.remove()``; their state is reset at the start of
every pipeline call; and on pipelines that never call ``cache_context`` (SD3, PixArt, DiT)
the runtime names the CFG branch for them, so diffusers' stateful hooks do not raise
"No cache context is set". The timestep callback reads ``pipe.current_timestep`` when the
pipeline has one, else the timestep the denoiser received.

They need a DiT-like denoiser (diffusers' caches look for transformer-block lists); on a
UNet they raise :class:`~leanvision.UnsupportedModelError`.

>>> import leanvision as lv
>>> from leanvision.testing.tiny_diffusion import tiny_pixart
>>> tiny = tiny_pixart()
>>> with lv.diffusion.accelerate(tiny.model, "taylorseer", cache_interval=2) as handle:
...     _ = tiny.model(**{**tiny.inputs, "num_inference_steps": 6})
>>> handle.method
'taylorseer'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from leanvision.compat import diffusers as df_compat
from leanvision.core.config import MethodConfig, check_range
from leanvision.core.errors import UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.diffusion._hooks import untrack_new_registries
from leanvision.diffusion.denoisers import DENOISERS, find_denoiser
from leanvision.diffusion.registry import METHODS
from leanvision.diffusion.runtime import get_runtime

__all__ = ["FasterCache", "FirstBlockCache", "PyramidAttentionBroadcast", "TaylorSeer"]


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    check_range(name, value, low)


def _check_range_pair(name: str, value: Any) -> None:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and value[0] < value[1]):
        raise ValueError(f"{name} must be a (low, high) pair with low < high, got {value!r}")


# The batch-concatenated CFG inputs of the DiT pipelines, which FasterCache splits per branch.
CFG_INPUTS = (
    "hidden_states",
    "encoder_hidden_states",
    "timestep",
    "attention_mask",
    "encoder_attention_mask",
    "pooled_projections",
    "class_labels",
)
# (method, denoiser class) pairs diffusers' hooks cannot handle, with the reason.
_UNSUPPORTED = {
    ("first_block_cache", "SD3Transformer2DModel"): (
        "its last joint block returns no text stream, which diffusers' first-block cache "
        "cannot cache"
    ),
}


@dataclasses.dataclass
class FirstBlockCache(MethodConfig):
    """diffusers' first-block cache: skip the other blocks while the first block barely changes.

    The other blocks are skipped while the first block's residual changes by less than
    ``threshold`` (relative mean absolute difference).

    >>> FirstBlockCache(threshold=0.1).threshold
    0.1
    """

    threshold: float = 0.05

    def validate(self) -> None:
        check_range("threshold", self.threshold, 0.0, low_inclusive=False)

    def to_diffusers(self, timestep: Callable[[], float], denoiser: Any) -> Any:
        return df_compat.cache_config_class("FirstBlockCacheConfig")(threshold=self.threshold)


@dataclasses.dataclass
class PyramidAttentionBroadcast(MethodConfig):
    """diffusers' Pyramid Attention Broadcast: reuse attention outputs across steps.

    Recompute self-attention every ``spatial_skip`` steps (and cross-attention every
    ``cross_skip``) while the timestep is inside ``timestep_range``.

    >>> PyramidAttentionBroadcast(spatial_skip=3).timestep_range
    (100, 800)
    """

    spatial_skip: int = 2
    cross_skip: int | None = None
    timestep_range: tuple[float, float] = (100, 800)

    def validate(self) -> None:
        _check_int("spatial_skip", self.spatial_skip, 1)
        if self.cross_skip is not None:
            _check_int("cross_skip", self.cross_skip, 1)
        _check_range_pair("timestep_range", self.timestep_range)

    def to_diffusers(self, timestep: Callable[[], float], denoiser: Any) -> Any:
        return df_compat.cache_config_class("PyramidAttentionBroadcastConfig")(
            spatial_attention_block_skip_range=self.spatial_skip,
            cross_attention_block_skip_range=self.cross_skip,
            spatial_attention_timestep_skip_range=tuple(self.timestep_range),
            cross_attention_timestep_skip_range=tuple(self.timestep_range),
            current_timestep_callback=timestep,
        )


@dataclasses.dataclass
class FasterCache(MethodConfig):
    """diffusers' FasterCache: reuse attention across steps and the unconditional CFG branch.

    Attention is reused every ``spatial_skip`` steps inside ``timestep_range``, plus
    CFG-cache (unconditional branch every ``unconditional_skip`` steps inside
    ``unconditional_timestep_range``; batched CFG only). ``guidance_distilled``
    defaults to the denoiser's ``guidance_embeds`` config (Flux-dev-like models). The first
    denoiser call of a run always computes in full (diffusers would crash there on
    guidance-distilled models when the first timestep is inside ``timestep_range``).

    >>> FasterCache().unconditional_skip
    5
    """

    spatial_skip: int = 2
    timestep_range: tuple[float, float] = (-1, 681)
    unconditional_skip: int = 5
    unconditional_timestep_range: tuple[float, float] = (-1, 641)
    attention_weight: float = 0.5
    guidance_distilled: bool | None = None

    def validate(self) -> None:
        _check_int("spatial_skip", self.spatial_skip, 1)
        _check_int("unconditional_skip", self.unconditional_skip, 1)
        _check_range_pair("timestep_range", self.timestep_range)
        _check_range_pair("unconditional_timestep_range", self.unconditional_timestep_range)
        check_range("attention_weight", self.attention_weight, 0.0, 1.0)

    def to_diffusers(self, timestep: Callable[[], float], denoiser: Any) -> Any:
        distilled = self.guidance_distilled
        if distilled is None:
            distilled = bool(getattr(denoiser.config, "guidance_embeds", False))
        weight = self.attention_weight
        return df_compat.cache_config_class("FasterCacheConfig")(
            spatial_attention_block_skip_range=self.spatial_skip,
            spatial_attention_timestep_skip_range=tuple(self.timestep_range),
            unconditional_batch_skip_range=self.unconditional_skip,
            unconditional_batch_timestep_skip_range=tuple(self.unconditional_timestep_range),
            attention_weight_callback=lambda _module: weight,
            tensor_format="BCHW",
            is_guidance_distilled=distilled,
            current_timestep_callback=timestep,
            # The batch-concatenated CFG inputs of every supported DiT pipeline.
            _unconditional_conditional_input_kwargs_identifiers=CFG_INPUTS,
        )


@dataclasses.dataclass
class TaylorSeer(MethodConfig):
    """diffusers' TaylorSeer: forecast attention outputs from earlier steps by a Taylor series.

    The series has order ``max_order``; attention is recomputed every ``cache_interval``
    steps after the first ``disable_cache_before_step`` steps (and from ``disable_cache_after_step`` on).

    >>> TaylorSeer(cache_interval=2).max_order
    1
    """

    cache_interval: int = 5
    disable_cache_before_step: int = 3
    disable_cache_after_step: int | None = None
    max_order: int = 1
    factors_dtype: torch.dtype = torch.float32
    cache_identifiers: tuple[str, ...] = (r"(single_)?transformer_blocks\.\d+\.attn\d*",)

    def validate(self) -> None:
        _check_int("cache_interval", self.cache_interval, 1)
        _check_int("disable_cache_before_step", self.disable_cache_before_step, 0)
        if self.disable_cache_after_step is not None:
            _check_int("disable_cache_after_step", self.disable_cache_after_step, 0)
        _check_int("max_order", self.max_order, 0)
        if not isinstance(self.factors_dtype, torch.dtype):
            raise TypeError(f"factors_dtype must be a torch.dtype, got {self.factors_dtype!r}")

    def to_diffusers(self, timestep: Callable[[], float], denoiser: Any) -> Any:
        return df_compat.cache_config_class("TaylorSeerCacheConfig")(
            cache_interval=self.cache_interval,
            disable_cache_before_step=self.disable_cache_before_step,
            disable_cache_after_step=self.disable_cache_after_step,
            max_order=self.max_order,
            taylor_factors_dtype=self.factors_dtype,
            # diffusers' default patterns end in "attn", missing PixArt/DiT's attn1/attn2.
            cache_identifiers=list(self.cache_identifiers),
        )


# config class -> (diffusers apply function, hook names it registers)
_DELEGATES: dict[type, tuple[str, tuple[str, ...]]] = {
    FirstBlockCache: ("apply_first_block_cache", ("fbc_leader_block_hook", "fbc_block_hook")),
    PyramidAttentionBroadcast: (
        "apply_pyramid_attention_broadcast",
        ("pyramid_attention_broadcast",),
    ),
    FasterCache: ("apply_faster_cache", ("faster_cache_denoiser", "faster_cache_block")),
    TaylorSeer: ("apply_taylorseer_cache", ("taylorseer_cache",)),
}


def _apply_delegated(denoiser: torch.nn.Module, config: Any, handle: Handle, pipe: Any) -> None:
    _, _, spec = find_denoiser(denoiser)
    if spec.kind != "dit":
        supported = [s.class_name for s in DENOISERS.values() if s.kind == "dit"]
        raise UnsupportedModelError(denoiser, supported, what="denoiser for diffusers' caches")
    method = METHODS.entry(config).name
    reason = _UNSUPPORTED.get((method, type(denoiser).__name__))
    if reason is not None:
        raise UnsupportedModelError(
            denoiser,
            [
                s.class_name
                for s in DENOISERS.values()
                if s.kind == "dit" and s.class_name != type(denoiser).__name__
            ],
            what=f"denoiser for {method} ({reason})",
        )
    if getattr(denoiser, "is_cache_enabled", False):
        raise ValueError(
            "this denoiser already has a diffusers cache enabled (enable_cache); "
            "call disable_cache() first"
        )
    runtime = get_runtime(handle, denoiser, pipe)
    runtime.provide_cache_context = True

    def current_timestep() -> float:
        if isinstance(config, FasterCache) and runtime.step_index == 0 and runtime.branch == 0:
            # diffusers' FasterCache block hook reuses its (still empty) cache on the first call
            # of a guidance-distilled model (Flux) whose first timestep lies in timestep_range,
            # and crashes with "'NoneType' object is not subscriptable". Nothing is cached yet,
            # so report a timestep outside every range: the first call always computes, which is
            # what diffusers does anyway whenever it does not crash.
            return math.inf
        value = getattr(pipe, "current_timestep", None) if pipe is not None else None
        if value is None:
            value = runtime.timestep
        return float(value) if value is not None else 0.0

    apply_name, hook_names = _DELEGATES[type(config)]
    apply = df_compat.cache_apply_function(apply_name)
    diffusers_config = config.to_diffusers(current_timestep, denoiser)
    untrack_new_registries(handle, denoiser)
    registry = df_compat.HookRegistry.check_if_exists_or_initialize(denoiser)
    for name in hook_names:
        handle.on_remove(lambda name=name: registry.remove_hook(name, recurse=True))
    if hasattr(denoiser, "enable_cache"):
        # Tell diffusers a cache is on, so enable_cache() refuses a second one.
        handle.set_attr(denoiser, df_compat.CACHE_CONFIG_ATTR, diffusers_config)
    apply(denoiser, diffusers_config)
    hooked = [
        module
        for module in denoiser.modules()
        if (found := df_compat.registry(module)) is not None
        and any(name in found.hooks for name in hook_names)
    ]
    if not hooked:
        raise UnsupportedModelError(
            denoiser,
            ["models whose blocks diffusers' caches recognise"],
            what=f"denoiser for {method} (diffusers found nothing to hook)",
        )


for _name, _config_class in (
    ("first_block_cache", FirstBlockCache),
    ("pyramid_attention_broadcast", PyramidAttentionBroadcast),
    ("faster_cache", FasterCache),
    ("taylorseer", TaylorSeer),
):
    METHODS.register(_name, _config_class)(_apply_delegated)

"""Multiply-accumulates of the denoising loop, counted with ``torch.utils.flop_counter``.

MACs are FLOPs / 2 as ``FlopCounterMode`` counts them (matmuls, convolutions, attention).
Only the denoising modules (the denoiser and, when the pipeline has one, its ControlNet) are
counted, call by call, so text encoders and the VAE do not dilute the ratio of a method.

>>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
>>> tiny = tiny_sd_pipeline()
>>> report = denoising_macs(tiny.model, tiny.info["make_inputs"]())
>>> len(report.per_call), report.images, report.per_image == report.total
(10, 1, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from leanvision.diffusion.denoisers import find_denoiser

__all__ = ["MacsReport", "count_macs", "denoising_macs"]


@dataclasses.dataclass
class MacsReport:
    """MACs (multiply-accumulates) of one pipeline call's denoising modules.

    ``per_call`` lists each denoiser call (ControlNet calls are added to the denoiser call
    that follows them), ``total`` is their sum, ``images`` the number of images made,
    ``per_image`` is ``total / images``, ``output`` is what the pipeline returned.

    >>> report = MacsReport(total=300, per_call=[100, 100, 100], images=2)
    >>> report.per_image
    150.0
    """

    total: int
    per_call: list[int]
    images: int
    output: Any = dataclasses.field(default=None, repr=False)

    @property
    def per_image(self) -> float:
        return self.total / max(self.images, 1)


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts the CPU fused attention kernel, which torch's
    registry has no formula for (it counts the CUDA flash / efficient / cuDNN ones)."""
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: _attention_flops})


def _attention_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` and return ``(result, MACs)``.

    >>> layer = torch.nn.Linear(4, 3, bias=False)
    >>> count_macs(layer, torch.zeros(2, 4))[1]
    24
    """
    with flop_counter() as counter:
        result = fn(*args, **kwargs)
    return result, counter.get_total_flops() // 2


def denoising_macs(
    pipe: Any, inputs: dict[str, Any], modules: list[torch.nn.Module] | None = None
) -> MacsReport:
    """Run ``pipe(**inputs)`` once and count the MACs of its denoising modules.

    ``modules`` defaults to the denoiser plus ``pipe.controlnet`` when present. The number
    of images is read from the output (``.images``). Works with any leanvision method
    applied: skipped work shows up as fewer MACs.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_sd_pipeline
    >>> tiny = tiny_sd_pipeline()
    >>> base = denoising_macs(tiny.model, tiny.info["make_inputs"]())
    >>> with lv.diffusion.accelerate(tiny.model, "deepcache", interval=2):
    ...     cached = denoising_macs(tiny.model, tiny.info["make_inputs"]())
    >>> len(base.per_call), cached.total < base.total
    (10, True)
    """
    if modules is None:
        denoiser, _, _ = find_denoiser(pipe)
        modules = [denoiser]
        controlnet = getattr(pipe, "controlnet", None)
        if isinstance(controlnet, torch.nn.Module):
            modules.append(controlnet)
    denoiser_module = modules[0]
    per_call: list[int] = []
    pending = [0]  # MACs of auxiliary modules (ControlNet) since the last denoiser call
    active: list[FlopCounterMode] = []

    def pre_hook(module: torch.nn.Module, args: Any) -> None:
        if active:  # nested call (a denoiser inside a counted module): already counted
            return
        counter = flop_counter()
        counter.__enter__()
        active.append(counter)
        counter._leanvision_owner = module  # type: ignore[attr-defined]

    def post_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not active or active[-1]._leanvision_owner is not module:  # type: ignore[attr-defined]
            return
        counter = active.pop()
        counter.__exit__(None, None, None)
        macs = counter.get_total_flops() // 2
        if module is denoiser_module:
            per_call.append(macs + pending[0])
            pending[0] = 0
        else:
            pending[0] += macs

    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
        with torch.no_grad():
            output = pipe(**inputs)
    finally:
        for hook in handles:
            hook.remove()
        while active:
            active.pop().__exit__(None, None, None)
    images = len(getattr(output, "images", [])) or 1
    total = sum(per_call) + pending[0]
    return MacsReport(total=total, per_call=per_call, images=images, output=output)

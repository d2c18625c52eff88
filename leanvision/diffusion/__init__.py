"""Diffusion acceleration on diffusers pipelines: step caching, token merging, few-step.

One entry point: ``accelerate(pipe, method, **options)`` returns a reversible
:class:`~leanvision.Handle`. Methods: step caches (``deepcache``, ``inherit``, ``residual``
and diffusers' ``first_block_cache``, ``pyramid_attention_broadcast``, ``faster_cache``,
``taylorseer``), token merging (``tome``) and few-step sampling (``lcm``, ``tcd``; also
``few_step(pipe, "lcm", steps=4)``). ``methods()`` lists them with one line each;
``distill`` trains an LCM student; ``metrics`` scores fidelity to the baseline.

>>> import leanvision as lv
>>> from leanvision.testing import tiny_sd_pipeline
>>> tiny = tiny_sd_pipeline()
>>> with lv.diffusion.accelerate(tiny.model, "deepcache", interval=2) as handle:
...     images = tiny.model(**tiny.inputs).images
>>> images.shape, handle.stats["cached_calls"] > 0
((1, 32, 32, 3), True)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from leanvision.core.lazy import lazy_exports
from leanvision.diffusion.api import accelerate
from leanvision.diffusion.cache import (
    DeepCache,
    FasterCache,
    FirstBlockCache,
    Inherit,
    PyramidAttentionBroadcast,
    Residual,
    TaylorSeer,
    calibrate,
)
from leanvision.diffusion.macs import MacsReport, count_macs, denoising_macs
from leanvision.diffusion.registry import METHODS, load_methods, methods
from leanvision.diffusion.runtime import DenoiserRuntime, get_runtime

# Loaded on first access, so a method module is imported only when used.
_LAZY = {
    "ToMe": "leanvision.diffusion.tome",
    "few_step": "leanvision.diffusion.consistency",
    "distill": "leanvision.diffusion.consistency",
    "FewStepConfig": "leanvision.diffusion.consistency",
    "LCM": "leanvision.diffusion.consistency",
    "TCD": "leanvision.diffusion.consistency",
    "DistillConfig": "leanvision.diffusion.consistency",
}
# Sub-modules reachable as attributes without an explicit import (listed by ``dir()``; not in
# ``__all__``, which holds functions and classes).
_SUBMODULES = ("metrics",)

__all__ = [
    "METHODS",
    "DeepCache",
    "DenoiserRuntime",
    "FasterCache",
    "FirstBlockCache",
    "Inherit",
    "PyramidAttentionBroadcast",
    "Residual",
    "TaylorSeer",
    "calibrate",
    "MacsReport",
    "accelerate",
    "count_macs",
    "denoising_macs",
    "get_runtime",
    "load_methods",
    "methods",
    *_LAZY,
]

_lazy_attribute = lazy_exports(__name__, _LAZY)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    return _lazy_attribute(name)


def __dir__() -> list[str]:
    # Tab completion shows the public names and the sub-modules, not this file's own imports.
    submodules = {
        name
        for name, value in globals().items()
        if isinstance(value, ModuleType)
        and value.__name__.startswith(f"{__name__}.")
        and not name.startswith("_")
    }
    return sorted({*__all__, *_SUBMODULES, *submodules})

"""Diffusion acceleration on diffusers pipelines: step caching, token merging, few-step.

``accelerate(pipe, method, **options)`` applies step caches (``deepcache``, ``inherit``,
``residual``, delegated diffusers caches) and token merging (``tome``) reversibly;
``few_step`` / ``distill`` live in :mod:`leanvision.diffusion.few_step`.

>>> import leanvision as lv
>>> "deepcache" in lv.diffusion.METHODS.names()
True
"""

from __future__ import annotations

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
from leanvision.diffusion.registry import METHODS, load_methods
from leanvision.diffusion.runtime import DenoiserRuntime, get_runtime

# Loaded on first access, so a method module is imported only when used.
_LAZY = {
    "ToMe": "leanvision.diffusion.tome",
    "few_step": "leanvision.diffusion.few_step",
    "distill": "leanvision.diffusion.few_step",
    "FewStepConfig": "leanvision.diffusion.few_step",
    "DistillConfig": "leanvision.diffusion.few_step",
}

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
    *_LAZY,
]


__getattr__ = lazy_exports(__name__, _LAZY)

"""The diffusion family's method registry. Method modules register themselves on import."""

from __future__ import annotations

import importlib

from leanvision.core.registry import Registry

METHODS: Registry = Registry("diffusion")

# Modules whose import registers ``accelerate`` methods: the step caches (deepcache, inherit,
# residual, delegated diffusers caches) and token merging.
METHOD_MODULES: tuple[str, ...] = ("leanvision.diffusion.cache", "leanvision.diffusion.tome")


def load_methods() -> Registry:
    """Import every method module once and return the populated registry."""
    for module in METHOD_MODULES:
        importlib.import_module(module)
    return METHODS

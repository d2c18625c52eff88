"""The vlm family's method registry. Method modules register themselves on import."""

from __future__ import annotations

import importlib

from leanvision.core.registry import Registry

METHODS: Registry = Registry("vlm")

# Modules whose import registers methods: pre-LLM methods and in-LLM methods.
METHOD_MODULES: tuple[str, ...] = ("leanvision.vlm.methods", "leanvision.vlm.inllm")


def load_methods() -> Registry:
    """Import every method module once and return the populated registry."""
    for module in METHOD_MODULES:
        importlib.import_module(module)
    return METHODS

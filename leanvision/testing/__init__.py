"""Tiny random-weight models of every supported family, built offline from configs, and small
trained ones (``trained_*``, :mod:`leanvision.testing.trained`) whose accuracy means something.

Each factory returns a :class:`TinyModel` (model or pipeline + inputs that fit it). Names load
lazily, so asking for a VLM factory never imports diffusers and vice versa.

>>> from leanvision.testing import tiny_llava
>>> tiny = tiny_llava(batch=2)
>>> tiny.model.generate(**tiny.inputs, max_new_tokens=3).shape[0]
2
"""

from __future__ import annotations

import importlib
from typing import Any

from leanvision.testing.common import TinyModel

_FACTORIES = {
    "leanvision.testing.tiny_vlm": (
        "tiny_llava",
        "tiny_llava_next",
        "tiny_llava_onevision",
        "tiny_qwen2_vl",
        "tiny_qwen2_5_vl",
        "tiny_idefics3",
        "vlm_shaped",
    ),
    "leanvision.testing.tiny_diffusion": (
        "tiny_sd_pipeline",
        "tiny_sdxl_pipeline",
        "tiny_pixart",
        "tiny_dit",
        "tiny_flux",
        "tiny_sd3",
    ),
    "leanvision.testing.tiny_vision": ("tiny_efficientvit",),
    "leanvision.testing.trained": (
        "trained_llava",
        "trained_qwen2_vl",
        "trained_sd_pipeline",
        "trained_lcm_pipeline",
        "scene_judge",
    ),
}
_MODULE_OF = {name: module for module, names in _FACTORIES.items() for name in names}

__all__ = ["TinyModel", *_MODULE_OF]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'leanvision.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

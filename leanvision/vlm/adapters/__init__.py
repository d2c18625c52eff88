"""Model-family adapters: where the vision tower, projector, decoder layers, placeholder ids
and positions live for each supported transformers VLM. See :mod:`.base` for the API.

>>> from leanvision.vlm.adapters import supported_families
>>> supported_families()[0]
'llava (LlavaForConditionalGeneration)'
"""

from __future__ import annotations

from typing import Any

from leanvision.core.errors import UnsupportedModelError
from leanvision.vlm.adapters.base import (
    ScoreRequest,
    Spliced,
    VisualSegment,
    VLMAdapter,
    splice,
    text_position_ids,
)
from leanvision.vlm.adapters.idefics3 import Idefics3Adapter
from leanvision.vlm.adapters.llava import LlavaAdapter
from leanvision.vlm.adapters.llava_next import LlavaNextAdapter
from leanvision.vlm.adapters.llava_onevision import LlavaOnevisionAdapter
from leanvision.vlm.adapters.qwen2_vl import Qwen2VLAdapter

ADAPTERS: tuple[VLMAdapter, ...] = (
    LlavaAdapter(),
    LlavaNextAdapter(),
    LlavaOnevisionAdapter(),
    Qwen2VLAdapter(),
    Idefics3Adapter(),
)

__all__ = [
    "ADAPTERS",
    "ScoreRequest",
    "Spliced",
    "VLMAdapter",
    "VisualSegment",
    "get_adapter",
    "splice",
    "supported_families",
    "text_position_ids",
]


def supported_families() -> list[str]:
    """One line per family: name and the transformers classes it covers.

    >>> supported_families()[3]
    'qwen2_vl (Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)'
    """
    return [f"{a.name} ({', '.join(a.class_names)})" for a in ADAPTERS]


def get_adapter(model: Any) -> VLMAdapter:
    """The adapter for ``model`` (an outer ``...ForConditionalGeneration`` instance).

    Matches ``model.config.model_type``; raises :class:`leanvision.UnsupportedModelError`
    listing the supported families for anything else (including the inner ``model.model``).

    >>> from leanvision.testing import tiny_qwen2_vl
    >>> adapter = get_adapter(tiny_qwen2_vl().model)
    >>> adapter.name, adapter.mrope, adapter.supports_video
    ('qwen2_vl', True, True)
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            adapter.check_model(model)
            return adapter
    raise UnsupportedModelError(model, supported_families(), family="vlm")

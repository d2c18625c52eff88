"""What every tiny factory returns."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class TinyModel:
    """A ready-to-run tiny random-weight model (or pipeline) and inputs that fit it.

    ``model`` is a transformers model, a diffusers pipeline or a timm/torch module;
    ``inputs`` are the keyword arguments of one call: ``model(**inputs)`` /
    ``model.generate(**inputs)`` for a VLM, ``pipe(**inputs)`` for a pipeline,
    ``model(**inputs)`` for a backbone. ``info`` holds facts a test or benchmark needs
    (image-token id, number of image tokens, family name, ...).
    """

    model: Any
    inputs: dict[str, Any]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

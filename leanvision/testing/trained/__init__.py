"""Small trained models of the real transformers and diffusers classes, with their tasks.

The weights ship with the package (float16 safetensors, a few MB each) and load offline. Each
model was trained on a procedural task from :mod:`leanvision.testing.scenes`, where the answer
depends on a few image regions, so a compression method's accuracy is measurable on a CPU:

* ``trained_llava()``: ``LlavaForConditionalGeneration`` answering scene questions
  (144 image tokens);
* ``trained_qwen2_vl()``: ``Qwen2VLForConditionalGeneration`` on scene images and motion clips;
* ``trained_sd_pipeline()``: a ``StableDiffusionPipeline`` drawing captioned shapes, its
  distilled LCM student, and ``scene_judge()``, the classifier that scores what it draws.

Names load lazily; the training scripts are in the repository's ``training/`` folder.
"""

from __future__ import annotations

import importlib
from typing import Any

_LOADERS = {
    "leanvision.testing.trained.llava": ("trained_llava",),
    "leanvision.testing.trained.vqa": ("answer_questions", "vqa_accuracy"),
    "leanvision.testing.trained.qwen2_vl": ("trained_qwen2_vl",),
    "leanvision.testing.trained.sd": ("trained_sd_pipeline", "trained_lcm_pipeline"),
    "leanvision.testing.trained.judge": ("scene_judge",),
}
_MODULE_OF = {name: module for module, names in _LOADERS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'leanvision.testing.trained' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

"""Visual-token compression for transformers VLMs.

``compress(model, method, **config) -> Handle`` shortens the visual part of the prompt
(pre-LLM methods) or drops visual tokens inside the language model (in-LLM methods), for
LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL and Idefics3/SmolVLM.

>>> import leanvision as lv                                   # doctest: +SKIP
>>> h = lv.vlm.compress(model, "visionzip", tokens=64)         # doctest: +SKIP
>>> model.generate(**inputs); h.remove()                      # doctest: +SKIP
"""

from __future__ import annotations

from leanvision.core.lazy import lazy_exports

_EXPORTS = {
    "compress": "leanvision.vlm.api",
    "get_adapter": "leanvision.vlm.adapters",
    "supported_families": "leanvision.vlm.adapters",
    "VLMAdapter": "leanvision.vlm.adapters",
    "METHODS": "leanvision.vlm.registry",
    "load_methods": "leanvision.vlm.registry",
    "BudgetConfig": "leanvision.vlm.methods",
    "VisionZip": "leanvision.vlm.methods",
    "PruMergePlus": "leanvision.vlm.methods",
    "BipartiteMerge": "leanvision.vlm.methods",
    "DivPrune": "leanvision.vlm.methods",
    "RandomPrune": "leanvision.vlm.methods",
    "Pool": "leanvision.vlm.methods",
    "Tome": "leanvision.vlm.tome",
    "Temporal": "leanvision.vlm.video",
    "ProgressivePool": "leanvision.vlm.video",
    "prefill_flops": "leanvision.vlm.flops",
    # in-LLM configs
    "FastV": "leanvision.vlm.inllm",
    "PDrop": "leanvision.vlm.inllm",
    "SparseVLM": "leanvision.vlm.inllm",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__

"""Visual-token compression for transformers VLMs.

``compress(model, method, **options) -> Handle`` shortens the visual part of the prompt
(pre-LLM methods) or drops visual tokens inside the language model (in-LLM methods), for
LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL and Idefics3/SmolVLM.
``methods()`` lists the methods; each has a config class here (``VisionZip``, ``FastV``...)
documenting its options.

>>> import leanvision as lv
>>> from leanvision.testing import tiny_qwen2_vl
>>> tiny = tiny_qwen2_vl()  # a random-weight Qwen2-VL; its image has 48 visual tokens
>>> with lv.vlm.compress(tiny.model, "fastv", keep=0.25) as handle:
...     out = tiny.model.generate(**tiny.inputs, max_new_tokens=2, do_sample=False)
>>> handle.stats["tokens_after"]
[12]

With a real checkpoint, the same code after ``from_pretrained``::

    model = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")
    with lv.vlm.compress(model, "visionzip", tokens=64):
        out = model.generate(**inputs, max_new_tokens=20)
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
    "methods": "leanvision.vlm.registry",
    "BudgetConfig": "leanvision.vlm.budget",
    "VisionZip": "leanvision.vlm.prellm",
    "PruMergePlus": "leanvision.vlm.prellm",
    "BipartiteMerge": "leanvision.vlm.prellm",
    "DivPrune": "leanvision.vlm.prellm",
    "RandomPrune": "leanvision.vlm.prellm",
    "Pool": "leanvision.vlm.prellm",
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

"""In-LLM visual-token pruning: ``fastv``, ``pdrop`` (PyramidDrop) and ``sparsevlm``.

These methods let the first decoder layers see the whole prompt and drop visual tokens
inside the language model, once, at prefill; later layers (and their KV cache) hold fewer
tokens. Importing this package registers them in :data:`leanvision.vlm.registry.METHODS`.

>>> import leanvision as lv                                              # doctest: +SKIP
>>> with lv.vlm.compress(model, "fastv", layer=2, keep=0.25) as h:        # doctest: +SKIP
...     out = model.generate(**inputs, max_new_tokens=20)
>>> h.stats["avg_visual_tokens_per_layer"]                              # doctest: +SKIP
"""

from leanvision.vlm.inllm.methods import FastV, PDrop
from leanvision.vlm.inllm.sparsevlm import SparseVLM

__all__ = ["FastV", "PDrop", "SparseVLM"]

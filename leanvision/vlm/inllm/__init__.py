"""In-LLM visual-token pruning: ``fastv``, ``pdrop`` (PyramidDrop) and ``sparsevlm``.

These methods let the first decoder layers see the whole prompt and drop visual tokens
inside the language model, once, at prefill; later layers (and their KV cache) hold fewer
tokens. Importing this package registers them in :data:`leanvision.vlm.registry.METHODS`.

>>> import leanvision as lv
>>> from leanvision.testing import tiny_llava
>>> tiny = tiny_llava()
>>> with lv.vlm.compress(tiny.model, "fastv", keep=0.25) as handle:
...     out = tiny.model.generate(**tiny.inputs, max_new_tokens=2, do_sample=False)
>>> handle.stats["stages"], handle.stats["visual_tokens_per_layer"]  # 2 decoder layers
([1], [64.0, 16.0])
"""

from leanvision.vlm.inllm.methods import FastV, PDrop
from leanvision.vlm.inllm.sparsevlm import SparseVLM

__all__ = ["FastV", "PDrop", "SparseVLM"]

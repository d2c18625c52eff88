"""The vision family's method registry. Method modules register themselves on import.

>>> sorted(methods())
['fold-batchnorm', 'linear-attention']
"""

from __future__ import annotations

from leanvision.core.registry import Registry

# Modules whose import registers ``accelerate`` methods: the LiteMLA swap of timm models and
# BatchNorm folding.
METHOD_MODULES: tuple[str, ...] = ("leanvision.vision.timm_interop", "leanvision.vision.inference")

METHODS: Registry = Registry("vision", modules=METHOD_MODULES)


def methods() -> dict[str, str]:
    """Every vision method: name -> one-line description (``METHODS.describe()``).

    >>> methods()["fold-batchnorm"]
    'Fold every BatchNorm into the conv before it, optionally channels-last (eval mode).'
    """
    return METHODS.describe()

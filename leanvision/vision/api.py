"""``lv.vision.accelerate``: apply vision methods to a model, reversibly.

>>> import leanvision as lv
>>> from leanvision.testing import tiny_efficientvit
>>> tiny = tiny_efficientvit()
>>> handle = lv.vision.accelerate(tiny.model, "fold-batchnorm")
>>> handle.family, handle.method, handle.stats["folded"]
('vision', 'fold-batchnorm', 16)
>>> handle.remove()
"""

from __future__ import annotations

from typing import Any

from torch import nn

from leanvision.core.config import MethodConfig
from leanvision.core.errors import UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.vision.registry import METHODS

__all__ = ["FAMILY", "SUPPORTED", "accelerate"]

FAMILY = "vision"
SUPPORTED = (
    "timm EfficientViT (efficientvit_b0..b3, timm.models.efficientvit_mit.EfficientVit)",
    "leanvision.vision.efficientvit_seg models",
)

Method = str | MethodConfig | list[MethodConfig] | tuple[MethodConfig, ...]


def accelerate(model: nn.Module, method: Method, **options: Any) -> Handle:
    """Apply a vision ``method`` to ``model`` in place; ``handle.remove()`` undoes it exactly.

    ``model``: a timm EfficientViT (``efficientvit_b0..b3`` or ``EfficientVit``) or a
    :func:`~leanvision.vision.efficientvit_seg` model, taking (B, 3, H, W) float images.
    ``method``: a name with its ``options`` as keywords, a config, or a list of configs
    applied together in one handle (in the order given). ``lv.vision.methods()`` lists them:

    - ``"linear-attention"`` (:class:`~leanvision.vision.LinearAttention`, ``backend=``):
      every timm ``LiteMLA`` block runs on leanvision's ``kernels.linear_attention``,
      sharing the timm block's weights; outputs are unchanged up to rounding.
    - ``"fold-batchnorm"`` (:class:`~leanvision.vision.FoldBatchNorm`, ``channels_last=``):
      each eval-mode BatchNorm folded into the conv before it, and (default) every 4-D
      weight and the input in channels-last; outputs are unchanged up to rounding.

    ``handle.stats``: ``replaced`` (LiteMLA blocks swapped, linear-attention), ``folded``
    (BatchNorms folded) and ``channels_last`` (bool), fold-batchnorm. After ``remove()`` the
    model holds its original modules and parameter objects, with their values and memory
    formats, bit for bit. A second call on a patched model raises
    :class:`~leanvision.AlreadyPatchedError`; remove the first handle (or pass both methods
    in one list). A model the method cannot apply to raises
    :class:`~leanvision.UnsupportedModelError`, and nothing is changed.

    >>> import torch
    >>> from leanvision.testing import tiny_efficientvit
    >>> from leanvision.vision import FoldBatchNorm, LinearAttention
    >>> tiny = tiny_efficientvit()
    >>> with accelerate(tiny.model, [LinearAttention(), FoldBatchNorm()]) as handle:
    ...     logits = tiny.model(**tiny.inputs)       # (1, 3, 64, 64) -> (1, 10)
    >>> handle.stats
    {'replaced': 2, 'folded': 16, 'channels_last': True}
    """
    resolved = METHODS.resolve_many(method, **options)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(model, SUPPORTED, family=FAMILY)
    names = [METHODS.entry(config).name for config, _ in resolved]
    config: Any = resolved[0][0] if len(resolved) == 1 else [c for c, _ in resolved]
    with Handle.build(model, FAMILY, "+".join(names), config) as handle:
        for config_item, apply in resolved:
            apply(model, config_item, handle)
    return handle

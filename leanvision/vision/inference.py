"""Inference-only rewrites of an EfficientViT model: BatchNorm folding and channels-last.

Two forms of the same rewrite:

- ``accelerate(model, "fold-batchnorm", channels_last=True)`` (:class:`FoldBatchNorm`)
  returns a :class:`~leanvision.Handle`; ``handle.remove()`` puts back the BatchNorms, the
  original parameter objects and their memory formats, bit for bit.
- :func:`fuse_batchnorm` and :func:`optimize_for_inference` are one-way shortcuts that
  change the model in place and return no handle: after them the BatchNorm statistics no
  longer exist, so train or load weights (``load_timm_backbone``) first.

>>> from leanvision.testing import tiny_efficientvit
>>> from leanvision.vision import accelerate
>>> tiny = tiny_efficientvit()
>>> with accelerate(tiny.model, "fold-batchnorm") as handle:
...     logits = tiny.model(**tiny.inputs)
>>> handle.stats["folded"], logits.shape
(16, torch.Size([1, 10]))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from leanvision.compat.timm import efficientvit_class
from leanvision.core.config import MethodConfig
from leanvision.core.errors import UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.vision.registry import METHODS

__all__ = ["FoldBatchNorm", "fuse_batchnorm", "optimize_for_inference"]

FOLD_SUPPORTED = (
    "models built of timm's efficientvit_mit.ConvNormAct blocks with BatchNorm2d: timm "
    "efficientvit_b0..b3 / EfficientVit and leanvision.vision.efficientvit_seg models",
)

SetAttr = Callable[[Any, str, Any], None]


@dataclasses.dataclass
class FoldBatchNorm(MethodConfig):
    """Fold every BatchNorm into the conv before it, optionally channels-last (eval mode).

    ``channels_last``: also store every 4-D weight channels-last (and, on an
    :func:`efficientvit_seg` model, convert its input), which makes the depthwise and 1x1
    convs faster on CPUs (oneDNN) and GPUs (cuDNN). While the handle is active it keeps the
    original BatchNorms and conv tensors for ``remove()`` (about one more copy of the conv
    weights); the one-way :func:`optimize_for_inference` does not.

    >>> FoldBatchNorm(channels_last=False)
    FoldBatchNorm(channels_last=False)
    """

    channels_last: bool = True

    def validate(self) -> None:
        if not isinstance(self.channels_last, bool):
            raise TypeError(f"channels_last must be a bool, got {self.channels_last!r}")


def _fold_targets(model: nn.Module) -> list[tuple[nn.Module, nn.Conv2d, nn.BatchNorm2d]]:
    """Every (block, conv, norm) of a timm ``ConvNormAct`` whose norm folds into its conv."""
    conv_norm_act = efficientvit_class("ConvNormAct")
    targets = []
    for module in model.modules():
        conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
        if not (isinstance(module, conv_norm_act) and type(conv) is nn.Conv2d):
            continue
        if type(norm) is nn.BatchNorm2d and norm.running_var is not None:
            targets.append((module, conv, norm))
    return targets


def _check_eval(model: nn.Module) -> None:
    if model.training or any(norm.training for _, _, norm in _fold_targets(model)):
        raise ValueError("model must be in eval mode (model.eval()): folding uses running stats")


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[nn.Parameter, nn.Parameter]:
    """The conv's weight and bias with ``norm`` folded in (computed in fp32)."""
    with torch.no_grad():
        var = norm.running_var.float()
        gamma = torch.ones_like(var) if norm.weight is None else norm.weight.float()
        beta = torch.zeros_like(var) if norm.bias is None else norm.bias.float()
        scale = gamma / torch.sqrt(var + norm.eps)
        bias = beta - norm.running_mean.float() * scale
        if conv.bias is not None:
            bias = bias + conv.bias.float() * scale
        weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
    dtype = conv.weight.dtype
    return nn.Parameter(weight.to(dtype)), nn.Parameter(bias.to(dtype))


def _fold(model: nn.Module, set_attr: SetAttr) -> int:
    targets = _fold_targets(model)
    for module, conv, norm in targets:
        weight, bias = _folded(conv, norm)
        set_attr(conv, "weight", weight)
        set_attr(conv, "bias", bias)
        set_attr(module, "norm", nn.Identity())
    return len(targets)


def _to_channels_last(model: nn.Module, handle: Handle | None) -> None:
    """Every 4-D parameter and buffer channels-last; ``handle`` (if any) records the undo."""
    for module in model.modules():
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is None or tensor.dim() != 4:
                continue
            if tensor.is_contiguous(memory_format=torch.channels_last):
                continue
            original = tensor.data
            tensor.data = original.contiguous(memory_format=torch.channels_last)
            if handle is not None:
                # The handle keeps the original data (not a copy): remove() puts back the
                # very same storage. (Folded weights are new parameters, kept by set_attr.)
                handle.on_remove(functools.partial(setattr, tensor, "data", original))
    if hasattr(model, "memory_format"):  # efficientvit_seg: forward() converts its input
        setter: SetAttr = setattr if handle is None else handle.set_attr
        setter(model, "memory_format", torch.channels_last)


@METHODS.register("fold-batchnorm", FoldBatchNorm)
def apply_fold_batchnorm(model: nn.Module, config: FoldBatchNorm, handle: Handle) -> None:
    """Fold ``model``'s BatchNorms (and go channels-last), recording every step on ``handle``."""
    if not _fold_targets(model):
        raise UnsupportedModelError(
            model, FOLD_SUPPORTED, what="fold-batchnorm model", family="vision"
        )
    _check_eval(model)
    handle.stats["folded"] = _fold(model, handle.set_attr)
    if config.channels_last:
        _to_channels_last(model, handle)
    handle.stats["channels_last"] = config.channels_last


def fuse_batchnorm(model: nn.Module) -> int:
    """One-way, in place: fold each eval-mode BatchNorm2d into the Conv2d before it.

    Returns how many were folded (0 for a model without timm ``ConvNormAct`` blocks). For
    the reversible form use ``accelerate(model, "fold-batchnorm", channels_last=False)``.
    Applies to every timm ``ConvNormAct`` (``conv`` -> ``norm``) with an ``nn.BatchNorm2d``
    holding running statistics: the conv gets the scaled weight and a bias, the norm becomes
    an ``nn.Identity``. Outputs are unchanged up to rounding; ``model`` must be in eval mode.

    >>> from leanvision.vision import efficientvit_seg
    >>> fuse_batchnorm(efficientvit_seg("b0"))
    32
    """
    _check_eval(model)
    return _fold(model, setattr)


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """One-way, in place: fold BatchNorms into convs and (optionally) go channels-last.

    ``model``: an :func:`efficientvit_seg` model (or a timm EfficientViT) in eval mode; it
    is changed in place and returned, with no handle. For the reversible form use
    ``accelerate(model, "fold-batchnorm", channels_last=channels_last)``. Channels-last
    makes the depthwise and 1x1 convs faster on CPUs (oneDNN) and GPUs (cuDNN); the LiteMLA
    reads its heads from either layout without copies. Inputs stay (B, 3, H, W) floats.

    >>> from leanvision.vision import efficientvit_seg
    >>> model = optimize_for_inference(efficientvit_seg("b0"))
    >>> model(torch.randn(1, 3, 64, 64)).shape     # (B, num_classes, H/8, W/8) logits
    torch.Size([1, 19, 8, 8])
    """
    fuse_batchnorm(model)
    if channels_last:
        _to_channels_last(model, None)
    return model

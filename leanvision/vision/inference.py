"""Inference-only rewrites of an EfficientViT model: BatchNorm folding and channels-last.

Both change the model in place and are meant for deployment: after folding, BatchNorm
statistics no longer exist, so train or load weights (``load_timm_backbone``) first.
"""

from __future__ import annotations

import torch
from torch import nn


def fuse_batchnorm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d right before it; return how many.

    Applies to every module holding a ``conv`` (``nn.Conv2d``) and a ``norm``
    (``nn.BatchNorm2d`` with running statistics) used as conv -> norm, as timm's
    ``ConvNormAct`` does: the conv gets the scaled weight and a bias, the norm becomes an
    ``nn.Identity``. Outputs are unchanged up to rounding.

    >>> from leanvision.vision import efficientvit_seg
    >>> fuse_batchnorm(efficientvit_seg("b0"))
    32
    """
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()): folding uses running stats")
    from timm.models.efficientvit_mit import ConvNormAct

    folded = 0
    for module in model.modules():
        conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
        if not (isinstance(module, ConvNormAct) and type(conv) is nn.Conv2d):
            continue
        if type(norm) is not nn.BatchNorm2d or norm.running_var is None:
            continue
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias)
        module.norm = nn.Identity()
        folded += 1
    return folded


def optimize_for_inference(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """Fold BatchNorms into convs and (optionally) keep activations channels-last.

    ``model``: an :func:`efficientvit_seg` model in eval mode; it is changed in place and
    returned. Channels-last makes the depthwise and 1x1 convs faster on CPUs (oneDNN) and
    GPUs (cuDNN); the LiteMLA reads its heads from either layout without copies.

    >>> from leanvision.vision import efficientvit_seg
    >>> model = optimize_for_inference(efficientvit_seg("b0"))
    >>> model(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 19, 8, 8])
    """
    fuse_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        # forward() converts the input too, so the first conv does not reorder per call.
        model.memory_format = torch.channels_last
    return model

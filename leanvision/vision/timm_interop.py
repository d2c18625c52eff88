"""timm interop: run a timm EfficientViT on our LiteMLA, and load timm weights into ours.

:func:`from_timm` patches a timm model *instance*: every ``efficientvit_mit.LiteMLA`` child
is replaced, on its parent, by a :class:`LiteMLA` that shares its submodules (so weights,
devices and dtypes stay in sync), and the returned :class:`~leanvision.Handle` puts the timm
modules back. :func:`load_timm_backbone` copies a timm ``efficientvit_b*`` state dict (a
model, a dict or a local file) into an :func:`efficientvit_seg` backbone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from leanvision.compat.timm import efficientvit_class
from leanvision.core.errors import AlreadyPatchedError, UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.kernels.dispatch import BACKENDS
from leanvision.vision.lite_mla import LiteMLA

FAMILY = "vision"
SUPPORTED = ("timm efficientvit_b0..b3 / EfficientVit (efficientvit_mit.LiteMLA blocks)",)


def _timm_lite_mla_class() -> type[nn.Module]:
    return efficientvit_class("LiteMLA")


def from_timm(timm_model: nn.Module, *, backend: str = "auto") -> Handle:
    """Run every LiteMLA of a timm EfficientViT through ``kernels.linear_attention``.

    The outputs are those of the timm model (same math, same weights); ``handle.remove()``
    puts the original timm modules back. ``handle.stats["replaced"]`` counts the blocks.
    Raises :class:`~leanvision.UnsupportedModelError` if the model has no timm LiteMLA and
    :class:`~leanvision.AlreadyPatchedError` if it is already patched.

    >>> import timm
    >>> model = timm.create_model("efficientvit_b0", pretrained=False).eval()
    >>> with from_timm(model) as handle:
    ...     logits = model(torch.randn(1, 3, 64, 64))
    >>> handle.stats["replaced"], logits.shape
    (4, torch.Size([1, 1000]))
    """
    if not isinstance(timm_model, nn.Module):
        raise TypeError(f"timm_model must be a torch nn.Module; got {type(timm_model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
    active = Handle.active(timm_model).get(FAMILY)
    if active is not None:
        raise AlreadyPatchedError(
            f"{type(timm_model).__name__} already has a leanvision {FAMILY!r} patch "
            f"({active.method!r}); call .remove() on its Handle first"
        )
    timm_class = _timm_lite_mla_class()
    targets = [
        (parent, name, child)
        for parent in timm_model.modules()
        for name, child in parent.named_children()
        if type(child) is timm_class
    ]
    if not targets:
        raise UnsupportedModelError(timm_model, SUPPORTED, what="timm_model")
    # Build every replacement before touching the model: a failure changes nothing.
    replacements = [
        (parent, name, LiteMLA.from_timm(child, backend=backend)) for parent, name, child in targets
    ]
    with Handle.build(timm_model, FAMILY, "lite_mla", {"backend": backend}) as handle:
        for parent, name, ours in replacements:
            handle.set_attr(parent, name, ours)
        handle.stats["replaced"] = len(replacements)
    return handle


# timm ``features_only`` models flatten the top-level Sequentials: stem_in_conv, stages_0...
_FLAT_PREFIX = re.compile(r"^(stem|stages)_(\w+?)\.")


def _timm_state_dict(source: Any) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"timm_model_or_state_dict: no such file {path!r}")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        # Training checkpoints wrap the weights; accept the usual wrappers.
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
                return dict(loaded[key])
        source = loaded
    if isinstance(source, Mapping):
        return dict(source)
    raise TypeError(
        "timm_model_or_state_dict must be a timm model, a state dict or a path to a "
        f".pth/.pt/.safetensors file; got {type(source).__name__}"
    )


def load_timm_backbone(model: nn.Module, timm_model_or_state_dict: Any) -> dict[str, Any]:
    """Copy timm ``efficientvit_b*`` weights into ``model``'s backbone (in place).

    ``model``: an :func:`efficientvit_seg` model (or its ``.backbone``). The source is a timm
    model, its state dict, or a local ``.pth``/``.safetensors`` file. The classifier head
    (``head.*``) is ignored; every backbone tensor must be present with the same shape, else
    a ``ValueError`` names the first missing or mismatched keys and nothing is copied.
    Returns ``{"loaded": n_tensors, "ignored": [keys]}``.

    >>> import timm
    >>> from leanvision.vision import efficientvit_seg
    >>> ours = efficientvit_seg("b0")
    >>> load_timm_backbone(ours, timm.create_model("efficientvit_b0"))["loaded"]
    186
    """
    backbone = getattr(model, "backbone", model)
    from leanvision.vision.backbone import EfficientViTBackbone

    if not isinstance(backbone, EfficientViTBackbone):
        raise UnsupportedModelError(
            model, ("leanvision.vision.efficientvit_seg models", "EfficientViTBackbone")
        )
    source = _timm_state_dict(timm_model_or_state_dict)
    renamed = {}
    for key, value in source.items():
        key = key.removeprefix("module.")
        renamed[_FLAT_PREFIX.sub(r"\1.\2.", key)] = value
    target = backbone.state_dict()
    missing = [key for key in target if key not in renamed]
    mismatched = [
        f"{key}: ours {tuple(target[key].shape)} vs timm {tuple(renamed[key].shape)}"
        for key in target
        if key in renamed and renamed[key].shape != target[key].shape
    ]
    if missing or mismatched:
        variant = getattr(model, "variant", "this")
        raise ValueError(
            f"timm weights do not fit the {variant!r} backbone: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(mismatched)} with other shapes (e.g. {mismatched[:3]}); "
            f"load the timm efficientvit_b* of the same variant"
        )
    backbone.load_state_dict({key: renamed[key] for key in target}, strict=True)
    ignored = sorted(key for key in renamed if key not in target)
    return {"loaded": len(target), "ignored": ignored}

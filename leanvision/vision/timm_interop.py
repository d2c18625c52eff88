"""timm interop: run a timm EfficientViT on our LiteMLA, and load timm weights into ours.

The ``"linear-attention"`` method (``accelerate(model, "linear-attention")``, or its alias
:func:`from_timm`) patches a timm model *instance*: every ``efficientvit_mit.LiteMLA`` child
is replaced, on its parent, by a :class:`LiteMLA` that shares its submodules (so weights,
devices and dtypes stay in sync), and the returned :class:`~leanvision.Handle` puts the timm
modules back. :func:`load_timm_backbone` copies a timm ``efficientvit_b*`` state dict (a
model, a dict or a local file) into an :func:`efficientvit_seg` backbone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from leanvision.compat.timm import efficientvit_class
from leanvision.core.config import MethodConfig, check_choice
from leanvision.core.errors import UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.kernels.dispatch import BACKENDS
from leanvision.vision.lite_mla import LiteMLA
from leanvision.vision.registry import METHODS

LINEAR_ATTENTION_SUPPORTED = (
    "timm EfficientViT with efficientvit_mit.LiteMLA blocks (efficientvit_b0..b3, "
    "EfficientVit; leanvision's efficientvit_seg models run this kernel already)",
)


@dataclasses.dataclass
class LinearAttention(MethodConfig):
    """Run a timm EfficientViT's LiteMLA blocks on leanvision's linear attention kernel.

    ``backend``: the ``kernels.linear_attention`` backend, "auto" (Triton on CUDA, else the
    fp32 torch path), "triton" or "torch".

    >>> LinearAttention(backend="torch")
    LinearAttention(backend='torch')
    """

    backend: str = "auto"

    def validate(self) -> None:
        check_choice("backend", self.backend, BACKENDS)


def _timm_lite_mla_class() -> type[nn.Module]:
    return efficientvit_class("LiteMLA")


@METHODS.register("linear-attention", LinearAttention)
def apply_linear_attention(model: nn.Module, config: LinearAttention, handle: Handle) -> None:
    """Replace every timm ``LiteMLA`` child of ``model`` by ours (recorded on ``handle``)."""
    timm_class = _timm_lite_mla_class()
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is timm_class
    ]
    if not targets:
        raise UnsupportedModelError(
            model, LINEAR_ATTENTION_SUPPORTED, what="linear-attention model", family="vision"
        )
    # Build every replacement before touching the model: a failure changes nothing.
    replacements = [
        (parent, name, LiteMLA.from_timm(child, backend=config.backend))
        for parent, name, child in targets
    ]
    for parent, name, ours in replacements:
        handle.set_attr(parent, name, ours)
    handle.stats["replaced"] = len(replacements)


def from_timm(timm_model: nn.Module, *, backend: str = "auto") -> Handle:
    """Alias of ``accelerate(timm_model, "linear-attention", backend=backend)``.

    Every timm ``LiteMLA`` block of a timm EfficientViT runs through
    ``kernels.linear_attention`` (same math, same weights: outputs equal up to rounding);
    ``handle.remove()`` puts the original timm modules back and ``handle.stats["replaced"]``
    counts the blocks. Raises :class:`~leanvision.UnsupportedModelError` if the model has no
    timm LiteMLA and :class:`~leanvision.AlreadyPatchedError` if it is already patched.

    >>> import timm
    >>> model = timm.create_model("efficientvit_b0", pretrained=False).eval()
    >>> with from_timm(model) as handle:
    ...     logits = model(torch.randn(1, 3, 64, 64))   # (B, 3, H, W) -> (B, 1000)
    >>> handle.stats["replaced"], logits.shape
    (4, torch.Size([1, 1000]))
    """
    from leanvision.vision.api import accelerate

    return accelerate(timm_model, "linear-attention", backend=backend)


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

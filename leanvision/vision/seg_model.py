"""EfficientViT-B semantic segmentation: backbone + multi-stage fusion head.

``efficientvit_seg("b1", num_classes=19)`` builds mit-han-lab's ``efficientvit_seg_b1``
layout (random weights; see :func:`leanvision.vision.load_timm_backbone` for ImageNet
backbone weights from timm). Inputs are ImageNet-normalised (B, 3, H, W) images; logits come
at 1/8 of the input resolution, or at the input resolution with ``full_resolution=True``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.kernels.dispatch import BACKENDS
from leanvision.vision.backbone import (
    STAGE_STRIDES,
    EfficientViTBackbone,
    VariantSpec,
    variant_spec,
)
from leanvision.vision.seg_head import SegHead

OUTPUT_STRIDE = 8
# The backbone halves the resolution five times: inputs must be multiples of this.
INPUT_MULTIPLE = 32
HEAD_STYLES = ("cityscapes", "ade20k")


class EfficientViTSeg(nn.Module):
    """EfficientViT-B backbone + :class:`SegHead`; ``forward(x)`` gives per-class logits.

    Built by :func:`efficientvit_seg`. ``forward(x)``: x is (B, 3, H, W) float,
    ImageNet-normalised RGB, H and W >= 32; logits are (B, num_classes, ceil(H/8),
    ceil(W/8)), or (B, num_classes, H, W) with ``full_resolution=True``.
    ``pad``: an input whose sides are not multiples of 32 is zero-padded at the bottom and
    right and the logits cropped back (True), or rejected with a ``ValueError`` (False).

    >>> model = efficientvit_seg("b0", num_classes=5)
    >>> isinstance(model, EfficientViTSeg), model(torch.randn(2, 3, 40, 72)).shape
    (True, torch.Size([2, 5, 5, 9]))
    >>> model(torch.randn(1, 3, 40, 72), full_resolution=True).shape
    torch.Size([1, 5, 40, 72])
    """

    def __init__(
        self,
        spec: VariantSpec,
        num_classes: int,
        *,
        final_expand: int | None,
        variant: str = "custom",
        backend: str = "auto",
        pad: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.variant = variant
        self.num_classes = num_classes
        self.pad = pad
        # optimize_for_inference() switches this to channels_last; inputs follow it.
        self.memory_format = torch.contiguous_format
        self.backbone = EfficientViTBackbone(spec, backend=backend)
        self.head = SegHead(
            self.backbone.channels[1:],
            STAGE_STRIDES[1:],
            head_width=spec.head_width,
            head_depth=spec.head_depth,
            num_classes=num_classes,
            expand_ratio=spec.expand_ratio,
            final_expand=final_expand,
            head_stride=OUTPUT_STRIDE,
            dropout=dropout,
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a (B, 3, H, W) image tensor; got {shape}")
        channels = self.backbone.in_channels
        if x.shape[1] != channels:
            raise ValueError(
                f"x has {x.shape[1]} channels; allowed: {channels} (RGB), shape (B, {channels}, H, W)"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a float tensor (normalised RGB); got dtype {x.dtype}")
        height, width = x.shape[-2:]
        if height < INPUT_MULTIPLE or width < INPUT_MULTIPLE:
            raise ValueError(
                f"image size {height}x{width} is too small; allowed: height and width >= "
                f"{INPUT_MULTIPLE} (the backbone's total stride)"
            )
        if not self.pad and (height % INPUT_MULTIPLE or width % INPUT_MULTIPLE):
            raise ValueError(
                f"image size {height}x{width} is not a multiple of {INPUT_MULTIPLE}; allowed: "
                f"multiples of {INPUT_MULTIPLE}, or build the model with pad=True"
            )

    def forward(self, x: torch.Tensor, *, full_resolution: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes, ceil(H/8), ceil(W/8)), or (…, H, W)
        (bilinear) with ``full_resolution=True``."""
        self._check_input(x)
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % INPUT_MULTIPLE, -width % INPUT_MULTIPLE
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = x.contiguous(memory_format=self.memory_format)
        features = self.backbone(x)
        logits = self.head(features[1:])
        if full_resolution:
            # Upsample the padded map to the padded input, then crop: pixel centres align.
            logits = F.interpolate(
                logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False
            ).to(logits.dtype)
            return logits[..., :height, :width]
        return logits[..., : -(-height // OUTPUT_STRIDE), : -(-width // OUTPUT_STRIDE)]


def efficientvit_seg(
    variant: str = "b1",
    num_classes: int = 19,
    *,
    head_style: str | None = None,
    backend: str = "auto",
    pad: bool = True,
    dropout: float = 0.0,
    _spec: VariantSpec | None = None,
) -> EfficientViTSeg:
    """An EfficientViT-B segmentation model with random weights, in eval mode.

    ``variant``: "b0", "b1", "b2" or "b3". ``num_classes``: any positive int (19 for
    Cityscapes, 150 for ADE20K). ``head_style``: "cityscapes" (a x4 1x1 expansion before the
    classifier) or "ade20k" (none), as in mit-han-lab's models; default: "ade20k" when
    ``num_classes == 150``, else "cityscapes". ``backend``: the linear attention backend
    ("auto", "triton", "torch"). ``pad``: see :class:`EfficientViTSeg`.

    >>> model = efficientvit_seg("b0", num_classes=19)
    >>> model(torch.randn(1, 3, 64, 96)).shape
    torch.Size([1, 19, 8, 12])
    """
    spec = _spec if _spec is not None else variant_spec(variant)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"num_classes must be a positive int (19 for Cityscapes, 150 for ADE20K); "
            f"got {num_classes!r}"
        )
    if head_style is None:
        head_style = "ade20k" if num_classes == 150 else "cityscapes"
    if head_style not in HEAD_STYLES:
        raise ValueError(
            f"head_style must be one of {list(HEAD_STYLES)} or None; got {head_style!r}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    model = EfficientViTSeg(
        spec,
        num_classes,
        final_expand=4 if head_style == "cityscapes" else None,
        variant=variant if _spec is None else f"{variant}-custom",
        backend=backend,
        pad=bool(pad),
        dropout=dropout,
    )
    return model.eval()


def replace_spec(spec: VariantSpec, **changes: object) -> VariantSpec:
    """A copy of ``spec`` with some sizes changed (tests build narrow models this way)."""
    return dataclasses.replace(spec, **changes)

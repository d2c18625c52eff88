"""EfficientViT: Lite multi-scale linear attention, B0-B3 segmentation, timm interop.

``accelerate(model, method, **options) -> Handle`` applies a vision method reversibly
(``methods()`` lists them: ``"linear-attention"``, ``"fold-batchnorm"``);
``efficientvit_seg`` builds segmentation models and ``segment`` runs one on an image.
Names load on first access, so ``import leanvision.vision`` imports neither timm nor the
kernels.

>>> import torch
>>> from leanvision import vision
>>> model = vision.efficientvit_seg("b0", num_classes=19)
>>> model(torch.randn(1, 3, 64, 64)).shape     # (B, 3, H, W) -> (B, 19, H/8, W/8) logits
torch.Size([1, 19, 8, 8])
>>> with vision.accelerate(model, "fold-batchnorm") as handle:
...     model(torch.randn(1, 3, 64, 64)).shape
torch.Size([1, 19, 8, 8])
"""

from __future__ import annotations

from leanvision.core.lazy import lazy_exports

_EXPORTS = {
    "accelerate": "leanvision.vision.api",
    "methods": "leanvision.vision.registry",
    "METHODS": "leanvision.vision.registry",
    "LinearAttention": "leanvision.vision.timm_interop",
    "FoldBatchNorm": "leanvision.vision.inference",
    "LiteMLA": "leanvision.vision.lite_mla",
    "EfficientViTBackbone": "leanvision.vision.backbone",
    "VARIANTS": "leanvision.vision.backbone",
    "SegHead": "leanvision.vision.seg_head",
    "EfficientViTSeg": "leanvision.vision.seg_model",
    "efficientvit_seg": "leanvision.vision.seg_model",
    "from_timm": "leanvision.vision.timm_interop",
    "load_timm_backbone": "leanvision.vision.timm_interop",
    "segment": "leanvision.vision.segmentation",
    "colorize": "leanvision.vision.segmentation",
    "SegmentationResult": "leanvision.vision.segmentation",
    "fuse_batchnorm": "leanvision.vision.inference",
    "optimize_for_inference": "leanvision.vision.inference",
    "PALETTES": "leanvision.vision.palettes",
    "Palette": "leanvision.vision.palettes",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)

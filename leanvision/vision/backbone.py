"""The EfficientViT-B backbone (B0-B3), built from timm's blocks with our :class:`LiteMLA`.

The layout is EfficientViT's (and timm's ``efficientvit_b*``): a stride-2 stem, two MBConv
stages (strides 4 and 8) and two stages of LiteMLA + MBConv blocks (strides 16 and 32). The
blocks are timm's own modules, so parameter names (``stem.in_conv.conv.weight``,
``stages.2.blocks.1.context_module.main.qkv.conv.weight``...) are timm's and a timm
``efficientvit_b*`` state dict loads as is; only each block's attention is ours.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from leanvision.compat.timm import efficientvit_class
from leanvision.vision.lite_mla import LiteMLA


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Sizes of one EfficientViT-B variant and of its segmentation head.

    ``widths``/``depths``: stem + 4 stages; ``head_dim``: channels per attention head;
    ``head_width``/``head_depth``: the segmentation head's fused width and MBConv count.
    """

    widths: tuple[int, int, int, int, int]
    depths: tuple[int, int, int, int, int]
    head_dim: int
    head_width: int
    head_depth: int
    expand_ratio: float = 4.0


# Backbones as in timm's efficientvit_b0..b3; heads as in mit-han-lab's efficientvit_seg_b*.
VARIANTS: dict[str, VariantSpec] = {
    "b0": VariantSpec((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16, 32, 1),
    "b1": VariantSpec((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16, 64, 3),
    "b2": VariantSpec((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32, 96, 3),
    "b3": VariantSpec((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32, 128, 3),
}

# Stride of each stage's output: stage i (0-based) is stage i + 1 of the paper.
STAGE_STRIDES = (4, 8, 16, 32)


def variant_spec(variant: str) -> VariantSpec:
    """The sizes of ``variant`` ("b0" ... "b3"); other names raise a ``ValueError``.

    >>> variant_spec("b1").widths
    (16, 32, 64, 128, 256)
    """
    key = variant.lower() if isinstance(variant, str) else variant
    if key not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}; got {variant!r}")
    return VARIANTS[key]


class EfficientViTBackbone(nn.Module):
    """EfficientViT-B feature extractor: (B, 3, H, W) -> 4 maps at strides 4, 8, 16, 32.

    ``backend`` goes to every :class:`LiteMLA` (``kernels.linear_attention``).

    >>> spec = VariantSpec((8, 8, 16, 16, 16), (1, 1, 1, 1, 1), 8, 16, 1)
    >>> [f.shape[1:] for f in EfficientViTBackbone(spec).eval()(torch.randn(1, 3, 64, 64))]
    [torch.Size([8, 16, 16]), torch.Size([16, 8, 8]), torch.Size([16, 4, 4]), torch.Size([16, 2, 2])]
    """

    def __init__(self, spec: VariantSpec, *, in_channels: int = 3, backend: str = "auto"):
        super().__init__()
        stem_class = efficientvit_class("Stem")
        stage_class = efficientvit_class("EfficientVitStage")
        self.spec = spec
        self.in_channels = in_channels
        norm, act = nn.BatchNorm2d, nn.Hardswish
        self.stem = stem_class(in_channels, spec.widths[0], spec.depths[0], norm, act)
        self.stages = nn.Sequential()
        previous = spec.widths[0]
        for index, (width, depth) in enumerate(zip(spec.widths[1:], spec.depths[1:], strict=True)):
            self.stages.append(
                stage_class(
                    previous,
                    width,
                    depth=depth,
                    norm_layer=norm,
                    act_layer=act,
                    expand_ratio=spec.expand_ratio,
                    head_dim=spec.head_dim,
                    vit_stage=index >= 2,
                )
            )
            previous = width
        self._use_our_attention(backend)

    def _use_our_attention(self, backend: str) -> None:
        # timm builds its LiteMLA; ours takes over its submodules (no copy), so parameter
        # names stay timm's and the timm module is dropped.
        timm_lite_mla = efficientvit_class("LiteMLA")
        for module in self.modules():
            main = getattr(module, "main", None)
            if isinstance(main, timm_lite_mla):
                module.main = LiteMLA.from_timm(main, backend=backend)

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of the four stage outputs."""
        return tuple(self.spec.widths[1:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

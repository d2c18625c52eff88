"""EfficientViT's segmentation head: fuse stages 2-4 at stride 8, MBConv blocks, classify.

The design is mit-han-lab's ``SegHead``: each of the stride-8, -16 and -32 feature maps goes
through a 1x1 conv + BatchNorm to ``head_width`` channels, the coarser two are upsampled
(bicubic) to stride 8, and the three are summed. ``head_depth`` residual MBConv blocks
(Hardswish) follow, then an optional 1x1 expansion (x4 for Cityscapes heads, none for
ADE20K heads) and a 1x1 classifier with bias. The output is logits at stride 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _Upsample(nn.Module):
    """Bicubic upsampling by an integer factor, computed in fp32 (bicubic overshoots, and
    fp16/bf16 interpolation loses precision), returned in the input dtype."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] * self.factor, x.shape[-1] * self.factor)
        out = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class SegHead(nn.Module):
    """Multi-stage fusion head: features at ``strides`` -> logits at ``head_stride``.

    ``in_channels``/``strides`` list the fused feature maps (EfficientViT: stages 2, 3, 4 at
    strides 8, 16, 32). ``final_expand``: channel multiplier of the 1x1 conv before the
    classifier, or None for no such conv. ``forward(features)``: one (B, C_i, H/s_i, W/s_i)
    map per stride s_i -> (B, num_classes, H/head_stride, W/head_stride) logits.

    >>> head = SegHead((16, 32, 64), (8, 16, 32), head_width=16, head_depth=1, num_classes=5)
    >>> feats = [torch.randn(1, c, 32 // s * 4, 32 // s * 4) for c, s in zip((16, 32, 64), (8, 16, 32))]
    >>> head.eval()(feats).shape
    torch.Size([1, 5, 16, 16])
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        *,
        head_width: int,
        head_depth: int,
        num_classes: int,
        expand_ratio: float = 4.0,
        final_expand: int | None = 4,
        head_stride: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        from timm.models.efficientvit_mit import ConvNormAct, MBConv, ResidualBlock

        if len(in_channels) != len(strides):
            raise ValueError(
                f"in_channels ({len(in_channels)} entries) and strides ({len(strides)}) "
                f"must have the same length"
            )
        self.strides = tuple(strides)
        self.head_stride = head_stride
        self.inputs = nn.ModuleList()
        for channels, stride in zip(in_channels, strides, strict=True):
            if stride % head_stride:
                raise ValueError(f"stride {stride} is not a multiple of head_stride {head_stride}")
            project = ConvNormAct(channels, head_width, 1, act_layer=None)
            factor = stride // head_stride
            self.inputs.append(
                project if factor == 1 else nn.Sequential(project, _Upsample(factor))
            )
        act = nn.Hardswish
        self.middle = nn.Sequential(
            *(
                ResidualBlock(
                    MBConv(
                        head_width,
                        head_width,
                        expand_ratio=expand_ratio,
                        norm_layer=nn.BatchNorm2d,
                        act_layer=(act, act, None),
                    ),
                    nn.Identity(),
                )
                for _ in range(head_depth)
            )
        )
        expanded = head_width * (final_expand or 1)
        self.expand = (
            nn.Identity()
            if final_expand is None
            else ConvNormAct(head_width, expanded, 1, act_layer=act)
        )
        self.classifier = ConvNormAct(
            expanded, num_classes, 1, bias=True, dropout=dropout, norm_layer=None, act_layer=None
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``features``: one map per entry of ``strides``, in that order."""
        if len(features) != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} feature maps, got {len(features)}")
        fused = self.inputs[0](features[0])
        for project, feature in zip(self.inputs[1:], features[1:], strict=True):
            fused = fused + project(feature)
        return self.classifier(self.expand(self.middle(fused)))

"""Shared pieces of the vision tests (imported by them; fixtures live in conftest.py)."""

import torch

from leanvision.vision.backbone import VariantSpec

# Every block kind of B0-B3 (stem DSConv, MBConv stages, LiteMLA stages, fusion head with
# upsampling and a x4 expansion) at widths that run in milliseconds.
TINY_SPEC = VariantSpec(
    widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8, head_width=8, head_depth=1
)


def randomise_batchnorm(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial running statistics and affine weights, so a wrong norm changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    for child in module.modules():
        if isinstance(child, torch.nn.BatchNorm2d):
            child.running_mean.copy_(torch.randn(child.num_features, generator=generator) * 0.1)
            child.running_var.copy_(torch.rand(child.num_features, generator=generator) + 0.5)
            child.weight.data.copy_(torch.rand(child.num_features, generator=generator) + 0.5)
            child.bias.data.copy_(torch.randn(child.num_features, generator=generator) * 0.1)
    return module


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "output has inf/NaN"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()

"""A tiny random-weight EfficientViT (MIT, ReLU linear attention) backbone from timm.

>>> tiny = tiny_efficientvit(batch=2)
>>> tiny.model(**tiny.inputs).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch

from leanvision.testing.common import TinyModel

__all__ = ["tiny_efficientvit"]

# EfficientViT-B0's layout (stem + 4 stages, LiteMLA blocks in the last two) at a quarter of
# its widths: every block kind of the real model, in milliseconds on a CPU.
_WIDTHS = (8, 16, 16, 32, 32)
_DEPTHS = (1, 1, 1, 1, 1)
_HEAD_DIM = 8
_HEAD_WIDTHS = (64, 80)


def tiny_efficientvit(
    batch: int = 1, resolution: int = 64, num_classes: int = 10, seed: int = 0
) -> TinyModel:
    """A seeded timm ``EfficientVit`` (the B-series, MIT) in eval mode and an image batch.

    ``inputs`` is ``{"x": (batch, 3, resolution, resolution)}``; ``resolution`` must be a
    positive multiple of 32 (the backbone's total stride). The batch-norm statistics are
    randomised too, so a patch that mishandles them changes the outputs.

    >>> tiny = tiny_efficientvit(batch=2)
    >>> tiny.inputs["x"].shape, tiny.model(**tiny.inputs).shape
    (torch.Size([2, 3, 64, 64]), torch.Size([2, 10]))
    """
    from timm.models.efficientvit_mit import EfficientVit

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if resolution <= 0 or resolution % 32:
        raise ValueError(f"resolution must be a positive multiple of 32, got {resolution}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EfficientVit(
            widths=_WIDTHS,
            depths=_DEPTHS,
            head_dim=_HEAD_DIM,
            head_widths=_HEAD_WIDTHS,
            num_classes=num_classes,
        )
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model.eval()
    pixels = torch.randn(batch, 3, resolution, resolution, generator=generator)
    info = {
        "family": "efficientvit",
        "widths": _WIDTHS,
        "depths": _DEPTHS,
        "head_dim": _HEAD_DIM,
        "resolution": resolution,
        "num_classes": num_classes,
    }
    return TinyModel(model=model, inputs={"x": pixels}, info=info)

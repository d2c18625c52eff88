"""The tiny EfficientViT factory: timm's model with its LiteMLA blocks, seeded, offline."""

from __future__ import annotations

import pytest
import torch
from timm.models.efficientvit_mit import LiteMLA

from leanvision.testing import tiny_efficientvit


def test_forward_gives_finite_logits_and_has_lite_mla_blocks():
    tiny = tiny_efficientvit(batch=2, resolution=96, num_classes=7)
    with torch.no_grad():
        logits = tiny.model(**tiny.inputs)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert sum(isinstance(m, LiteMLA) for m in tiny.model.modules()) >= 2
    assert not tiny.model.training


def test_seeded():
    a, b, c = tiny_efficientvit(seed=0), tiny_efficientvit(seed=0), tiny_efficientvit(seed=1)
    with torch.no_grad():
        out_a, out_b = a.model(**a.inputs), b.model(**b.inputs)
        out_c = c.model(**c.inputs)
    assert torch.equal(out_a, out_b)
    assert not torch.allclose(out_a, out_c)


@pytest.mark.parametrize("kwargs", [{"resolution": 50}, {"resolution": 0}, {"batch": 0}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        tiny_efficientvit(**kwargs)

"""optimize_for_inference / fuse_batchnorm: same outputs, no BatchNorm left, clear errors."""

import pytest
import torch
from vision_helpers import rel_err

from leanvision.vision import fuse_batchnorm, load_timm_backbone, optimize_for_inference


def _batchnorms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_fuse_batchnorm_keeps_outputs_and_removes_every_norm(tiny_seg):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = tiny_seg(x)
    count = len(_batchnorms(tiny_seg))
    assert fuse_batchnorm(tiny_seg) == count > 0
    assert _batchnorms(tiny_seg) == []
    with torch.no_grad():
        assert rel_err(tiny_seg(x), expected) <= 1e-5


def test_optimize_for_inference_runs_channels_last_with_the_same_outputs(tiny_seg):
    x = torch.randn(1, 3, 70, 64)  # padded inside
    with torch.no_grad():
        expected = tiny_seg(x, full_resolution=True)
        model = optimize_for_inference(tiny_seg)
        out = model(x, full_resolution=True)
    assert model is tiny_seg
    assert model.head.classifier.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, expected) <= 1e-5


def test_fusing_needs_eval_mode_and_blocks_later_weight_loading(tiny_seg):
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batchnorm(tiny_seg.train())
    tiny_seg.eval()
    weights = tiny_seg.backbone.state_dict()
    fuse_batchnorm(tiny_seg)
    with pytest.raises(ValueError, match="missing"):
        load_timm_backbone(tiny_seg, weights)

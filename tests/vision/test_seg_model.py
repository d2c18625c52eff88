"""efficientvit_seg: variant layouts, output resolutions, padding, errors, a training smoke test."""

import copy

import pytest
import torch
import torch.nn.functional as F
from vision_helpers import TINY_SPEC, randomise_batchnorm, rel_err

from leanvision.vision import LiteMLA, efficientvit_seg
from leanvision.vision.backbone import VARIANTS

# Parameter counts of mit-han-lab's efficientvit_seg_b* Cityscapes models (paper: 0.7M,
# 4.8M, 15M, 40M): a wrong head or backbone layout changes these.
CITYSCAPES_PARAMS_M = {"b0": 0.71, "b1": 4.80, "b2": 15.32, "b3": 39.60}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_have_the_published_sizes(variant):
    model = efficientvit_seg(variant, num_classes=19)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(CITYSCAPES_PARAMS_M[variant], abs=0.01)
    attention = [m for m in model.modules() if isinstance(m, LiteMLA)]
    depths = VARIANTS[variant].depths
    assert len(attention) == depths[3] + depths[4]
    assert all(m.head_dim == VARIANTS[variant].head_dim for m in attention)
    assert not model.training


def test_b0_logits_at_one_eighth_and_at_input_resolution():
    model = efficientvit_seg("b0", num_classes=150, backend="torch")
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        coarse = model(x)
        full = model(x, full_resolution=True)
    assert coarse.shape == (2, 150, 8, 12)
    assert full.shape == (2, 150, 64, 96)
    # The full-resolution map is an interpolation of the coarse one.
    expected = F.interpolate(coarse, size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(full, expected)


def test_ade20k_head_has_no_expansion_and_cityscapes_head_has_x4():
    ade = efficientvit_seg("b0", num_classes=150, _spec=TINY_SPEC)
    city = efficientvit_seg("b0", num_classes=19, _spec=TINY_SPEC)
    assert isinstance(ade.head.expand, torch.nn.Identity)
    assert city.head.expand.conv.out_channels == 4 * TINY_SPEC.head_width
    assert ade.head.classifier.conv.in_channels == TINY_SPEC.head_width


@pytest.mark.parametrize("size", [(33, 47), (70, 64), (100, 37)], ids=str)
def test_odd_resolutions_are_padded_and_cropped(tiny_seg, size):
    height, width = size
    x = torch.randn(1, 3, height, width)
    padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
    with torch.no_grad():
        out = tiny_seg(x)
        full = tiny_seg(x, full_resolution=True)
        manual = tiny_seg(F.pad(x, (0, padded_w - width, 0, padded_h - height)))
    assert out.shape[-2:] == (-(-height // 8), -(-width // 8))
    assert full.shape[-2:] == size
    torch.testing.assert_close(out, manual[..., : out.shape[-2], : out.shape[-1]])


def test_odd_resolution_rejected_when_padding_is_off():
    model = efficientvit_seg("b0", num_classes=5, pad=False, _spec=TINY_SPEC)
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 48, 64))
    assert model(torch.randn(1, 3, 64, 32)).shape == (1, 5, 8, 4)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(1, 1, 64, 64), ValueError, "1 channels; allowed: 3"),
        (torch.randn(1, 4, 64, 64), ValueError, "4 channels; allowed: 3"),
        (torch.randn(3, 64, 64), ValueError, r"\(B, 3, H, W\)"),
        (torch.randn(1, 3, 16, 64), ValueError, ">= 32"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "float"),
    ],
    ids=["gray", "rgba", "3d", "too-small", "uint8"],
)
def test_bad_inputs_say_what_is_allowed(tiny_seg, x, error, match):
    with pytest.raises(error, match=match):
        tiny_seg(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variant": "b4"}, r"variant must be one of \['b0', 'b1', 'b2', 'b3'\]"),
        ({"variant": "l1"}, "variant must be one of"),
        ({"num_classes": 0}, "num_classes must be a positive int"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"head_style": "coco"}, "head_style must be one of"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments_name_the_allowed_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        efficientvit_seg(**kwargs)


# ||half - fp32|| / ||fp32|| bound on the full-resolution logits: 10 unit roundoffs of the
# dtype (fp16 2**-11, bf16 2**-8). Every layer rounds its weights, activations and output once,
# and the tiny model has about a dozen of them; measured over 5 seeds: fp16 4e-4 to 1.0e-3,
# bf16 3e-3 to 7e-3, so the bound leaves a 5x margin and still fails on any wrong half path.
HALF_TOLERANCE = {torch.float16: 10 * 2.0**-11, torch.bfloat16: 10 * 2.0**-8}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["torch", "auto"])  # auto: Triton under the interpreter
def test_half_precision_model_on_large_inputs_matches_fp32(backend, dtype):
    # Inputs at 100x scale: fp16 activations would overflow if the attention did not
    # accumulate in fp32.
    model = efficientvit_seg("b0", num_classes=5, backend=backend, _spec=TINY_SPEC)
    model = randomise_batchnorm(model).eval()
    x = torch.randn(1, 3, 64, 64) * 100
    with torch.no_grad():
        want = model(x, full_resolution=True)
        out = copy.deepcopy(model).to(dtype)(x.to(dtype), full_resolution=True)
    assert out.dtype == dtype
    assert rel_err(out, want) < HALF_TOLERANCE[dtype]  # rel_err also fails on inf/NaN


def test_three_training_steps_decrease_the_loss(tiny_seg):
    # Synthetic masks: the class of each pixel is the quadrant it lies in, so a few steps of
    # Adam on a fixed batch must lower the loss.
    model = tiny_seg.train()
    images = torch.randn(4, 3, 64, 64)
    rows = torch.arange(64)[:, None] >= 32
    cols = torch.arange(64)[None, :] >= 32
    masks = (2 * rows + cols).long().expand(4, 64, 64)
    calls = []
    attention = [m for m in model.modules() if isinstance(m, LiteMLA)]
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in attention]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images, full_resolution=True), masks)
        loss.backward()
        for module in attention:  # gradients reach the attention's own weights
            assert module.qkv.conv.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    for hook in hooks:
        hook.remove()
    assert len(calls) == 3 * len(attention)
    assert all(m.backend == "torch" for m in attention)
    assert losses[2] < losses[0], losses

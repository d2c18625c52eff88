"""LiteMLA: same math as timm's LiteMLA, stable in fp16/bf16, trainable, clear errors."""

import pytest
import torch
from timm.models.efficientvit_mit import LiteMLA as TimmLiteMLA
from vision_helpers import randomise_batchnorm, rel_err

from leanvision.vision import LiteMLA


def _pair(channels=32, head_dim=8, scales=(5,), seed=0):
    """A timm LiteMLA and ours with the same weights (ours built natively, then loaded)."""
    torch.manual_seed(seed)
    theirs = randomise_batchnorm(
        TimmLiteMLA(channels, channels, dim=head_dim, scales=scales), seed=seed
    ).eval()
    ours = LiteMLA(channels, head_dim=head_dim, scales=scales, backend="torch").eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 9), (16, 16), (24, 40)], ids=str)
@pytest.mark.parametrize("scales", [(5,), (3, 5)], ids=str)
def test_matches_timm_fp32_at_several_resolutions(size, scales):
    # (1, 1) and (2, 3) have fewer tokens than head_dim: the (N, N) path of the kernel.
    theirs, ours = _pair(scales=scales)
    x = torch.randn(2, 32, *size)
    with torch.no_grad():
        expected = theirs(x)
        out = ours(x)
    assert out.shape == expected.shape
    assert rel_err(out, expected) <= 1e-5


def test_from_timm_shares_weights_and_matches():
    theirs, _ = _pair(channels=48, head_dim=16)
    ours = LiteMLA.from_timm(theirs, backend="torch")
    assert ours.qkv is theirs.qkv and ours.proj is theirs.proj
    assert (ours.heads, ours.head_dim, ours.scales) == (3, 16, (5,))
    x = torch.randn(1, 48, 12, 20)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= 1e-5


def test_triton_interpreter_path_matches_timm():
    # Under TRITON_INTERPRET=1 (no GPU) this runs the Triton kernel on the CPU.
    theirs, ours = _pair()
    ours.backend = "triton"
    x = torch.randn(1, 32, 9, 10)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= 1e-5


def test_parameter_names_are_timms():
    theirs, ours = _pair(scales=(3, 5))
    assert list(ours.state_dict()) == [k for k in theirs.state_dict() if "kernel_func" not in k]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_inputs_scaled_by_100_stay_finite(dtype):
    theirs, ours = _pair()
    x = torch.randn(2, 32, 16, 16) * 100
    ours = ours.to(dtype)
    with torch.no_grad():
        out = ours(x.to(dtype))
        expected = theirs(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # The attention runs in fp32; only the convs round to the half type.
    assert rel_err(out.float(), expected) < (2e-2 if dtype == torch.bfloat16 else 5e-3)


def test_bf16_autocast_stays_finite_and_close():
    theirs, ours = _pair()
    x = torch.randn(1, 32, 16, 16) * 100
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)
    with torch.no_grad():
        expected = theirs(x)
    assert torch.isfinite(out).all()
    assert rel_err(out.float(), expected) < 2e-2


def test_gradients_flow_through_the_kernel_torch_path():
    _, ours = _pair()
    ours.train()
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    ours(x).square().mean().backward()
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": 32, "head_dim": 64}, "heads"),
        ({"in_channels": 32, "head_dim": 4}, "head_dim=4 is not allowed"),
        ({"in_channels": 256, "head_dim": 128}, "head_dim=128 is not allowed"),
        ({"in_channels": 32, "scales": (4,)}, "scales"),
        ({"in_channels": 32, "scales": 5}, "scales"),
        ({"in_channels": 32, "eps": 0.0}, "eps"),
        ({"in_channels": 32, "backend": "cuda"}, "backend"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LiteMLA(**kwargs)


def test_wrong_input_channels_raise():
    _, ours = _pair()
    with pytest.raises(ValueError, match=r"\(B, 32, H, W\)"):
        ours(torch.randn(1, 16, 8, 8))


def test_from_timm_rejects_other_modules_and_kernels():
    with pytest.raises(TypeError, match="LiteMLA"):
        LiteMLA.from_timm(torch.nn.Conv2d(4, 4, 1))
    relu6 = TimmLiteMLA(16, 16, dim=8, kernel_func=torch.nn.ReLU6)
    with pytest.raises(ValueError, match="ReLU"):
        LiteMLA.from_timm(relu6)


def test_compiles_without_graph_breaks():
    # The kernel is a torch.library custom op with a fake implementation.
    _, ours = _pair()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 32, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ours(x))

"""linear_attention: Triton (interpreted on CPU) and torch paths against a float64 oracle."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import (
    CPU_DTYPES,
    TOLERANCE,
    explicit_linear_attention,
    poisoned,
    randn,
    rel_err,
)

from leanvision.kernels import linear_attention
from leanvision.kernels.ops.linear_attention.ref import linear_attention_ref
from leanvision.kernels.ops.linear_attention.triton import linear_attention_triton

SHAPES = [(2, 3, 77, 16), (1, 2, 1025, 8), (1, 1, 577, 32), (1, 2, 200, 64), (2, 2, 5, 16)]


def _id(shape):
    return "B{}-H{}-N{}-D{}".format(*shape)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_triton_matches_float64_reference(shape, dtype):
    q, k, v = (randn(*shape, dtype=dtype) for _ in range(3))
    out = linear_attention_triton(q, k, v, out=poisoned(shape, dtype))
    ref = linear_attention_ref(q.double(), k.double(), v.double())
    assert out.dtype == dtype
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("splits", [1, 3, 40])
def test_token_splits_sum_to_the_same_state(splits):
    # 40 splits of a 300-token input leaves most splits empty: they must add nothing.
    q, k, v = (randn(1, 2, 300, 16) for _ in range(3))
    out = linear_attention_triton(q, k, v, out=poisoned(q.shape, q.dtype), splits=splits)
    assert rel_err(out, linear_attention_ref(q.double(), k.double(), v.double())) < 2e-5


def test_strided_views_like_efficientvit():
    # EfficientViT chunks one (B, H, N, 3D) tensor into q, k, v: none of them is contiguous.
    qkv = randn(2, 4, 96, 3 * 16)
    q, k, v = qkv.chunk(3, dim=-1)
    assert not q.is_contiguous()
    out = linear_attention(q, k, v, backend="triton")
    assert out.is_contiguous()
    assert rel_err(out, linear_attention_ref(q.double(), k.double(), v.double())) < 2e-5


@pytest.mark.parametrize("tokens", [16, 100], ids=["quadratic-N16", "linear-N100"])
def test_matches_timm_lite_mla_math(tokens):
    """Same numbers as timm's efficientvit_mit.LiteMLA._attn on relu'd q/k and 1-padded v."""
    timm_mit = pytest.importorskip("timm.models.efficientvit_mit")
    mla = timm_mit.LiteMLA(in_channels=64, out_channels=64, dim=16)
    q, k, v = (randn(2, 4, tokens, 16) for _ in range(3))
    expected = mla._attn(
        torch.relu(q), torch.relu(k), torch.nn.functional.pad(v, (0, 1), value=1.0)
    )
    for backend in ("torch", "triton"):
        out = linear_attention(q, k, v, eps=mla.eps, backend=backend)
        assert rel_err(out, expected) < 1e-5, backend


def test_all_negative_keys_give_zero_not_nan():
    q = randn(1, 1, 64, 16)
    k = -randn(1, 1, 64, 16).abs()
    v = randn(1, 1, 64, 16)
    for backend in ("torch", "triton"):
        out = linear_attention(q, k, v, backend=backend)
        assert torch.equal(out, torch.zeros_like(out)), backend


@pytest.mark.parametrize("shape", [(1, 2, 6, 8), (1, 1, 12, 8)], ids=["quadratic", "state"])
def test_backward_matches_float64_finite_differences(shape):
    # gradcheck compares the registered backward with central differences of the forward, in
    # float64 (the op computes float64 as float64). N <= D and N > D take different forms.
    op = torch.ops.leanvision.linear_attention.default
    inputs = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda q, k, v: op(q, k, v, 1e-5, "torch"), inputs)


def test_backward_matches_autograd_of_an_independent_formula():
    # The public fp32 call (Triton forward under the interpreter, backward recomputed in torch)
    # against autograd through the test's own float64 (N, N) formula.
    q, k, v = (randn(1, 2, 40, 8).requires_grad_() for _ in range(3))
    linear_attention(q, k, v).square().sum().backward()
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    explicit_linear_attention(*exact).square().sum().backward()
    for got, want in zip((q.grad, k.grad, v.grad), (x.grad for x in exact), strict=True):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda q, k, v: (q[0], k, v), "q must be a 4-D"),
        (lambda q, k, v: (q, k.half(), v), "k has dtype"),
        (lambda q, k, v: (q.long(), k, v), "q has dtype"),
        (lambda q, k, v: (q, k, v[:, :1]), "v has shape"),
        (lambda q, k, v: (q, k, v.to("meta")), "v is on meta"),
        (lambda q, k, v: (q[..., :4], k[..., :4], v[..., :4]), "allowed head dims: 8 to 64"),
        (lambda q, k, v: (q, k.numpy(), v), "k must be a torch.Tensor"),
    ],
    ids=["rank", "dtype-mismatch", "int-dtype", "head-mismatch", "device", "head-dim", "type"],
)
def test_bad_input_names_the_argument(change, match):
    q, k, v = (randn(1, 2, 20, 16) for _ in range(3))
    with pytest.raises((ValueError, TypeError), match=match):
        linear_attention(*change(q, k, v))


def test_bad_backend_and_eps():
    q = randn(1, 1, 20, 16)
    with pytest.raises(ValueError, match="backend='cuda'"):
        linear_attention(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="eps must be"):
        linear_attention(q, q, q, eps=0.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpu_matches_reference(dtype):
    q, k, v = (randn(2, 16, 4096, 16, dtype=dtype, device="cuda") for _ in range(3))
    out = linear_attention_triton(q, k, v, out=poisoned(q.shape, dtype, "cuda"))
    ref = linear_attention_ref(q.double(), k.double(), v.double())
    assert rel_err(out, ref) < TOLERANCE[dtype]

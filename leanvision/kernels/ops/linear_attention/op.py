"""``leanvision.kernels.linear_attention``: validation, dispatch, custom op, autograd."""

from __future__ import annotations

import torch

from leanvision.kernels._validate import (
    check_backend,
    check_head_dim,
    check_like,
    check_tensor,
)
from leanvision.kernels.dispatch import resolve_backend, triton_compute_dtype
from leanvision.kernels.ops.linear_attention.ref import linear_attention_ref

LAYOUT = "(B, H, N, D)"
MIN_HEAD_DIM, MAX_HEAD_DIM = 8, 64


@torch.library.custom_op("leanvision::linear_attention", mutates_args=())
def _linear_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float, backend: str
) -> torch.Tensor:
    if resolve_backend(backend, q.device) == "triton":
        from leanvision.kernels.ops.linear_attention.triton import linear_attention_triton

        compute = triton_compute_dtype(q.dtype)  # fp32 for bf16 under the interpreter
        out = linear_attention_triton(q.to(compute), k.to(compute), v.to(compute), eps)
        return out.to(q.dtype)
    return linear_attention_ref(q, k, v, eps)


@_linear_attention_op.register_fake
def _(q, k, v, eps, backend):
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, eps, _ = inputs
    ctx.save_for_backward(q, k, v)
    ctx.eps = eps


def _backward(ctx, grad_out):
    # The backward recomputes through the torch reference: linear attention is cheap, and
    # training is not what the kernel is for.
    q, k, v = ctx.saved_tensors
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_(True) for x in (q, k, v)]
        out = linear_attention_ref(*inputs, ctx.eps)
        grads = torch.autograd.grad(out, inputs, grad_out)
    return (*grads, None, None)


_linear_attention_op.register_autograd(_backward, setup_context=_setup_context)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    eps: float = 1e-5,
    backend: str = "auto",
) -> torch.Tensor:
    """EfficientViT's non-causal ReLU linear attention.

    ``out_n = sum_m v_m (relu(k_m) . relu(q_n)) / (sum_m relu(k_m) . relu(q_n) + eps)``.
    q, k, v: (B, H, N, D) of one dtype (fp16, bf16, fp32), D from 8 to 64; strided views are
    fine. Computed in fp32, returned contiguous in the input dtype. ReLU is applied here, so
    pass q and k before the kernel function. ``backend``: "auto" | "triton" | "torch".

    >>> q, k, v = torch.randn(3, 2, 4, 100, 16).unbind(0)
    >>> linear_attention(q, k, v).shape
    torch.Size([2, 4, 100, 16])
    """
    check_tensor("q", q, 4, LAYOUT)
    check_tensor("k", k, 4, LAYOUT)
    check_tensor("v", v, 4, LAYOUT)
    check_like("k", k, "q", q)
    check_like("v", v, "q", q)
    if k.shape != q.shape:
        raise ValueError(
            f"k has shape {tuple(k.shape)} but q has {tuple(q.shape)}; they must match"
        )
    if v.shape != q.shape:
        raise ValueError(
            f"v has shape {tuple(v.shape)} but q has {tuple(q.shape)}; they must match"
        )
    check_head_dim("q", q.shape[-1], MIN_HEAD_DIM, MAX_HEAD_DIM)
    if q.shape[-2] == 0:
        raise ValueError("q has 0 tokens (N); N must be >= 1")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a float > 0; got {eps!r}")
    check_backend(backend)
    return _linear_attention_op(q, k, v, float(eps), backend)

"""``leanvision.kernels.attention``: validation, dispatch, custom op and autograd."""

from __future__ import annotations

import math

import torch

from leanvision.kernels._validate import (
    check_backend,
    check_key_padding_mask,
    check_like,
    check_qk,
    check_scale,
    check_tensor,
)
from leanvision.kernels.dispatch import resolve_backend, triton_compute_dtype
from leanvision.kernels.ops.attention.ref import attention_ref

MIN_HEAD_DIM, MAX_HEAD_DIM = 1, 256


@torch.library.custom_op("leanvision::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if resolve_backend(backend, q.device) == "triton":
        from leanvision.kernels.ops.attention.triton import attention_triton

        compute = triton_compute_dtype(q.dtype)  # fp32 for bf16 under the interpreter
        out, lse = attention_triton(
            q.to(compute), k.to(compute), v.to(compute), causal, scale, key_padding_mask
        )
        return out.to(q.dtype), lse
    return attention_ref(q, k, v, causal, scale, key_padding_mask)


@_attention_op.register_fake
def _(q, k, v, key_padding_mask, scale, causal, backend):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, scale, causal, _ = inputs
    ctx.save_for_backward(q, k, v, key_padding_mask)
    ctx.scale, ctx.causal = scale, causal


def _backward(ctx, grad_out, grad_lse):
    # The backward recomputes through the chunked torch reference: the kernels serve
    # inference, and this keeps autograd correct for the odd caller that trains through them.
    q, k, v, key_padding_mask = ctx.saved_tensors
    with torch.enable_grad():
        inputs = [x.detach().requires_grad_(True) for x in (q, k, v)]
        out, lse = attention_ref(*inputs, ctx.causal, ctx.scale, key_padding_mask)
        outputs, grads = [out], [grad_out]
        if grad_lse is not None:
            outputs.append(lse)
            grads.append(grad_lse)
        q_grad, k_grad, v_grad = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    return q_grad, k_grad, v_grad, None, None, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention (FlashAttention-2 style on GPU), accumulating in fp32.

    q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hq % Hkv == 0 (GQA/MQA), D from 1 to 256
    (e.g. 64, 72, 80, 96, 128; padded inside the kernel), one dtype (fp16, bf16, fp32);
    strided views are fine. ``scale`` defaults to 1/sqrt(D). ``causal`` aligns the mask to the
    bottom-right corner when Lq != Lk (query i sees keys j <= i + Lk - Lq), as FlashAttention
    does. ``key_padding_mask`` (B, Lk) bool is True at padding keys. A query row with no
    allowed key gives zeros (and lse = -inf), never NaN.

    Returns out (B, Hq, Lq, D) in q's dtype, or ``(out, lse)`` with ``return_lse=True``, lse
    being float32 (B, Hq, Lq) log-sum-exp of the scaled logits (natural log).
    ``backend``: "auto" | "triton" | "torch".

    >>> q = torch.randn(2, 8, 77, 64); k = v = torch.randn(2, 2, 77, 64)
    >>> attention(q, k, v, causal=True).shape
    torch.Size([2, 8, 77, 64])
    """
    check_qk(q, k, "(B, Hq, Lq, D)", "(B, Hkv, Lk, D)", MIN_HEAD_DIM, MAX_HEAD_DIM)
    check_tensor("v", v, 4, "(B, Hkv, Lk, D)")
    check_like("v", v, "k", k)
    if v.shape != k.shape:
        raise ValueError(
            f"v has shape {tuple(v.shape)} but k has {tuple(k.shape)}; they must match"
        )
    check_scale(scale)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool; got {type(causal).__name__}")
    key_padding_mask = check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[2], k.device)
    check_backend(backend)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, lse = _attention_op(q, k, v, key_padding_mask, scale, causal, backend)
    return (out, lse) if return_lse else out

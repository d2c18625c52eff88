"""``leanvision.kernels.decode_attention``: validation, dispatch, custom op."""

from __future__ import annotations

import math

import torch

from leanvision.kernels._validate import (
    INDEX_DTYPES,
    check_backend,
    check_dim,
    check_head_dim,
    check_heads,
    check_like,
    check_scale,
    check_tensor,
)
from leanvision.kernels.dispatch import resolve_backend, triton_compute_dtype
from leanvision.kernels.ops.decode.ref import decode_attention_ref

Q_LAYOUT = "(B, Hq, 1, D)"
CACHE_LAYOUT = "(B, Hkv, Lmax, D)"
MIN_HEAD_DIM, MAX_HEAD_DIM = 32, 256


def check_length_values(cache_lengths: torch.Tensor, max_length: int) -> None:
    """Raise unless 1 <= cache_lengths[b] <= Lmax for every b (CPU tensors only: no host sync).

    On a GPU this check would cost a device-to-host copy per decode step and break CUDA-graph
    capture, so CUDA lengths are not checked; the kernels clamp them to [1, Lmax] instead.
    """
    if cache_lengths.device.type != "cpu" or cache_lengths.numel() == 0:
        return
    low, high = int(cache_lengths.min()), int(cache_lengths.max())
    if low < 1 or high > max_length:
        raise ValueError(
            f"cache_lengths must lie in [1, Lmax] = [1, {max_length}]; got values from {low} "
            f"to {high}"
        )


@torch.library.custom_op("leanvision::decode_attention", mutates_args=())
def _decode_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lengths: torch.Tensor,
    scale: float,
    unified_max: float,
    backend: str,
) -> torch.Tensor:
    # Checked here, inside the opaque op, so torch.compile(fullgraph=True) sees no
    # data-dependent branch.
    check_length_values(cache_lengths, k_cache.shape[2])
    if resolve_backend(backend, q.device) == "triton":
        from leanvision.kernels.ops.decode.triton import decode_attention_triton

        compute = triton_compute_dtype(q.dtype)  # fp32 for bf16 under the interpreter
        out = decode_attention_triton(
            q.to(compute),
            k_cache.to(compute),
            v_cache.to(compute),
            cache_lengths,
            scale,
            unified_max,
        )
        return out.to(q.dtype)
    return decode_attention_ref(q, k_cache, v_cache, cache_lengths, scale)


@_decode_attention_op.register_fake
def _(q, k_cache, v_cache, cache_lengths, scale, unified_max, backend):
    return q.new_empty(q.shape)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lengths: torch.Tensor,
    *,
    scale: float | None = None,
    unified_max: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of one new query token per sequence over a padded KV cache.

    q: (B, Hq, 1, D); k_cache, v_cache: (B, Hkv, Lmax, D), Hq a multiple of Hkv (GQA/MQA),
    D from 32 to 256, one dtype (fp16, bf16, fp32) and device; cache_lengths: int32/int64 (B,)
    on the same device, sequence b attends to its first ``cache_lengths[b]`` keys (checked
    to lie in [1, Lmax] for CPU tensors; clamped on a GPU, where checking needs a host sync).
    ``scale`` defaults to 1/sqrt(D). Returns (B, Hq, 1, D) in q's dtype, accumulated in fp32.

    The Triton path is split-KV (FlashDecoding) with FlashDecoding++'s asynchronised softmax:
    every chunk subtracts the same ``unified_max`` (logit units) instead of a running max, and
    sequences whose max logit leaves ``[unified_max - 40, unified_max + 60]`` are recomputed
    with their exact max, without a host sync. ``backend``: "auto" | "triton" | "torch".

    >>> q = torch.randn(2, 8, 1, 64)
    >>> k = v = torch.randn(2, 2, 100, 64)
    >>> decode_attention(q, k, v, torch.tensor([37, 100])).shape
    torch.Size([2, 8, 1, 64])
    """
    check_tensor("q", q, 4, Q_LAYOUT)
    check_tensor("k_cache", k_cache, 4, CACHE_LAYOUT)
    check_tensor("v_cache", v_cache, 4, CACHE_LAYOUT)
    check_like("k_cache", k_cache, "q", q)
    check_like("v_cache", v_cache, "q", q)
    check_dim("q", q.shape[2], 1, "query length (dim 2)")
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"v_cache has shape {tuple(v_cache.shape)} but k_cache has {tuple(k_cache.shape)}; "
            "they must match"
        )
    check_dim("k_cache", k_cache.shape[0], q.shape[0], "batch size (dim 0)")
    check_dim("k_cache", k_cache.shape[3], q.shape[3], "head dim (dim 3)")
    check_heads("q", q.shape[1], "k_cache", k_cache.shape[1])
    check_head_dim("q", q.shape[3], MIN_HEAD_DIM, MAX_HEAD_DIM)
    if k_cache.shape[2] == 0:
        raise ValueError("k_cache has Lmax = 0 keys (dim 2); the cache needs >= 1 slot")
    check_tensor("cache_lengths", cache_lengths, 1, "(B,) integer lengths", INDEX_DTYPES)
    check_dim("cache_lengths", cache_lengths.shape[0], q.shape[0], "batch size (dim 0)")
    if cache_lengths.device != q.device:
        raise ValueError(
            f"cache_lengths is on {cache_lengths.device} but q is on {q.device}; they must match"
        )
    check_scale(scale)
    if isinstance(unified_max, bool) or not isinstance(unified_max, (int, float)):
        raise TypeError(f"unified_max must be a float; got {type(unified_max).__name__}")
    if not math.isfinite(unified_max):
        raise ValueError(f"unified_max must be finite; got {unified_max}")
    check_backend(backend)
    scale = 1.0 / math.sqrt(q.shape[3]) if scale is None else float(scale)
    return _decode_attention_op(
        q, k_cache, v_cache, cache_lengths, scale, float(unified_max), backend
    )

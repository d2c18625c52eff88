"""Pure-torch decode attention over a padded KV cache, fp32 accumulation.

The CPU path in production and the oracle in the tests: an exact softmax (row max
subtracted) over the first ``cache_lengths[b]`` keys of each sequence.
"""

from __future__ import annotations

import math

import torch


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """One query token per sequence against a padded cache; returns (B, Hq, 1, D) in q's dtype.

    q: (B, Hq, 1, D); k_cache, v_cache: (B, Hkv, Lmax, D) with Hq % Hkv == 0; cache_lengths:
    integer (B,), keys at positions >= cache_lengths[b] are padding. Lengths are clamped to
    [1, Lmax] (the op checks them first where that costs no host sync). Float64 inputs are
    computed in float64, everything else in float32.

    >>> q = torch.randn(2, 4, 1, 32)
    >>> kv = torch.randn(2, 2, 10, 32)
    >>> decode_attention_ref(q, kv, kv, torch.tensor([3, 10])).shape
    torch.Size([2, 4, 1, 32])
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    batch, q_heads, _, head_dim = q.shape
    kv_heads, max_length = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    # (B, Hkv, G, D) against (B, Hkv, Lmax, D): grouped-query attention without repeating k/v.
    qf = q.to(compute).reshape(batch, kv_heads, group, head_dim)
    scores = (qf @ k_cache.to(compute).transpose(-1, -2)) * scale  # (B, Hkv, G, Lmax)
    lengths = cache_lengths.to(device=q.device, dtype=torch.long).clamp(1, max_length)
    valid = torch.arange(max_length, device=q.device) < lengths[:, None]  # (B, Lmax)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    out = weights @ v_cache.to(compute)  # (B, Hkv, G, D)
    return out.reshape(batch, q_heads, 1, head_dim).to(q.dtype).contiguous()

"""Pure-torch softmax attention with fp32 accumulation: the CPU path and the test oracle.

Query rows are processed in chunks so memory stays O(chunk x Lk), never (Lq, Lk) at once.
"""

from __future__ import annotations

import math

import torch

# Upper bound on score elements (rows x keys x batch x heads) held at once by the reference.
CHUNK_ELEMENTS = 1 << 24


def allowed_keys(
    rows: torch.Tensor,
    keys: int,
    queries: int,
    causal: bool,
    key_padding_mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """Bool mask broadcastable to (B, 1, R, Lk): which keys each query position may attend.

    ``rows`` holds query positions, (R,) or (B, R). Causal masking is aligned to the
    bottom-right corner: query i sees keys j <= i + (Lk - Lq), as FlashAttention does.
    """
    mask = None
    if causal:
        key_pos = torch.arange(keys, device=rows.device)
        mask = key_pos <= rows[..., None] + (keys - queries)  # (R, Lk) or (B, R, Lk)
        mask = mask[None, None] if rows.dim() == 1 else mask[:, None]
    if key_padding_mask is not None:
        # key_padding_mask is True at padding keys (torch.nn.MultiheadAttention's convention).
        attend = ~key_padding_mask[:, None, None, :]
        mask = attend if mask is None else mask & attend
    return mask


def masked_softmax_parts(
    scores: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (exp(scores - rowmax), row sums, lse) where rows with no allowed key give 0/0/-inf.

    The row max of a fully masked row is -inf; it is replaced by 0 so that exp gives 0, not NaN.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    weights = torch.exp(scores - row_max)
    row_sum = weights.sum(-1, keepdim=True)
    # log of a clamped sum: the untaken branch must not give NaN gradients through torch.where.
    safe_log = torch.log(row_sum.clamp_min(torch.finfo(row_sum.dtype).tiny))
    lse = torch.where(row_sum > 0, row_max + safe_log, float("-inf"))
    return weights, row_sum, lse.squeeze(-1)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention; returns (out in q's dtype, lse float32 (B, Hq, Lq) in natural log).

    q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hq % Hkv == 0. ``key_padding_mask`` (B, Lk)
    bool is True at padding keys, which no query attends. A query row with no allowed
    key gives zeros and lse = -inf. Float64 inputs are computed (and the lse returned) in
    float64.

    >>> q = k = v = torch.randn(1, 2, 5, 32)
    >>> out, lse = attention_ref(q, k, v, causal=True)
    >>> out.shape, lse.shape
    (torch.Size([1, 2, 5, 32]), torch.Size([1, 2, 5]))
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    batch, q_heads, queries, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    # (B, Hkv, G, Lq, D) against (B, Hkv, 1, Lk, D): GQA without repeating k and v.
    qf = q.to(compute).reshape(batch, kv_heads, group, queries, head_dim)
    kf = k.to(compute)[:, :, None]
    vf = v.to(compute)[:, :, None]
    out = torch.empty(qf.shape, dtype=compute, device=q.device)
    lse = torch.empty(qf.shape[:-1], dtype=compute, device=q.device)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, batch * q_heads * keys))
    for start in range(0, queries, rows_per_chunk):
        rows = torch.arange(start, min(queries, start + rows_per_chunk), device=q.device)
        mask = allowed_keys(rows, keys, queries, causal, key_padding_mask)
        mask5 = None if mask is None else mask[:, :, None]  # (B|1, 1, 1, R, Lk)
        scores = (qf[..., start : start + len(rows), :] @ kf.transpose(-1, -2)) * scale
        weights, row_sum, row_lse = masked_softmax_parts(scores, mask5)
        out[..., start : start + len(rows), :] = (weights @ vf) / row_sum.clamp_min(
            torch.finfo(compute).tiny
        )
        lse[..., start : start + len(rows)] = row_lse
    lse_dtype = torch.float64 if compute == torch.float64 else torch.float32
    return (
        out.reshape(q.shape).to(q.dtype),
        lse.reshape(batch, q_heads, queries).to(lse_dtype),
    )

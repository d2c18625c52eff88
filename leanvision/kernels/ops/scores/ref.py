"""Pure-torch attention scores: softmax column means for chosen query rows, in fp32.

The CPU path in production and the oracle in the tests. Query rows are processed in chunks,
so memory is O(chunk x Lk) and the (Lq, Lk) attention matrix never exists at once.
"""

from __future__ import annotations

import math

import torch

from leanvision.kernels.ops.attention.ref import allowed_keys, masked_softmax_parts

# Upper bound on score elements (batch x heads x rows x keys) held at once.
CHUNK_ELEMENTS = 1 << 22
REDUCTIONS = ("mean", "none")


def gather_rows(q: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """q (B, H, Lq, D) at rows ``index`` (B, R) -> (B, H, R, D)."""
    batch, heads, _, head_dim = q.shape
    return torch.gather(q, 2, index[:, None, :, None].expand(batch, heads, -1, head_dim))


def attention_scores_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    causal: bool = False,
    query_index: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    reduce: str = "mean",
) -> torch.Tensor:
    """Softmax attention each key receives, averaged over the chosen query rows (and heads).

    q: (B, Hq, Lq, D); k: (B, Hkv, Lk, D), Hq % Hkv == 0. ``query_index`` (B, R) picks the
    rows (all Lq rows when None); causal masking uses a row's position in Lq, bottom-right
    aligned. ``key_padding_mask`` (B, Lk) is True at padding keys. A row with no allowed key
    contributes zeros but still counts in the mean. Returns float32 (float64 for float64
    input): (B, Lk) for ``reduce="mean"``, (B, Hq, Lk) for ``reduce="none"``.

    >>> q, k = torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)
    >>> round(attention_scores_ref(q, k).sum().item(), 4)  # each row's softmax sums to one
    1.0
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    batch, q_heads, queries, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    kf = k.to(compute)[:, :, None].transpose(-1, -2)  # (B, Hkv, 1, D, Lk)
    rows_total = queries if query_index is None else query_index.shape[1]
    total = torch.zeros(batch, kv_heads, group, keys, dtype=compute, device=q.device)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, batch * q_heads * keys))
    for start in range(0, rows_total, rows_per_chunk):
        end = min(rows_total, start + rows_per_chunk)
        if query_index is None:
            positions = torch.arange(start, end, device=q.device)  # (R,)
            rows = q[:, :, start:end]
        else:
            positions = query_index[:, start:end].long()  # (B, R)
            rows = gather_rows(q, positions)
        rows = rows.to(compute).reshape(batch, kv_heads, group, end - start, head_dim)
        mask = allowed_keys(positions, keys, queries, causal, key_padding_mask)
        mask5 = None if mask is None else mask[:, :, None]  # (B|1, 1, 1, R, Lk)
        weights, row_sum, _ = masked_softmax_parts((rows @ kf) * scale, mask5)
        total += (weights / row_sum.clamp_min(torch.finfo(compute).tiny)).sum(-2)
    total = total.reshape(batch, q_heads, keys) / rows_total
    return total.mean(1) if reduce == "mean" else total

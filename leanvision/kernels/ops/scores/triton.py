"""Triton attention scores: softmax column sums for chosen query rows, never forming (R, Lk).

Grid: (row blocks, B * Hq). Each program loads BLOCK_M chosen query rows of one head and reads
its kv head's keys twice. Pass 1 streams the keys to get every row's max and sum of
exponentials (an online softmax, in base 2). Pass 2 streams them again, forms the normalised
probabilities of one (BLOCK_M, BLOCK_N) tile at a time, sums the tile over its rows and
atomically adds those BLOCK_N column sums (already divided by the row and head counts) into
the float32 output. Memory beyond the inputs is the (B, [Hq,] Lk) output itself. Rows whose
position is outside [0, Lq) or that have no allowed key contribute nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from leanvision.kernels._triton_common import (
    dot_precision,
    launch_opts,
    next_pow2,
    reject_interpreted_dtype,
)
from leanvision.kernels.configs import scores_config

LOG2E = 1.4426950408889634


@triton.jit
def _logits(
    q, k_base, pad_base, pos, row_ok, start_n, Lk, offset,
    stride_kn, stride_kd, stride_pn, offs_d, mask_d, scale_log2,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Base-2 logits of one (BLOCK_M, BLOCK_N) tile, -inf where a key is not allowed."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    valid_n = offs_n < Lk
    k_t = tl.load(
        k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn,
        mask=mask_d[:, None] & valid_n[None, :],
        other=0.0,
    )
    qk = tl.dot(q, k_t, input_precision=PRECISION, out_dtype=tl.float32) * scale_log2
    allowed = row_ok[:, None] & valid_n[None, :]
    if HAS_PAD:
        padding = tl.load(pad_base + offs_n * stride_pn, mask=valid_n, other=1)
        allowed = allowed & (padding == 0)[None, :]
    if CAUSAL:
        # Bottom-right alignment: the query at position p sees keys j <= p + (Lk - Lq).
        allowed = allowed & (offs_n[None, :] <= pos[:, None] + offset)
    return tl.where(allowed, qk, float("-inf")), offs_n, valid_n


@triton.jit
def _scores_kernel(
    Q, K, IDX, PAD, OUT,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_ib, stride_ir,
    stride_pb, stride_pn,
    stride_ob, stride_oh, stride_on,
    H, GROUP, Lq, Lk, R, D, scale_log2, weight,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_INDEX: tl.constexpr, HAS_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    kv_h = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    in_rows = offs_r < R
    if HAS_INDEX:
        pos = tl.load(IDX + b * stride_ib + offs_r * stride_ir, mask=in_rows, other=0).to(tl.int32)
    else:
        pos = offs_r
    # An out-of-range position is never read: its row stays masked and adds nothing.
    row_ok = in_rows & (pos >= 0) & (pos < Lq)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.load(
        Q
        + b * stride_qb
        + h * stride_qh
        + pos[:, None].to(tl.int64) * stride_qm
        + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None] & mask_d[None, :],
        other=0.0,
    )
    k_base = K + b * stride_kb + kv_h * stride_kh
    pad_base = PAD + b * stride_pb
    offset = Lk - Lq
    hi = Lk
    if CAUSAL:
        # Keys after the last visible key of the block's furthest row are never needed.
        last = tl.max(tl.where(row_ok, pos, -1), axis=0)
        hi = tl.minimum(tl.maximum(last + offset + 1, 0), Lk)
    # Pass 1: each row's max and sum of exponentials (online, base 2).
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        qk, offs_n, valid_n = _logits(
            q, k_base, pad_base, pos, row_ok, start_n, Lk, offset,
            stride_kn, stride_kd, stride_pn, offs_d, mask_d, scale_log2,
            BLOCK_N=BLOCK_N, CAUSAL=CAUSAL, HAS_PAD=HAS_PAD, PRECISION=PRECISION,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(qk - m_safe[:, None]), axis=1)
        m_i = m_new
    # Rows with no allowed key (l == 0) get a zero factor, so their tiles add zeros, not NaN.
    m_final = tl.where(m_i == float("-inf"), 0.0, m_i)
    row_factor = tl.where(l_i > 0.0, weight / tl.where(l_i > 0.0, l_i, 1.0), 0.0)
    # Pass 2: normalised probabilities, summed over the block's rows, added to the output.
    out_base = OUT + b * stride_ob + h * stride_oh
    for start_n in range(0, hi, BLOCK_N):
        qk, offs_n, valid_n = _logits(
            q, k_base, pad_base, pos, row_ok, start_n, Lk, offset,
            stride_kn, stride_kd, stride_pn, offs_d, mask_d, scale_log2,
            BLOCK_N=BLOCK_N, CAUSAL=CAUSAL, HAS_PAD=HAS_PAD, PRECISION=PRECISION,
        )  # fmt: skip
        probs = tl.math.exp2(qk - m_final[:, None]) * row_factor[:, None]
        tl.atomic_add(out_base + offs_n * stride_on, tl.sum(probs, axis=0), mask=valid_n)


def attention_scores_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    causal: bool = False,
    query_index: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    reduce: str = "mean",
    *,
    config: dict | None = None,
) -> torch.Tensor:
    """Triton attention scores; same contract as
    :func:`~leanvision.kernels.ops.scores.ref.attention_scores_ref` (``query_index`` is (B, R)).

    ``config`` overrides the launch config (BLOCK_M, BLOCK_N, num_warps, num_stages).
    """
    reject_interpreted_dtype("attention_scores_triton", q.dtype)
    batch, q_heads, queries, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    rows = queries if query_index is None else query_index.shape[1]
    # The output is accumulated by atomic adds, so it must start at zero.
    if reduce == "mean":
        out = torch.zeros((batch, keys), dtype=torch.float32, device=q.device)
        out_strides = (out.stride(0), 0, out.stride(1))
        weight = 1.0 / (rows * q_heads)
    else:
        out = torch.zeros((batch, q_heads, keys), dtype=torch.float32, device=q.device)
        out_strides = out.stride()
        weight = 1.0 / rows
    block_d = next_pow2(head_dim)
    config = dict(config or scores_config(q.device, q.dtype, rows, block_d))
    has_index = query_index is not None
    has_pad = key_padding_mask is not None
    # Without an index or mask, any valid pointer will do: the kernel never reads it.
    index = query_index if has_index else out
    index_strides = query_index.stride() if has_index else (0, 0)
    pad = key_padding_mask.view(torch.uint8) if has_pad else out
    pad_strides = pad.stride() if has_pad else (0, 0)
    grid = (triton.cdiv(rows, config["BLOCK_M"]), batch * q_heads)
    _scores_kernel[grid](
        q, k, index, pad, out,
        *q.stride(), *k.stride(), *index_strides, *pad_strides, *out_strides,
        q_heads, q_heads // kv_heads, queries, keys, rows, head_dim, scale * LOG2E, weight,
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_D=block_d,
        CAUSAL=causal, HAS_INDEX=has_index, HAS_PAD=has_pad, PRECISION=dot_precision(q.dtype),
        **launch_opts(config),
    )  # fmt: skip
    return out

"""Triton prefill attention: FlashAttention-2 forward with an online softmax in fp32.

Grid: (query blocks, B * Hq). Each program keeps BLOCK_M query rows of one head in registers
and streams the keys and values of that head's kv head (GQA: ``h // (Hq // Hkv)``) in blocks
of BLOCK_N, so no (Lq, Lk) matrix exists. Scores are kept in base 2 (``log2(e)`` folded into
the scale) so the exponentials are ``exp2``. Causal blocks entirely below the diagonal run
without the causal mask; only the blocks that straddle it pay for it. Head dims are padded to
a power of two >= 16 with masked loads; inputs may be any strided view. Plain pointer
arithmetic throughout (no ``tl.make_block_ptr``), so it runs on Triton 3.6 to 3.9.
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
from leanvision.kernels.configs import attention_config

LOG2E = 1.4426950408889634


@triton.jit
def _attend_blocks(
    acc, l_i, m_i, q, k_base, v_base, pad_base,
    offs_m, offs_d, mask_d, lo, hi, Lk, offset, stride_kn, stride_kd, stride_vn, stride_vd,
    stride_pn, scale_log2,
    BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, HAS_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Fold key blocks [lo, hi) into the running (acc, row sum, row max) of one query block."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        valid_n = offs_n < Lk
        # k is loaded transposed, (D, N), so the logits are a plain (M, D) @ (D, N) product.
        k_t = tl.load(
            k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn,
            mask=mask_d[:, None] & valid_n[None, :],
            other=0.0,
        )
        qk = tl.dot(q, k_t, input_precision=PRECISION, out_dtype=tl.float32) * scale_log2
        allowed = valid_n[None, :]
        if HAS_PAD:
            padding = tl.load(pad_base + offs_n * stride_pn, mask=valid_n, other=1)
            allowed = allowed & (padding == 0)[None, :]
        if CAUSAL_MASK:
            allowed = allowed & (offs_n[None, :] <= offs_m[:, None] + offset)
        qk = tl.where(allowed, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        # A row that has seen no allowed key keeps max -inf; use 0 so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=valid_n[:, None] & mask_d[None, :],
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(
            p.to(v.dtype), v, input_precision=PRECISION, out_dtype=tl.float32
        )
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attention_kernel(
    Q, K, V, OUT, LSE, PAD,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_pb, stride_pn,
    H, GROUP, Lq, Lk, D, scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    kv_h = (h // GROUP).to(tl.int64)
    h = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Lq
    mask_d = offs_d < D
    q = tl.load(
        Q
        + b * stride_qb
        + h * stride_qh
        + offs_m[:, None] * stride_qm
        + offs_d[None, :] * stride_qd,
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )
    k_base = K + b * stride_kb + kv_h * stride_kh
    v_base = V + b * stride_vb + kv_h * stride_vh
    pad_base = PAD + b * stride_pb
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    # Bottom-right causal alignment: query i sees keys j <= i + (Lk - Lq).
    offset = Lk - Lq
    if CAUSAL:
        # Key blocks every row of this query block may see in full, then the diagonal ones.
        full_end = tl.minimum(tl.maximum(start_m + offset + 1, 0), Lk) // BLOCK_N * BLOCK_N
        diag_end = tl.minimum(tl.maximum(start_m + BLOCK_M + offset, 0), Lk)
    else:
        full_end = Lk
        diag_end = Lk
    acc, l_i, m_i = _attend_blocks(
        acc, l_i, m_i, q, k_base, v_base, pad_base,
        offs_m, offs_d, mask_d, 0, full_end, Lk, offset, stride_kn, stride_kd,
        stride_vn, stride_vd, stride_pn, scale_log2,
        BLOCK_N=BLOCK_N, CAUSAL_MASK=False, HAS_PAD=HAS_PAD, PRECISION=PRECISION,
    )  # fmt: skip
    if CAUSAL:
        acc, l_i, m_i = _attend_blocks(
            acc, l_i, m_i, q, k_base, v_base, pad_base,
            offs_m, offs_d, mask_d, full_end, diag_end, Lk, offset, stride_kn, stride_kd,
            stride_vn, stride_vd, stride_pn, scale_log2,
            BLOCK_N=BLOCK_N, CAUSAL_MASK=True, HAS_PAD=HAS_PAD, PRECISION=PRECISION,
        )  # fmt: skip
    # A fully masked row has l_i == 0: it gives zeros and lse = -inf.
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_base = OUT + b * stride_ob + h * stride_oh
    tl.store(
        o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        out.to(OUT.dtype.element_ty),
        mask=mask_m[:, None] & mask_d[None, :],
    )
    # Back from base 2 to the natural log: lse = (m + log2 l) * ln 2.
    log2_sum = m_i + tl.math.log2(tl.where(empty, 1.0, l_i))
    lse = tl.where(empty, float("-inf"), log2_sum * 0.6931471805599453)
    tl.store(LSE + pid_bh.to(tl.int64) * Lq + offs_m, lse, mask=mask_m)


def attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton attention; same contract as :func:`~leanvision.kernels.ops.attention.ref.attention_ref`.

    ``out`` (q's shape and dtype) and ``lse`` (float32 (B, Hq, Lq), contiguous) receive the
    results when given -- tests pass NaN-filled buffers to prove every element is written.
    ``config`` overrides the launch config (BLOCK_M, BLOCK_N, num_warps, num_stages), as the
    tuning script does.
    """
    reject_interpreted_dtype("attention_triton", q.dtype)
    batch, q_heads, queries, head_dim = q.shape
    kv_heads, keys = k.shape[1], k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty((batch, q_heads, queries), dtype=torch.float32, device=q.device)
    block_d = next_pow2(head_dim)
    config = dict(config or attention_config(q.device, q.dtype, queries, block_d, causal))
    block_m = config["BLOCK_M"]
    has_pad = key_padding_mask is not None
    # A bool tensor is read as bytes (same layout); without a mask any valid pointer will do.
    pad = key_padding_mask.view(torch.uint8) if has_pad else lse
    pad_strides = pad.stride() if has_pad else (0, 0)
    grid = (triton.cdiv(queries, block_m), batch * q_heads)
    _attention_kernel[grid](
        q, k, v, out, lse, pad,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *pad_strides,
        q_heads, q_heads // kv_heads, queries, keys, head_dim, scale * LOG2E,
        BLOCK_M=block_m, BLOCK_N=config["BLOCK_N"], BLOCK_D=block_d,
        CAUSAL=causal, HAS_PAD=has_pad, PRECISION=dot_precision(q.dtype),
        **launch_opts(config),
    )  # fmt: skip
    return out, lse

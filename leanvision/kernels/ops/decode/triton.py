"""Triton split-KV decode attention with FlashDecoding++'s asynchronised softmax.

FlashDecoding (split-KV) cuts each sequence's cache into ``splits`` chunks processed by
independent programs, then combines their partial results. Plain FlashDecoding keeps a running
max per chunk and rescales when it grows, and the combine rescales every chunk by
``exp(m_chunk - m_global)``. FlashDecoding++ (Hong et al., 2023, "asynchronised softmax with
unified max value") notes that the max only guards exp against overflow: any constant ``phi``
gives the same softmax, ``sum_i exp(x_i - phi) v_i / sum_i exp(x_i - phi)``. With one ``phi``
fixed before the call, every chunk writes ``(sum exp(x - phi) v, sum exp(x - phi))`` with no
rescaling and the combine just adds them.

The paper picks ``phi`` from the statistics of a model's softmax inputs and recomputes the rare
vectors whose inputs leave the safe range. Here:

* ``phi = unified_max`` (default 0.0), in logit units (after ``scale``).
* A (sequence, kv-head) group is *flagged* when a row's exact max logit ``m`` (each chunk also
  records its own max, which costs nothing and needs no synchronisation) leaves
  ``[phi + UNDERFLOW_BOUND, phi + OVERFLOW_BOUND]``: above it ``L * exp(m - phi) * |v|`` could
  overflow fp32; below it the largest term ``exp(m - phi)`` drifts toward the fp32 subnormals
  and the sum loses precision.
* Four launches, always, whatever the flags: chunks -> combine (writes unflagged rows, the flags
  and each row's exact max) -> chunks again, where flagged groups recompute with ``phi`` = their
  exact row max and unflagged ones do no work -> combine of the flagged rows. Nothing is read
  back to the host, so the call is safe under CUDA graphs.

Split heuristic (:func:`choose_splits`): enough (group, chunk) programs to give every SM about
four, but no chunk shorter than ``MIN_BLOCKS_PER_SPLIT`` key blocks; it uses only shapes (B, Hkv,
Lmax), never the lengths' values. Each sequence cuts its own length into that many chunks, so
short sequences in a padded batch get short chunks rather than empty ones.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from leanvision.kernels._triton_common import (
    fp32_dot_precision,
    launch_opts,
    next_pow2,
    reject_interpreted_dtype,
)
from leanvision.kernels.configs import length_bucket, sm_count, tuned_config
from leanvision.kernels.dispatch import interpreter_enabled

LOG2E = 1.4426950408889634
# Safe window for (row max logit - phi), natural-log units. exp(60) * 1e6 keys * 65504 (the
# largest fp16 value) stays below fp32's 3.4e38; exp(-40) ~ 4e-18 keeps the largest term far
# above fp32's smallest normal (1.2e-38), so flushed terms are < 1e-20 of the sum.
OVERFLOW_BOUND = 60.0
UNDERFLOW_BOUND = -40.0
MIN_BLOCKS_PER_SPLIT = 4
MAX_SPLITS = 128


@triton.jit
def _split_kernel(
    Q, K, V, LENGTHS, ROW_MAX, FLAGS, ACC, SUM, MAX,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    KV_HEADS, GROUP, D, MAX_LENGTH, SPLITS, qk_scale, phi,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    QK_PRECISION: tl.constexpr, PV_PRECISION: tl.constexpr, PV_FP32: tl.constexpr,
    RECOMPUTE: tl.constexpr,
):  # fmt: skip
    """One (sequence, kv head, chunk): partial sums of exp2(s - phi) v and exp2(s - phi).

    Scores ``s`` are in log2 units (``qk_scale`` includes log2(e)) so exp2 does the work.
    """
    pid_group = tl.program_id(0)  # b * KV_HEADS + kv head
    split = tl.program_id(1)
    b = (pid_group // KV_HEADS).to(tl.int64)
    kv_head = (pid_group % KV_HEADS).to(tl.int64)
    length = tl.load(LENGTHS + b).to(tl.int32)
    length = tl.minimum(tl.maximum(length, 1), MAX_LENGTH)
    blocks_per_split = tl.cdiv(tl.cdiv(length, BLOCK_N), SPLITS)
    start = split * blocks_per_split * BLOCK_N
    end = tl.minimum(start + blocks_per_split * BLOCK_N, length)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask_d = offs_d < D
    rows = pid_group.to(tl.int64) * GROUP + offs_g  # flat (b, q head) index
    active = mask_g
    if RECOMPUTE:
        flag = tl.load(FLAGS + pid_group)
        end = tl.where(flag != 0, end, start)  # unflagged groups skip the loop entirely
        active = mask_g & (flag != 0)
        # The exact row max makes every exponent <= 0 and the largest term exactly 1.
        row_phi = tl.load(ROW_MAX + rows, mask=mask_g, other=0.0)
    else:
        row_phi = tl.zeros([BLOCK_G], dtype=tl.float32) + phi

    q = tl.load(
        Q + b * stride_qb + (kv_head * GROUP + offs_g)[:, None] * stride_qh
        + offs_d[None, :] * stride_qd,
        mask=mask_g[:, None] & mask_d[None, :],
        other=0.0,
    )  # fmt: skip
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    total = tl.zeros([BLOCK_G], dtype=tl.float32)
    row_max = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        mask_nd = mask_n[:, None] & mask_d[None, :]
        k = tl.load(
            k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
            mask=mask_nd, other=0.0,
        )  # fmt: skip
        s = tl.dot(q, tl.trans(k), input_precision=QK_PRECISION, out_dtype=tl.float32)
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        row_max = tl.maximum(row_max, tl.max(s, axis=1))
        # No running max, no rescaling of acc: every chunk uses the same phi.
        p = tl.exp2(s - row_phi[:, None])
        total += tl.sum(p, axis=1)
        v = tl.load(
            v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=mask_nd, other=0.0,
        )  # fmt: skip
        if PV_FP32:
            # p can exceed fp16's range (up to exp(60)), so fp16/fp32 values multiply in fp32
            # (tf32 on a GPU keeps fp16 values exact and rounds p like a fp16 flash kernel).
            acc += tl.dot(p, v.to(tl.float32), input_precision=PV_PRECISION)
        else:
            # bf16 has fp32's exponent range: p fits, rounded as in any bf16 flash kernel.
            acc += tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)

    part = rows * SPLITS + split
    tl.store(ACC + part[:, None] * D + offs_d[None, :], acc, mask=active[:, None] & mask_d[None, :])
    tl.store(SUM + part, total, mask=active)
    tl.store(MAX + part, row_max, mask=active)


@triton.jit
def _combine_kernel(
    ACC, SUM, MAX, OUT, ROW_MAX, FLAGS,
    stride_ob, stride_oh, stride_od,
    KV_HEADS, GROUP, D, SPLITS, phi, low, high,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, RECOMPUTE: tl.constexpr,
):  # fmt: skip
    """Add the chunks of one (sequence, kv head); first pass also raises the overflow flag."""
    pid_group = tl.program_id(0)
    b = (pid_group // KV_HEADS).to(tl.int64)
    kv_head = (pid_group % KV_HEADS).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    mask_g = offs_g < GROUP
    mask = mask_g[:, None] & (offs_d < D)[None, :]
    rows = pid_group.to(tl.int64) * GROUP + offs_g
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    total = tl.zeros([BLOCK_G], dtype=tl.float32)
    row_max = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    for split in range(0, SPLITS):
        part = rows * SPLITS + split
        # Same phi everywhere: the partial results simply add, no exp(m_chunk - m) factors.
        acc += tl.load(ACC + part[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
        total += tl.load(SUM + part, mask=mask_g, other=0.0)
        row_max = tl.maximum(row_max, tl.load(MAX + part, mask=mask_g, other=float("-inf")))
    # Padding rows (g >= GROUP) have total 0; dividing by 1 there keeps them NaN-free.
    out = acc / tl.where(mask_g, total, 1.0)[:, None]
    out_ptrs = (
        OUT + b * stride_ob + (kv_head * GROUP + offs_g)[:, None] * stride_oh
        + offs_d[None, :] * stride_od
    )  # fmt: skip
    if RECOMPUTE:
        flag = tl.load(FLAGS + pid_group)
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=mask & (flag != 0))
    else:
        outside = ((row_max - phi) > high) | ((row_max - phi) < low)
        flag = tl.max((outside & mask_g).to(tl.int32), axis=0)
        tl.store(FLAGS + pid_group, flag)
        tl.store(ROW_MAX + rows, row_max, mask=mask_g)
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=mask & (flag == 0))


def choose_splits(groups: int, max_length: int, block_n: int, sms: int, min_blocks: int) -> int:
    """How many chunks each sequence's cache is cut into (shapes only, CUDA-graph stable).

    ``groups`` = B * Hkv programs exist without splitting; aim for ~4 programs per SM so the
    memory system stays busy, but keep >= ``min_blocks`` key blocks per chunk so the combine
    and the partial buffers stay small next to the cache read.

    >>> choose_splits(groups=8, max_length=131072, block_n=64, sms=132, min_blocks=4)
    66
    >>> choose_splits(groups=256, max_length=4096, block_n=64, sms=132, min_blocks=4)
    3
    """
    blocks = triton.cdiv(max_length, block_n)
    wanted = triton.cdiv(4 * sms, groups)
    return max(1, min(wanted, triton.cdiv(blocks, min_blocks), MAX_SPLITS))


def _config(q: torch.Tensor, max_length: int, block_d: int, groups: int) -> dict:
    if interpreter_enabled():
        # Few programs and one config: the interpreter pays per program and per op.
        config = {"BLOCK_N": 64}
        config["SPLITS"] = choose_splits(groups, max_length, 64, sms=2, min_blocks=1)
        return config
    config = {"BLOCK_N": 64 if block_d <= 128 else 32, "num_warps": 4, "num_stages": 2}
    key = f"D{block_d}-{str(q.dtype)[6:]}-L{length_bucket(max_length)}"
    config.update(tuned_config("decode_attention", key, q.device) or {})
    if "SPLITS" not in config:
        config["SPLITS"] = choose_splits(
            groups, max_length, config["BLOCK_N"], sm_count(q.device), MIN_BLOCKS_PER_SPLIT
        )
    return config


def _precisions(dtype: torch.dtype) -> tuple[str, str, bool]:
    """(q.k precision, p.v precision, whether p.v multiplies in fp32) for the cache dtype.

    16-bit q.k products are exact in the fp32 accumulator whatever the flag says; fp16 p.v runs
    as a tf32 product on a GPU (exact for fp16 values, p rounded to 10 bits as in any fp16
    flash kernel) and as IEEE fp32 under the interpreter, which has no tf32.
    """
    fp32 = fp32_dot_precision()
    if dtype == torch.float32:
        return fp32, fp32, True
    sixteen_bit = "ieee" if interpreter_enabled() else "tf32"
    return sixteen_bit, sixteen_bit, dtype == torch.float16


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lengths: torch.Tensor,
    scale: float | None = None,
    unified_max: float = 0.0,
    *,
    out: torch.Tensor | None = None,
    splits: int | None = None,
    return_flags: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton decode attention; same contract as :func:`decode_attention_ref`.

    ``unified_max`` is FlashDecoding++'s phi in logit units. ``out`` (contiguous, q's shape and
    dtype) receives the result when given -- tests pass a NaN-filled buffer. ``splits``
    overrides :func:`choose_splits`. With ``return_flags`` also returns a (B,) bool tensor:
    which sequences left the safe window and were recomputed with their exact max.
    """
    reject_interpreted_dtype("decode_attention_triton", q.dtype)
    batch, q_heads, _, head_dim = q.shape
    kv_heads, max_length = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    groups = batch * kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    block_d = next_pow2(head_dim)
    block_g = next_pow2(group)
    config = _config(q, max_length, block_d, groups)
    if splits is not None:
        config["SPLITS"] = splits
    n_splits = config["SPLITS"]
    device = q.device
    rows = batch * q_heads
    acc = torch.empty((rows, n_splits, head_dim), dtype=torch.float32, device=device)
    total = torch.empty((rows, n_splits), dtype=torch.float32, device=device)
    chunk_max = torch.empty((rows, n_splits), dtype=torch.float32, device=device)
    row_max = torch.empty((rows,), dtype=torch.float32, device=device)
    flags = torch.empty((groups,), dtype=torch.int32, device=device)
    qk_precision, pv_precision, pv_fp32 = _precisions(q.dtype)
    # Everything below is in log2 units: s2 = s * log2(e), so exp(s - phi) = exp2(s2 - phi2).
    phi = float(unified_max) * LOG2E
    opts = launch_opts(config)
    for recompute in (False, True):
        _split_kernel[(groups, n_splits)](
            q, k_cache, v_cache, cache_lengths, row_max, flags, acc, total, chunk_max,
            q.stride(0), q.stride(1), q.stride(3), *k_cache.stride(), *v_cache.stride(),
            kv_heads, group, head_dim, max_length, n_splits, scale * LOG2E, phi,
            BLOCK_G=block_g, BLOCK_N=config["BLOCK_N"], BLOCK_D=block_d,
            QK_PRECISION=qk_precision, PV_PRECISION=pv_precision, PV_FP32=pv_fp32,
            RECOMPUTE=recompute, **opts,
        )  # fmt: skip
        _combine_kernel[(groups,)](
            acc, total, chunk_max, out, row_max, flags,
            out.stride(0), out.stride(1), out.stride(3),
            kv_heads, group, head_dim, n_splits,
            phi, UNDERFLOW_BOUND * LOG2E, OVERFLOW_BOUND * LOG2E,
            BLOCK_G=block_g, BLOCK_D=block_d, RECOMPUTE=recompute,
        )  # fmt: skip
    if return_flags:
        return out, flags.view(batch, kv_heads).ne(0).any(dim=1)
    return out

"""Triton ReLU linear attention: one pass builds the key-value state, one pass applies it.

Pass 1 (grid: B*H x splits) reads relu(k) and v of one chunk of tokens and writes a partial
state ``sum_m relu(k_m) [v_m, 1]`` -- the (D+1) x D matrix, stored as a D x D block plus a
D-vector. Pass 2 (grid: token blocks x B*H) sums the partial states (splitting the token axis
keeps the GPU busy when B*H is small) and writes
``out_n = relu(q_n) S / (relu(q_n) . s + eps)``. Head dims are padded to a power of two >= 16
inside the kernel; inputs may be strided views (EfficientViT's q/k/v are chunks of one tensor).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from leanvision.kernels._triton_common import (
    fp32_dot_precision,
    launch_opts,
    next_pow2,
    reject_interpreted_dtype,
)
from leanvision.kernels.configs import sm_count, tuned_config
from leanvision.kernels.dispatch import interpreter_enabled
from leanvision.kernels.ops.linear_attention.ref import linear_attention_ref


@triton.jit
def _state_kernel(
    K, V, STATE, KSUM,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    H, N, D, CHUNK, SPLITS,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_split = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    state = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    key_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = pid_split * CHUNK
    end = tl.minimum(start + CHUNK, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        # k is loaded transposed (D, N) so the state is a plain (D, N) @ (N, D) product.
        k_t = tl.load(
            k_base + offs_d[:, None] * stride_kd + offs_n[None, :] * stride_kn,
            mask=mask_d[:, None] & mask_n[None, :],
            other=0.0,
        )
        k_t = tl.maximum(k_t, 0.0).to(V.dtype.element_ty)
        v = tl.load(
            v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        )
        # fp16/bf16 products are exact in the fp32 accumulator, so they stay in the input type.
        state += tl.dot(k_t, v, input_precision=PRECISION, out_dtype=tl.float32)
        key_sum += tl.sum(k_t.to(tl.float32), axis=1)
    out_base = (pid_bh * SPLITS + pid_split).to(tl.int64)
    tl.store(
        STATE + out_base * BLOCK_D * BLOCK_D + offs_d[:, None] * BLOCK_D + offs_d[None, :], state
    )
    tl.store(KSUM + out_base * BLOCK_D + offs_d, key_sum)


@triton.jit
def _apply_kernel(
    Q, STATE, KSUM, OUT,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_ob, stride_oh, stride_on, stride_od,
    H, N, D, SPLITS, eps,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    state = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    key_sum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for split in range(0, SPLITS):
        base = (pid_bh * SPLITS + split).to(tl.int64)
        state += tl.load(
            STATE + base * BLOCK_D * BLOCK_D + offs_d[:, None] * BLOCK_D + offs_d[None, :]
        )
        key_sum += tl.load(KSUM + base * BLOCK_D + offs_d)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    q = tl.load(
        Q
        + b * stride_qb
        + h * stride_qh
        + offs_n[:, None] * stride_qn
        + offs_d[None, :] * stride_qd,
        mask=mask_n[:, None] & mask_d[None, :],
        other=0.0,
    )
    q = tl.maximum(q.to(tl.float32), 0.0)
    numerator = tl.dot(q, state, input_precision=PRECISION)
    denominator = tl.sum(q * key_sum[None, :], axis=1) + eps
    out = numerator / denominator[:, None]
    tl.store(
        OUT
        + b * stride_ob
        + h * stride_oh
        + offs_n[:, None] * stride_on
        + offs_d[None, :] * stride_od,
        out.to(OUT.dtype.element_ty),
        mask=mask_n[:, None] & mask_d[None, :],
    )


def _config(q: torch.Tensor, block_d: int) -> dict:
    batch, heads, tokens, _ = q.shape
    if interpreter_enabled():
        # Few, large programs: the interpreter's cost is per program and per op, not per FLOP.
        return {"BLOCK_N": 64, "SPLITS": min(2, triton.cdiv(tokens, 64))}
    tuned = tuned_config("linear_attention", f"D{block_d}-{str(q.dtype)[6:]}", q.device)
    config = {"BLOCK_N": 128 if block_d <= 32 else 64, "num_warps": 4, "num_stages": 2}
    config.update(tuned or {})
    # Enough state programs to fill the GPU about twice, each still reading >= 4 blocks.
    wanted = triton.cdiv(2 * sm_count(q.device), batch * heads)
    config["SPLITS"] = max(1, min(wanted, triton.cdiv(tokens, 4 * config["BLOCK_N"])))
    return config


def linear_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eps: float = 1e-5,
    *,
    out: torch.Tensor | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Triton ReLU linear attention; same contract as :func:`linear_attention_ref`.

    ``out`` (contiguous, q's shape and dtype) receives the result when given -- tests pass a
    NaN-filled buffer to prove every element is written. ``splits`` overrides how many chunks
    the token axis is cut into for the state pass.
    """
    reject_interpreted_dtype("linear_attention_triton", q.dtype)
    batch, heads, tokens, head_dim = q.shape
    if tokens <= head_dim:
        result = linear_attention_ref(q, k, v, eps)
        return result if out is None else out.copy_(result)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    block_d = next_pow2(head_dim)
    config = _config(q, block_d)
    if splits is not None:
        config["SPLITS"] = splits
    n_splits = config["SPLITS"]
    chunk = triton.cdiv(triton.cdiv(tokens, n_splits), config["BLOCK_N"]) * config["BLOCK_N"]
    state = torch.empty(
        (batch * heads, n_splits, block_d, block_d), dtype=torch.float32, device=q.device
    )
    key_sum = torch.empty((batch * heads, n_splits, block_d), dtype=torch.float32, device=q.device)
    precision = fp32_dot_precision()
    opts = launch_opts(config)
    _state_kernel[(batch * heads, n_splits)](
        k, v, state, key_sum, *k.stride(), *v.stride(),
        heads, tokens, head_dim, chunk, n_splits,
        BLOCK_N=config["BLOCK_N"], BLOCK_D=block_d, PRECISION=precision,
        **opts,
    )  # fmt: skip
    _apply_kernel[(triton.cdiv(tokens, config["BLOCK_N"]), batch * heads)](
        q, state, key_sum, out, *q.stride(), *out.stride(),
        heads, tokens, head_dim, n_splits, eps,
        BLOCK_N=config["BLOCK_N"], BLOCK_D=block_d, PRECISION=precision,
        **opts,
    )  # fmt: skip
    return out

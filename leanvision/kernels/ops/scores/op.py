"""``leanvision.kernels.attention_scores``: validation, dispatch and the custom op."""

from __future__ import annotations

import math

import torch

from leanvision.kernels._validate import (
    check_backend,
    check_key_padding_mask,
    check_qk,
    check_query_index,
    check_scale,
)
from leanvision.kernels.dispatch import resolve_backend, triton_compute_dtype
from leanvision.kernels.ops.scores.ref import REDUCTIONS, attention_scores_ref

MIN_HEAD_DIM, MAX_HEAD_DIM = 1, 256


@torch.library.custom_op("leanvision::attention_scores", mutates_args=())
def _attention_scores_op(
    q: torch.Tensor,
    k: torch.Tensor,
    query_index: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    reduce: str,
    backend: str,
) -> torch.Tensor:
    if resolve_backend(backend, q.device) == "triton":
        from leanvision.kernels.ops.scores.triton import attention_scores_triton

        compute = triton_compute_dtype(q.dtype)  # fp32 for bf16 under the interpreter
        return attention_scores_triton(
            q.to(compute),
            k.to(compute),
            scale,
            causal,
            query_index,
            key_padding_mask,
            reduce=reduce,
        )
    return attention_scores_ref(q, k, scale, causal, query_index, key_padding_mask, reduce)


@_attention_scores_op.register_fake
def _(q, k, query_index, key_padding_mask, scale, causal, reduce, backend):
    shape = (q.shape[0], k.shape[2]) if reduce == "mean" else (q.shape[0], q.shape[1], k.shape[2])
    return q.new_empty(shape, dtype=torch.float32)


def attention_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    query_index: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    reduce: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Softmax attention each key receives from chosen query rows, never forming (Lq, Lk).

    q: (B, Hq, Lq, D); k: (B, Hkv, Lk, D) with Hq % Hkv == 0 (GQA/MQA), D from 1 to 256, one
    float dtype; strided views are fine. ``scale`` defaults to 1/sqrt(D). ``query_index``
    (B, R) (or (R,) for every sequence) picks the query rows by position in [0, Lq); all rows
    when None. ``causal`` masks keys after a row's position, aligned bottom-right when
    Lq != Lk. ``key_padding_mask`` (B, Lk) bool is True at padding keys. A row with no
    allowed key contributes zeros but still counts in the mean.

    Returns float32: the column means of softmax(q k^T * scale) over the chosen rows and all
    heads, (B, Lk), for ``reduce="mean"``; per head, (B, Hq, Lk), for ``reduce="none"``.
    Each row of a ``"mean"`` result sums to 1 when no row is fully masked. Memory is O(R x Lk).
    Not differentiable (q and k are detached). ``backend``: "auto" | "triton" | "torch".

    >>> q, k = torch.randn(2, 8, 50, 64), torch.randn(2, 2, 50, 64)
    >>> last = torch.tensor([[49], [30]])
    >>> attention_scores(q, k, causal=True, query_index=last).shape
    torch.Size([2, 50])
    """
    check_qk(q, k, "(B, Hq, Lq, D)", "(B, Hkv, Lk, D)", MIN_HEAD_DIM, MAX_HEAD_DIM)
    check_scale(scale)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool; got {type(causal).__name__}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r} is not allowed; choose one of {list(REDUCTIONS)}")
    query_index = check_query_index(query_index, q.shape[0], q.device)
    key_padding_mask = check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[2], k.device)
    check_backend(backend)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _attention_scores_op(
        q.detach(), k.detach(), query_index, key_padding_mask, scale, causal, reduce, backend
    )

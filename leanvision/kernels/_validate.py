"""Input checks shared by the kernel ops: every error names the argument and what is allowed.

The checks look only at shapes, dtypes and devices (never at values), so they run before any
kernel launch and trace under ``torch.compile`` without graph breaks.
"""

from __future__ import annotations

import torch

from leanvision.kernels.dispatch import BACKENDS

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)


def _names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(
    name: str,
    x: object,
    ndim: int,
    layout: str,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of rank ``ndim`` (described by ``layout``) and allowed dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}; got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor {layout}; got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {x.dtype}; allowed dtypes: {_names(dtypes)}")
    return x


def check_like(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``x`` must share ``ref``'s dtype and device."""
    if x.dtype != ref.dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}; they must match"
        )
    if x.device != ref.device:
        raise ValueError(
            f"{name} is on {x.device} but {ref_name} is on {ref.device}; they must match"
        )


def check_dim(name: str, got: int, expected: int, what: str) -> None:
    if got != expected:
        raise ValueError(f"{name} has {what} {got}, expected {expected}")


def check_head_dim(name: str, head_dim: int, low: int, high: int) -> None:
    if not low <= head_dim <= high:
        raise ValueError(f"{name} has head dim {head_dim}; allowed head dims: {low} to {high}")


def check_heads(q_name: str, q_heads: int, kv_name: str, kv_heads: int) -> None:
    if kv_heads < 1 or q_heads % kv_heads != 0:
        raise ValueError(
            f"{q_name} has {q_heads} heads, which is not a multiple of the {kv_heads} heads of "
            f"{kv_name} (grouped-query attention needs Hq % Hkv == 0)"
        )


def check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {list(BACKENDS)}")
    return backend  # type: ignore[return-value]


def check_scale(scale: object) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None; got {type(scale).__name__}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale}")


def check_key_padding_mask(
    mask: object, batch: int, keys: int, device: torch.device
) -> torch.Tensor | None:
    """``key_padding_mask`` is (B, Lk) bool, True at padding keys (never attended)."""
    if mask is None:
        return None
    check_tensor("key_padding_mask", mask, 2, "(B, Lk) bool, True = padding", (torch.bool,))
    assert isinstance(mask, torch.Tensor)
    if tuple(mask.shape) != (batch, keys):
        raise ValueError(
            f"key_padding_mask has shape {tuple(mask.shape)}, expected (B, Lk) = ({batch}, {keys})"
        )
    if mask.device != device:
        raise ValueError(f"key_padding_mask is on {mask.device} but k is on {device}")
    return mask


def check_qk(q: object, k: object, layout_q: str, layout_k: str, low: int, high: int) -> None:
    """q (B, Hq, Lq, D) and k (B, Hkv, Lk, D): same dtype/device/batch/head dim, Hq % Hkv == 0."""
    check_tensor("q", q, 4, layout_q)
    check_tensor("k", k, 4, layout_k)
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)
    check_like("k", k, "q", q)
    check_dim("k", k.shape[0], q.shape[0], "batch size (dim 0) of")
    check_dim("k", k.shape[3], q.shape[3], "head dim (dim 3) of")
    check_heads("q", q.shape[1], "k", k.shape[1])
    check_head_dim("q", q.shape[3], low, high)
    if q.shape[2] == 0:
        raise ValueError("q has 0 query rows (Lq); Lq must be >= 1")
    if k.shape[2] == 0:
        raise ValueError("k has 0 keys (Lk); Lk must be >= 1")


def check_query_index(index: object, batch: int, device: torch.device) -> torch.Tensor | None:
    """``query_index`` is (B, R) or (R,) int32/int64 row positions; returns it as (B, R)."""
    if index is None:
        return None
    if not isinstance(index, torch.Tensor):
        raise TypeError(
            f"query_index must be a torch.Tensor (B, R) of row positions; got {type(index).__name__}"
        )
    if index.dtype not in INDEX_DTYPES:
        raise TypeError(
            f"query_index has dtype {index.dtype}; allowed dtypes: {_names(INDEX_DTYPES)}"
        )
    if index.dim() == 1:
        index = index[None].expand(batch, -1)
    if index.dim() != 2 or index.shape[0] != batch:
        raise ValueError(
            f"query_index must have shape (B, R) = ({batch}, R) or (R,); got {tuple(index.shape)}"
        )
    if index.shape[1] == 0:
        raise ValueError("query_index selects 0 rows; it must select at least one (R >= 1)")
    if index.device != device:
        raise ValueError(f"query_index is on {index.device} but q is on {device}")
    return index

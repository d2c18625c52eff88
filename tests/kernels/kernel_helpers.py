"""Shared test helpers for the kernel tests: error metric, tolerances, poisoned buffers."""

from __future__ import annotations

import torch

# Relative-error bounds ||out - ref|| / ||ref|| against a float64 reference, per input dtype.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# bf16 is broken under the Triton interpreter: launchers are tested in fp32/fp16 here, and the
# public ops (which compute bf16 in fp32 there) in test_bf16_under_interpreter.py.
CPU_DTYPES = (torch.float32, torch.float16)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64; NaN anywhere gives inf (NaN never passes)."""
    out, ref = out.double(), ref.double()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if not torch.isfinite(out).all():
        return float("inf")
    scale = ref.norm().item()
    return (out - ref).norm().item() / (scale if scale > 0 else 1.0)


def poisoned(shape, dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """An output buffer full of NaN: any element a kernel forgets to write fails the test."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)


def randn(*shape, dtype=torch.float32, device="cpu", scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def padding_from_lengths(lengths, keys: int, left: bool = False) -> torch.Tensor:
    """(B, Lk) bool key_padding_mask, True at padding: row b keeps ``lengths[b]`` keys."""
    positions = torch.arange(keys)[None]
    valid = torch.as_tensor(lengths)[:, None]
    padding = positions >= valid
    return padding.flip(-1) if left else padding


def explicit_logits(q, k, *, causal=False, scale=None, key_padding_mask=None) -> torch.Tensor:
    """The (B, Hq, Lq, Lk) scaled logits in float64, -inf where a key is not allowed.

    GQA heads are repeated; causal is bottom-right aligned.
    """
    q, k = q.double(), k.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    queries, keys = q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-1, -2)) * scale
    allowed = torch.ones(queries, keys, dtype=torch.bool)
    if causal:
        allowed = torch.arange(keys)[None] <= torch.arange(queries)[:, None] + (keys - queries)
    allowed = allowed[None, None]
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    return logits.masked_fill(~allowed, float("-inf"))


def explicit_probs(q, k, **kwargs) -> torch.Tensor:
    """The full (B, Hq, Lq, Lk) softmax matrix in float64, built the obvious way (test oracle);
    rows with no allowed key are 0."""
    return torch.nan_to_num(explicit_logits(q, k, **kwargs).softmax(-1), nan=0.0)


def explicit_attention(q, k, v, **kwargs) -> torch.Tensor:
    """Float64 attention output from :func:`explicit_probs`."""
    v = v.double().repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return explicit_probs(q, k, **kwargs) @ v


def explicit_lse(q, k, **kwargs) -> torch.Tensor:
    """Float64 (B, Hq, Lq) log-sum-exp of the scaled, masked logits (-inf for empty rows)."""
    return explicit_logits(q, k, **kwargs).logsumexp(-1)


def explicit_linear_attention(q, k, v, eps: float = 1e-5) -> torch.Tensor:
    """ReLU linear attention in float64, written as the (N, N) weight matrix (test oracle).

    ``out_n = sum_m w_nm v_m / (sum_m w_nm + eps)`` with ``w_nm = relu(q_n) . relu(k_m)``.
    Differentiable, so its autograd is an independent oracle of the op's backward.
    """
    weights = torch.einsum("bhnd,bhmd->bhnm", q.double().relu(), k.double().relu())
    numerator = torch.einsum("bhnm,bhmd->bhnd", weights, v.double())
    return numerator / (weights.sum(-1, keepdim=True) + eps)

"""Pure-torch ReLU linear attention (EfficientViT LiteMLA), fp32 accumulation.

The CPU path in production and the oracle in the tests.
"""

from __future__ import annotations

import torch


def linear_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Non-causal ReLU linear attention over (B, H, N, D) tensors.

    ``out_n = sum_m v_m (relu(k_m) . relu(q_n)) / (sum_m relu(k_m) . relu(q_n) + eps)``,
    computed in fp32 (float64 stays float64) and returned in q's dtype, contiguous.
    When N <= D the (N, N) quadratic form is cheaper than the (D, D) state and is used, as
    EfficientViT does.

    >>> q = k = v = torch.ones(1, 1, 4, 8)
    >>> linear_attention_ref(q, k, v).shape
    torch.Size([1, 1, 4, 8])
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = torch.relu(q.to(compute))
    kf = torch.relu(k.to(compute))
    vf = v.to(compute)
    tokens, head_dim = q.shape[-2], q.shape[-1]
    if tokens <= head_dim:
        weights = qf @ kf.transpose(-1, -2)  # (N, N): query n, key m
        out = (weights @ vf) / (weights.sum(-1, keepdim=True) + eps)
    else:
        state = kf.transpose(-1, -2) @ vf  # (D, D): sum_m k_m v_m^T
        key_sum = kf.sum(-2, keepdim=True)  # (1, D): sum_m k_m
        out = (qf @ state) / ((qf * key_sum).sum(-1, keepdim=True) + eps)
    return out.to(q.dtype).contiguous()

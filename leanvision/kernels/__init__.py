"""Shared attention-family kernels: Triton on capable GPUs, a pure-torch reference elsewhere.

Each op is a ``torch.library`` custom op (``torch.ops.leanvision.*``) with a fake
implementation, so ``torch.compile(fullgraph=True)`` traces through it. Triton is imported only
when a Triton path runs; without triton installed the torch path still works.

>>> import torch
>>> from leanvision import kernels
>>> q = k = v = torch.randn(1, 2, 8, 64)
>>> kernels.attention(q, k, v, causal=True, backend="torch").shape
torch.Size([1, 2, 8, 64])
"""

from leanvision.kernels.dispatch import kernel_mode, resolve_backend
from leanvision.kernels.ops.attention.op import attention
from leanvision.kernels.ops.decode.op import decode_attention
from leanvision.kernels.ops.linear_attention.op import linear_attention
from leanvision.kernels.ops.scores.op import attention_scores

__all__ = [
    "attention",
    "attention_scores",
    "decode_attention",
    "kernel_mode",
    "linear_attention",
    "resolve_backend",
]

"""Every op traces under torch.compile(fullgraph=True) and passes torch.library.opcheck."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import (
    explicit_attention,
    explicit_linear_attention,
    explicit_lse,
    explicit_probs,
    padding_from_lengths,
    randn,
    rel_err,
)

from leanvision.kernels import attention, attention_scores, linear_attention

# Every result is compared with the float64 formulas in kernel_helpers, never with the
# kernels' own torch references: with backend="torch" those are what runs.


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_attention_compiles_without_graph_breaks():
    q, k, v = randn(2, 4, 10, 32), randn(2, 2, 12, 32), randn(2, 2, 12, 32)
    padding = padding_from_lengths([12, 7], 12)

    def block(q, k, v, padding):
        out, lse = attention(q, k, v, causal=True, key_padding_mask=padding, return_lse=True)
        return out * 2, lse

    out, lse = torch.compile(block, fullgraph=True)(q, k, v, padding)
    want = explicit_attention(q, k, v, causal=True, key_padding_mask=padding)
    assert rel_err(out, 2 * want) < 1e-5
    assert lse.shape == (2, 4, 10) and lse.dtype == torch.float32


def test_attention_scores_compiles_without_graph_breaks():
    q, k = randn(2, 4, 10, 32), randn(2, 2, 10, 32)
    index = torch.tensor([[9, 3], [9, 8]])

    def score(q, k, index):
        return attention_scores(q, k, causal=True, query_index=index, reduce="none").sum(1)

    out = torch.compile(score, fullgraph=True)(q, k, index)
    probs = explicit_probs(q, k, causal=True)  # (B, Hq, Lq, Lk)
    want = torch.stack([probs[b][:, index[b]].mean(1) for b in range(2)]).sum(1)
    assert rel_err(out, want) < 1e-5


def test_linear_attention_compiles_without_graph_breaks():
    q, k, v = (randn(1, 2, 48, 16) for _ in range(3))
    out = torch.compile(lambda a, b, c: linear_attention(a, b, c) + 1, fullgraph=True)(q, k, v)
    assert rel_err(out, explicit_linear_attention(q, k, v) + 1) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attention_opcheck(backend):
    op = torch.ops.leanvision.attention.default
    q, k, v = randn(2, 4, 6, 16), randn(2, 2, 9, 16), randn(2, 2, 9, 16)
    padding = padding_from_lengths([9, 4], 9)
    torch.library.opcheck(op, (q, k, v, padding, 0.25, True, backend))
    # Autograd registration (recompute through the reference) is checked on the torch path.
    grads = [x.clone().requires_grad_() for x in (q, k, v)]
    torch.library.opcheck(op, (*grads, None, 0.25, False, "torch"))
    out, lse = op(*grads, None, 0.25, False, backend)
    assert rel_err(out, explicit_attention(q, k, v, scale=0.25)) < 1e-5
    assert rel_err(lse, explicit_lse(q, k, scale=0.25)) < 1e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_attention_scores_opcheck(backend):
    op = torch.ops.leanvision.attention_scores.default
    q, k = randn(2, 4, 6, 16), randn(2, 2, 9, 16)
    index = torch.tensor([[5, 0], [2, 4]])
    padding = padding_from_lengths([9, 4], 9)
    torch.library.opcheck(op, (q, k, index, padding, 0.25, True, "mean", backend))
    torch.library.opcheck(op, (q, k, None, None, 0.25, False, "none", backend))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_linear_attention_opcheck(backend):
    op = torch.ops.leanvision.linear_attention.default
    q, k, v = (randn(1, 2, 40, 16) for _ in range(3))
    torch.library.opcheck(op, (q, k, v, 1e-5, backend))
    grads = [x.clone().requires_grad_() for x in (q, k, v)]
    torch.library.opcheck(op, (*grads, 1e-5, "torch"))

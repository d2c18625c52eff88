"""bf16 through every public op under the Triton interpreter: right answers, never garbage.

The interpreter's bf16 ``tl.dot`` is wrong (``linear_attention`` on bf16 CPU tensors once
differed from the torch path by 9e8 relative, with no error). The ops compute bf16 in fp32 on
the Triton path there; each backend is checked against a float64 oracle built from the same
bf16-rounded inputs, and a direct launcher call must raise instead of returning garbage.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import (
    TOLERANCE,
    explicit_attention,
    explicit_linear_attention,
    explicit_lse,
    explicit_probs,
    padding_from_lengths,
    randn,
    rel_err,
)

from leanvision import kernels
from leanvision.kernels.dispatch import interpreter_enabled

pytestmark = pytest.mark.skipif(
    not interpreter_enabled(), reason="checks the Triton interpreter (TRITON_INTERPRET=1)"
)

BF16 = torch.bfloat16
BACKENDS = ["auto", "triton", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_attention(backend):
    # N > D, so the Triton path runs its kernels (N <= D uses the quadratic torch form).
    q, k, v = (randn(2, 2, 77, 16, dtype=BF16) for _ in range(3))
    out = kernels.linear_attention(q, k, v, backend=backend)
    assert out.dtype == BF16
    assert rel_err(out, explicit_linear_attention(q, k, v)) < TOLERANCE[BF16]


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention(backend):
    q, k, v = (
        randn(2, 4, 33, 32, dtype=BF16),
        randn(2, 2, 40, 32, dtype=BF16),
        randn(2, 2, 40, 32, dtype=BF16),
    )
    padding = padding_from_lengths([40, 25], 40)
    options = {"causal": True, "key_padding_mask": padding}
    out, lse = kernels.attention(q, k, v, return_lse=True, backend=backend, **options)
    assert out.dtype == BF16 and lse.dtype == torch.float32
    assert rel_err(out, explicit_attention(q, k, v, **options)) < TOLERANCE[BF16]
    assert rel_err(lse, explicit_lse(q, k, **options)) < 1e-5  # lse is fp32 from bf16 inputs


@pytest.mark.parametrize("reduce", ["mean", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_scores(backend, reduce):
    q, k = randn(2, 4, 30, 32, dtype=BF16), randn(2, 2, 30, 32, dtype=BF16)
    index = torch.tensor([[29, 3, 17], [0, 29, 11]])
    padding = padding_from_lengths([30, 21], 30)
    scores = kernels.attention_scores(
        q, k, causal=True, query_index=index, key_padding_mask=padding, reduce=reduce,
        backend=backend,
    )  # fmt: skip
    probs = explicit_probs(q, k, causal=True, key_padding_mask=padding)  # (B, Hq, Lq, Lk)
    rows = torch.stack([probs[b][:, index[b]] for b in range(2)])  # (B, Hq, R, Lk)
    want = rows.mean(2)
    want = want.mean(1) if reduce == "mean" else want
    assert scores.dtype == torch.float32
    assert rel_err(scores, want) < 1e-5  # fp32 scores from bf16 inputs: no bf16 rounding


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_attention(backend):
    q = randn(3, 8, 1, 64, dtype=BF16)
    k, v = randn(3, 2, 50, 64, dtype=BF16), randn(3, 2, 50, 64, dtype=BF16)
    lengths = torch.tensor([50, 1, 23])
    out = kernels.decode_attention(q, k, v, lengths, backend=backend)
    want = explicit_attention(q, k, v, key_padding_mask=padding_from_lengths(lengths, 50))
    assert out.dtype == BF16
    assert rel_err(out, want) < TOLERANCE[BF16]


def test_launchers_refuse_bf16_instead_of_returning_garbage():
    from leanvision.kernels.ops.attention.triton import attention_triton
    from leanvision.kernels.ops.decode.triton import decode_attention_triton
    from leanvision.kernels.ops.linear_attention.triton import linear_attention_triton
    from leanvision.kernels.ops.scores.triton import attention_scores_triton

    x = randn(1, 2, 40, 32, dtype=BF16)
    calls = {
        "attention_triton": lambda: attention_triton(x, x, x),
        "attention_scores_triton": lambda: attention_scores_triton(x, x),
        "decode_attention_triton": lambda: decode_attention_triton(
            x[:, :, :1], x, x, torch.tensor([40])
        ),
        "linear_attention_triton": lambda: linear_attention_triton(x, x, x),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"{name} got torch.bfloat16 inputs under the Triton"):
            call()

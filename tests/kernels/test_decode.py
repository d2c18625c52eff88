"""decode_attention: split-KV Triton (interpreted on CPU) and torch paths vs float64 oracles."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import CPU_DTYPES, TOLERANCE, poisoned, randn, rel_err

from leanvision.kernels.ops.attention.ref import attention_ref
from leanvision.kernels.ops.decode.op import decode_attention
from leanvision.kernels.ops.decode.ref import decode_attention_ref
from leanvision.kernels.ops.decode.triton import (
    OVERFLOW_BOUND,
    UNDERFLOW_BOUND,
    choose_splits,
    decode_attention_triton,
)

# (B, Hq, Hkv, Lmax, D): GQA 8:2 and 8:1, MHA; head dims 64, 72, 80, 96, 128.
SHAPES = [
    (3, 8, 2, 150, 64),
    (3, 8, 1, 100, 72),
    (3, 8, 2, 77, 80),
    (3, 4, 4, 60, 96),
    (3, 8, 2, 130, 128),
]


def _id(shape):
    return "B{}-Hq{}-Hkv{}-L{}-D{}".format(*shape)


def _inputs(shape, dtype=torch.float32, q_scale=1.0):
    batch, q_heads, kv_heads, max_length, head_dim = shape
    q = randn(batch, q_heads, 1, head_dim, dtype=dtype, scale=q_scale)
    k = randn(batch, kv_heads, max_length, head_dim, dtype=dtype)
    v = randn(batch, kv_heads, max_length, head_dim, dtype=dtype)
    # Lengths 1 and Lmax in every batch, and one in between.
    lengths = torch.tensor([1, max_length // 2 + 3, max_length][:batch])
    return q, k, v, lengths


def _oracle(q, k, v, lengths, scale=None):
    return decode_attention_ref(q.double(), k.double(), v.double(), lengths, scale)


def _run(q, k, v, lengths, **kwargs):
    # The first pass of a flagged sequence overflows on purpose; numpy (the interpreter) warns.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return decode_attention_triton(
            q, k, v, lengths, out=poisoned(q.shape, q.dtype), return_flags=True, **kwargs
        )


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_triton_matches_float64_reference(shape, dtype):
    q, k, v, lengths = _inputs(shape, dtype)
    out, flags = _run(q, k, v, lengths)
    assert out.dtype == dtype
    assert not flags.any()  # ordinary logits stay inside the unified-max window
    assert rel_err(out, _oracle(q, k, v, lengths)) < TOLERANCE[dtype]


@pytest.mark.parametrize("shape", SHAPES[:3], ids=_id)
def test_equals_sdpa_and_attention_over_each_truncated_cache(shape):
    q, k, v, lengths = _inputs(shape)
    out = decode_attention(q, k, v, lengths, backend="triton")
    group = shape[1] // shape[2]
    for b, length in enumerate(lengths.tolist()):
        q_b = q[b : b + 1].double()
        keys, values = (x[b : b + 1, :, :length].double() for x in (k, v))
        via_attention, _ = attention_ref(q_b, keys, values)
        assert rel_err(out[b : b + 1], via_attention) < TOLERANCE[torch.float32], b
        keys, values = (x.repeat_interleave(group, dim=1) for x in (keys, values))
        via_sdpa = F.scaled_dot_product_attention(q_b, keys, values)
        assert rel_err(out[b : b + 1], via_sdpa) < TOLERANCE[torch.float32], b


@pytest.mark.parametrize("splits", [1, 3, 12])
def test_any_number_of_splits_adds_up(splits):
    # 12 splits of <= 3 key blocks leaves most chunks empty: they must add nothing.
    q, k, v, lengths = _inputs((3, 8, 2, 150, 64))
    out, flags = _run(q, k, v, lengths, splits=splits)
    assert not flags.any()
    assert rel_err(out, _oracle(q, k, v, lengths)) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_huge_logits_are_flagged_and_recomputed_exactly(dtype):
    q, k, v, lengths = _inputs((3, 8, 2, 100, 64), dtype)
    q[1] *= 1000  # logits ~ 1e3: exp(x - unified_max) overflows fp32 in sequence 1 only
    out, flags = _run(q, k, v, lengths)
    assert flags.tolist() == [False, True, False]
    ref = _oracle(q, k, v, lengths)
    # Logits this large make the softmax nearly one-hot: the result is a copy of one v row.
    assert rel_err(out, ref) < TOLERANCE[dtype]
    assert rel_err(out[1], ref[1]) < TOLERANCE[dtype]


def test_unified_max_far_above_the_logits_is_flagged_as_underflow():
    q, k, v, lengths = _inputs((3, 8, 2, 100, 64))
    out, flags = _run(q, k, v, lengths, unified_max=200.0)  # exp(x - 200) ~ 1e-87 -> 0 in fp32
    assert flags.all()
    assert rel_err(out, _oracle(q, k, v, lengths)) < TOLERANCE[torch.float32]


def test_window_edges_follow_the_bounds():
    # Logits known exactly: q = c * e_0 and every k = e_0 + noise in the other dims, scale 1:
    # every logit is c, so the row max is c.
    q = torch.zeros(1, 2, 1, 32)
    k = randn(1, 2, 8, 32)
    v = randn(1, 2, 8, 32)
    k[..., 0] = 1.0
    lengths = torch.tensor([8])
    for logit, expect_flag in [
        (OVERFLOW_BOUND - 1, False),
        (OVERFLOW_BOUND + 1, True),
        (UNDERFLOW_BOUND + 1, False),
        (UNDERFLOW_BOUND - 1, True),
    ]:
        q[..., 0] = logit
        out, flags = _run(q, k, v, lengths, scale=1.0)
        assert flags.tolist() == [expect_flag], logit
        assert rel_err(out, _oracle(q, k, v, lengths, 1.0)) < TOLERANCE[torch.float32], logit


def test_strided_cache_views_and_int32_lengths():
    # A cache preallocated longer than needed and sliced: k/v are non-contiguous views.
    big_k = randn(2, 2, 200, 64)
    big_v = randn(2, 2, 200, 64)
    k, v = big_k[:, :, :90], big_v[:, :, :90]
    q = randn(2, 1, 8, 64).transpose(1, 2)  # (B, 8, 1, D) view
    lengths = torch.tensor([90, 33], dtype=torch.int32)
    assert not k.is_contiguous()
    out = decode_attention(q, k, v, lengths, backend="triton")
    assert out.is_contiguous()
    assert rel_err(out, _oracle(q, k, v, lengths)) < TOLERANCE[torch.float32]


def test_torch_backend_and_custom_scale():
    q, k, v, lengths = _inputs((3, 8, 2, 60, 64))
    for backend in ("torch", "triton"):
        out = decode_attention(q, k, v, lengths, scale=0.3, backend=backend)
        assert rel_err(out, _oracle(q, k, v, lengths, 0.3)) < TOLERANCE[torch.float32], backend


def test_choose_splits_fills_the_gpu_without_tiny_chunks():
    # Few groups, long cache: many splits; many groups: one split; never below 4 blocks/chunk.
    assert choose_splits(8, 131072, 64, sms=132, min_blocks=4) > 32
    assert choose_splits(1024, 131072, 64, sms=132, min_blocks=4) == 1
    assert choose_splits(1, 300, 64, sms=132, min_blocks=4) == 2
    assert choose_splits(1, 1, 64, sms=132, min_blocks=4) == 1


def test_compile_fullgraph_and_opcheck():
    q, k, v, lengths = _inputs((3, 8, 2, 40, 64))
    compiled = torch.compile(
        lambda *args: decode_attention(*args, backend="torch") * 2, fullgraph=True
    )
    assert rel_err(compiled(q, k, v, lengths), 2 * _oracle(q, k, v, lengths)) < 1e-5
    op = torch.ops.leanvision.decode_attention.default
    scale = 1 / math.sqrt(64)
    torch.library.opcheck(op, (q, k, v, lengths, scale, 0.0, "triton"))
    torch.library.opcheck(op, (q, k, v, lengths, scale, 0.0, "torch"))


def _bad(change, **kwargs):
    q, k, v, lengths = _inputs((3, 8, 2, 20, 64))
    decode_attention(*change(q, k, v, lengths), **kwargs)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda q, k, v, n: (q[0], k, v, n), "q must be a 4-D"),
        (lambda q, k, v, n: (q, k[0], v, n), "k_cache must be a 4-D"),
        (lambda q, k, v, n: (q.repeat(1, 1, 2, 1), k, v, n), "q has query length"),
        (lambda q, k, v, n: (q, k.half(), v, n), "k_cache has dtype"),
        (lambda q, k, v, n: (q.long(), k, v, n), "q has dtype"),
        (lambda q, k, v, n: (q, k, v.to("meta"), n), "v_cache is on meta"),
        (lambda q, k, v, n: (q, k, v[:, :1], n), "v_cache has shape"),
        (lambda q, k, v, n: (q[:, :5], k, v, n), "q has 5 heads"),
        (lambda q, k, v, n: (q[..., :16], k[..., :16], v[..., :16], n), "head dims: 32 to 256"),
        (lambda q, k, v, n: (q[:2], k, v, n), "k_cache has batch size"),
        (lambda q, k, v, n: (q, k, v, n.float()), "cache_lengths has dtype"),
        (lambda q, k, v, n: (q, k, v, n[:2]), "cache_lengths has batch size"),
        (lambda q, k, v, n: (q, k, v, n.to("meta")), "cache_lengths is on meta"),
        (lambda q, k, v, n: (q, k, v, n + 20), r"cache_lengths must lie in \[1, Lmax\]"),
        (lambda q, k, v, n: (q, k, v, n - 1), r"cache_lengths must lie in \[1, Lmax\]"),
    ],
    ids=[
        "q-rank", "cache-rank", "q-length", "dtype-mismatch", "int-dtype", "device",
        "cache-mismatch", "head-mismatch", "head-dim", "batch", "lengths-dtype",
        "lengths-batch", "lengths-device", "length-above-Lmax", "length-zero",
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _bad(change)


def test_bad_options():
    same = lambda *args: args  # noqa: E731
    with pytest.raises(ValueError, match="backend='cuda'"):
        _bad(same, backend="cuda")
    with pytest.raises(ValueError, match="scale must be > 0"):
        _bad(same, scale=-1.0)
    with pytest.raises(ValueError, match="unified_max must be finite"):
        _bad(same, unified_max=float("inf"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(4, 32, 8, 4099, 128), (2, 16, 16, 1000, 80)], ids=_id)
def test_gpu_matches_reference(shape, dtype):
    batch, q_heads, kv_heads, max_length, head_dim = shape
    q = randn(batch, q_heads, 1, head_dim, dtype=dtype, device="cuda")
    k, v = (randn(batch, kv_heads, max_length, head_dim, dtype=dtype, device="cuda") for _ in "kv")
    lengths = torch.tensor([1, max_length, 777, 3000][:batch], device="cuda")
    out, flags = decode_attention_triton(
        q, k, v, lengths, out=poisoned(q.shape, dtype, "cuda"), return_flags=True
    )
    assert not flags.any()
    assert rel_err(out, _oracle(q, k, v, lengths)) < TOLERANCE[dtype]
    q[0] *= 1000
    out, flags = decode_attention_triton(q, k, v, lengths, return_flags=True)
    assert flags.tolist()[:2] == [True, False]
    assert rel_err(out, _oracle(q, k, v, lengths)) < TOLERANCE[dtype]


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_follows_new_lengths():
    q = randn(2, 8, 1, 64, dtype=torch.bfloat16, device="cuda")
    k, v = (randn(2, 2, 2048, 64, dtype=torch.bfloat16, device="cuda") for _ in "kv")
    lengths = torch.tensor([5, 2048], device="cuda")
    decode_attention(q, k, v, lengths)  # compile the kernels before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, lengths)
    lengths.copy_(torch.tensor([1500, 9], device="cuda"))
    q.mul_(1000)  # the replay must also take the recompute path, without a host sync
    graph.replay()
    assert rel_err(out, _oracle(q, k, v, lengths)) < TOLERANCE[torch.bfloat16]

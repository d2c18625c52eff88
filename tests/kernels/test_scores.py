"""attention_scores: both paths equal softmax column means computed from the explicit matrix."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import CPU_DTYPES, explicit_probs, padding_from_lengths, randn, rel_err
from torch.utils._python_dispatch import TorchDispatchMode

from leanvision.kernels import attention_scores
from leanvision.kernels.ops.scores import ref as scores_ref
from leanvision.kernels.ops.scores.triton import attention_scores_triton

BACKENDS = ("torch", "triton")
# Scores are float32 sums of probabilities; fp16 inputs only round q and k.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-5}

# (B, Hq, Hkv, Lq, Lk, D, causal)
CASES = [
    (1, 8, 2, 77, 77, 64, True),
    (1, 8, 1, 77, 77, 80, False),
    (1, 2, 2, 1, 50, 96, True),
    (1, 2, 1, 30, 77, 128, True),
    (1, 1, 1, 577, 577, 72, True),
    (1, 1, 1, 1025, 1025, 8, False),
]


def _id(case):
    return "B{}-Hq{}-Hkv{}-Lq{}-Lk{}-D{}-{}".format(*case[:6], "causal" if case[6] else "full")


def explicit_scores(q, k, *, query_index=None, reduce="mean", **kwargs):
    """Column means of the explicit float64 softmax matrix over the chosen rows (and heads)."""
    probs = explicit_probs(q, k, **kwargs)  # (B, H, Lq, Lk)
    if query_index is not None:
        gather = query_index[:, None, :, None].expand(-1, probs.shape[1], -1, probs.shape[3])
        probs = probs.gather(2, gather)
    per_head = probs.mean(2)
    return per_head.mean(1) if reduce == "mean" else per_head


def _qk(batch, q_heads, kv_heads, queries, keys, head_dim, dtype=torch.float32):
    return (
        randn(batch, q_heads, queries, head_dim, dtype=dtype),
        randn(batch, kv_heads, keys, head_dim, dtype=dtype),
    )


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_triton_equals_explicit_softmax_column_means(case, dtype):
    q, k = _qk(*case[:6], dtype=dtype)
    causal = case[6]
    out = attention_scores(q, k, causal=causal, backend="triton")
    assert out.dtype == torch.float32 and out.shape == (q.shape[0], k.shape[2])
    assert rel_err(out, explicit_scores(q, k, causal=causal)) < TOLERANCE[dtype]


@pytest.mark.parametrize("reduce", ["mean", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_chosen_rows_padding_and_gqa(backend, reduce):
    # B=3, a different padding per row, causal rows picked per sequence, GQA 4:2.
    q, k = _qk(3, 4, 2, 40, 40, 64)
    padding = padding_from_lengths([40, 31, 17], 40, left=True)
    index = torch.tensor([[39, 0, 20], [39, 38, 5], [1, 30, 39]])
    kwargs = {"causal": True, "key_padding_mask": padding, "query_index": index}
    out = attention_scores(q, k, reduce=reduce, backend=backend, **kwargs)
    want = explicit_scores(q, k, reduce=reduce, **kwargs)
    assert out.shape == want.shape
    assert rel_err(out, want) < 1e-5
    # Padding keys receive exactly nothing.
    assert torch.equal(out[1][..., :9], torch.zeros_like(out[1][..., :9]))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_small_blocks_span_many_key_and_row_blocks(causal):
    q, k = _qk(2, 2, 1, 40, 50, 40)
    padding = padding_from_lengths([50, 37], 50)
    out = attention_scores_triton(
        q, k, None, causal, None, padding, "none", config={"BLOCK_M": 16, "BLOCK_N": 16}
    )
    want = explicit_scores(q, k, causal=causal, key_padding_mask=padding, reduce="none")
    assert rel_err(out, want) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_sum_to_one_and_none_averages_to_mean(backend):
    q, k = _qk(2, 6, 3, 25, 33, 32)
    mean = attention_scores(q, k, backend=backend)
    per_head = attention_scores(q, k, reduce="none", backend=backend)
    assert per_head.shape == (2, 6, 33)
    assert torch.allclose(mean.sum(-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(per_head.sum(-1), torch.ones(2, 6), atol=1e-5)
    assert torch.allclose(per_head.mean(1), mean, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_sequence_gives_zeros(backend):
    q, k = _qk(2, 2, 2, 6, 12, 16)
    padding = padding_from_lengths([12, 0], 12)
    out = attention_scores(q, k, key_padding_mask=padding, backend=backend)
    assert torch.equal(out[1], torch.zeros(12))
    assert torch.allclose(out[0].sum(), torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_index_is_shared_by_the_batch(backend):
    q, k = _qk(2, 2, 1, 20, 20, 32)
    shared = attention_scores(q, k, query_index=torch.tensor([3, 19]), backend=backend)
    batched = attention_scores(
        q, k, query_index=torch.tensor([[3, 19], [3, 19]], dtype=torch.int32), backend=backend
    )
    assert torch.equal(shared, batched)
    assert rel_err(shared, explicit_scores(q, k, query_index=torch.tensor([[3, 19]] * 2))) < 1e-5


def test_strided_views_and_grad_inputs():
    # q/k straight out of a (B, L, H, D) projection, with autograd on: scores are detached.
    q = randn(2, 30, 4, 32).transpose(1, 2).requires_grad_()
    k = randn(2, 30, 2, 32).transpose(1, 2)
    out = attention_scores(q, k, causal=True, backend="triton")
    assert not out.requires_grad
    assert rel_err(out, explicit_scores(q.detach(), k, causal=True)) < 1e-5


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for item in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return result


def test_torch_path_memory_is_rows_times_keys_not_the_attention_matrix(monkeypatch):
    batch, heads, length = 1, 2, 400
    monkeypatch.setattr(scores_ref, "CHUNK_ELEMENTS", 16 * heads * length)
    q, k = _qk(batch, heads, heads, length, length, 16)
    with _LargestTensor() as recorder:
        out = scores_ref.attention_scores_ref(q, k, causal=True)
    # 16-row chunks: nothing close to the (H, Lq, Lk) matrix is ever allocated.
    assert recorder.largest <= 16 * heads * length
    assert rel_err(out, explicit_scores(q, k, causal=True)) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_index": torch.tensor([[0.5]])}, "query_index has dtype"),
        ({"query_index": torch.zeros(3, 2, dtype=torch.long)}, r"query_index must have shape"),
        ({"query_index": torch.zeros(2, 0, dtype=torch.long)}, "selects 0 rows"),
        ({"query_index": [0, 1]}, "query_index must be a torch.Tensor"),
        ({"reduce": "sum"}, "reduce='sum' is not allowed"),
        ({"key_padding_mask": torch.zeros(2, 8, dtype=torch.bool)}, "key_padding_mask has shape"),
        ({"scale": 0.0}, "scale must be > 0"),
        ({"backend": "gpu"}, "backend='gpu'"),
    ],
    ids=[
        "index-dtype",
        "index-batch",
        "index-empty",
        "index-type",
        "reduce",
        "mask",
        "scale",
        "backend",
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    q, k = _qk(2, 4, 2, 5, 9, 16)
    with pytest.raises((ValueError, TypeError), match=match):
        attention_scores(q, k, **kwargs)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "match"),
    [
        ((2, 4, 5), (2, 2, 9, 16), "q must be a 4-D"),
        ((2, 3, 5, 16), (2, 2, 9, 16), "not a multiple of the 2 heads of k"),
        ((2, 4, 5, 16), (1, 2, 9, 16), "k has batch size"),
    ],
    ids=["rank", "heads", "batch"],
)
def test_bad_shapes_name_the_argument(q_shape, k_shape, match):
    with pytest.raises(ValueError, match=match):
        attention_scores(torch.zeros(q_shape), torch.zeros(k_shape))


def test_dtype_mismatch_names_k():
    q, k = _qk(1, 2, 2, 4, 4, 16)
    with pytest.raises(TypeError, match="k has dtype torch.float16"):
        attention_scores(q, k.half())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("rows", [1, 64, 1000])
def test_gpu_matches_reference(dtype, rows):
    q, k = (x.cuda() for x in _qk(2, 16, 4, 1000, 1000, 128, dtype=dtype))
    index = torch.arange(1000 - rows, 1000, device="cuda").expand(2, -1)
    padding = padding_from_lengths([1000, 700], 1000, left=True).cuda()
    kwargs = {"causal": True, "query_index": index, "key_padding_mask": padding}
    out = attention_scores(q, k, backend="triton", **kwargs)
    want = scores_ref.attention_scores_ref(q.double(), k.double(), None, **kwargs)
    assert rel_err(out, want) < 1e-4

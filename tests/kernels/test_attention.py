"""attention: Triton (interpreted on CPU) and torch paths against an explicit float64 softmax."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from kernel_helpers import (
    CPU_DTYPES,
    TOLERANCE,
    explicit_attention,
    explicit_probs,
    padding_from_lengths,
    poisoned,
    randn,
    rel_err,
)

from leanvision.kernels import attention, configs
from leanvision.kernels.ops.attention import triton as attention_triton_module
from leanvision.kernels.ops.attention.ref import attention_ref
from leanvision.kernels.ops.attention.triton import attention_triton

# (B, Hq, Hkv, Lq, Lk, D, causal): GQA 8:2 and 8:1, Lq of 1/77/577/1025, D of 64..128,
# Lq != Lk both ways (bottom-right causal). The long ones keep B*H and D small: the
# interpreter's cost grows with the number of blocks.
CASES = [
    (2, 8, 2, 77, 77, 64, True),
    (1, 8, 1, 77, 77, 72, False),
    (1, 2, 1, 1, 77, 80, True),
    (1, 2, 2, 33, 77, 96, True),
    (1, 2, 2, 77, 33, 128, True),
    (1, 1, 1, 577, 577, 64, True),
    (1, 1, 1, 1025, 1025, 32, False),
    (1, 2, 1, 20, 24, 256, False),
]


def _id(case):
    return "B{}-Hq{}-Hkv{}-Lq{}-Lk{}-D{}-{}".format(*case[:6], "causal" if case[6] else "full")


def _inputs(batch, q_heads, kv_heads, queries, keys, head_dim, dtype=torch.float32):
    return (
        randn(batch, q_heads, queries, head_dim, dtype=dtype),
        randn(batch, kv_heads, keys, head_dim, dtype=dtype),
        randn(batch, kv_heads, keys, head_dim, dtype=dtype),
    )


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_triton_matches_float64_reference(case, dtype):
    q, k, v = _inputs(*case[:6], dtype=dtype)
    causal = case[6]
    out, lse = attention_triton(
        q,
        k,
        v,
        causal,
        out=poisoned(q.shape, dtype),
        lse=poisoned(q.shape[:-1], torch.float32),
    )
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert rel_err(out, explicit_attention(q, k, v, causal=causal)) < TOLERANCE[dtype]
    # lse is finite wherever a row sees a key; Lq > Lk causal leaves the first rows empty.
    ref_out, ref_lse = attention_ref(q.double(), k.double(), v.double(), causal)
    seen = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), seen)
    assert (lse[seen].double() - ref_lse[seen]).abs().max() < 1e-4


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [(2, 4, 2, 50, 70, 80), (1, 2, 1, 70, 45, 64)], ids=str)
def test_small_blocks_exercise_online_softmax(shape, causal):
    # 16x16 blocks: many key blocks per row (rescaling), blocks straddling the diagonal, and
    # query blocks that see no key at all when Lq > Lk.
    q, k, v = _inputs(*shape)
    padding = padding_from_lengths([shape[4] - 7 * b for b in range(shape[0])], shape[4])
    out, _ = attention_triton(q, k, v, causal, None, padding, config={"BLOCK_M": 16, "BLOCK_N": 16})
    want = explicit_attention(q, k, v, causal=causal, key_padding_mask=padding)
    assert rel_err(out, want) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_padding_per_row_and_fully_masked_row(backend, dtype):
    # B=3 with a different padding per row; the last row has no key at all (left padding).
    q, k, v = _inputs(3, 4, 2, 9, 40, 64, dtype=dtype)
    padding = padding_from_lengths([40, 23, 0], 40, left=True)
    out, lse = attention(q, k, v, key_padding_mask=padding, return_lse=True, backend=backend)
    want = explicit_attention(q, k, v, key_padding_mask=padding)
    assert rel_err(out, want) < TOLERANCE[dtype]
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert torch.isneginf(lse[2]).all() and torch.isfinite(lse[:2]).all()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lse_is_logsumexp_of_scaled_logits(backend):
    q, k, v = _inputs(2, 4, 2, 30, 50, 64)
    _, lse = attention(q, k, v, scale=0.3, return_lse=True, backend=backend)
    kk = k.double().repeat_interleave(2, dim=1)
    want = torch.logsumexp((q.double() @ kk.transpose(-1, -2)) * 0.3, dim=-1)
    assert (lse.double() - want).abs().max() < 1e-5


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_torch_reference_agrees_with_sdpa(causal):
    """The oracle itself, checked against torch's SDPA (which aligns causal top-left, so the
    check uses Lq == Lk) on GQA inputs in float64."""
    q, k, v = (x.double() for x in _inputs(2, 8, 2, 37, 37, 72))
    out, _ = attention_ref(q, k, v, causal)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), is_causal=causal
    )
    assert rel_err(out, want) < 1e-12


def test_causal_is_bottom_right_aligned():
    # The last query row sees every key, the first sees Lk - Lq + 1 of them.
    q, k, v = _inputs(1, 2, 2, 5, 12, 32)
    for backend in ("torch", "triton"):
        out = attention(q, k, v, causal=True, backend=backend)
        full = attention(q[:, :, -1:], k, v, backend=backend)
        first = attention(q[:, :, :1], k[:, :, :8], v[:, :, :8], backend=backend)
        assert rel_err(out[:, :, -1:], full) < 1e-5, backend
        assert rel_err(out[:, :, :1], first) < 1e-5, backend


def test_strided_views_like_a_fused_qkv_projection():
    # (B, L, 3, H, D) split and transposed: none of q, k, v is contiguous.
    qkv = randn(2, 45, 3, 4, 80)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    out = attention(q, k, v, causal=True, backend="triton")
    assert rel_err(out, explicit_attention(q, k, v, causal=True)) < TOLERANCE[torch.float32]


def test_broadcast_padding_mask_with_zero_batch_stride():
    q, k, v = _inputs(3, 2, 2, 6, 20, 32)
    padding = padding_from_lengths([13], 20).expand(3, 20)
    out = attention(q, k, v, key_padding_mask=padding, backend="triton")
    want = explicit_attention(q, k, v, key_padding_mask=padding.contiguous())
    assert rel_err(out, want) < TOLERANCE[torch.float32]


def test_backward_matches_explicit_autograd():
    q, k, v = (x.requires_grad_() for x in _inputs(1, 4, 2, 12, 15, 32))
    padding = padding_from_lengths([11], 15)
    out, lse = attention(q, k, v, causal=True, key_padding_mask=padding, return_lse=True)
    (out.square().sum() + lse[..., -1].sum()).backward()
    got = [x.grad.clone() for x in (q, k, v)]
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = explicit_attention(q64, k64, v64, causal=True, key_padding_mask=padding)
    kk = k64.repeat_interleave(2, 1)
    logits = (q64 @ kk.transpose(-1, -2)) * 32**-0.5
    allowed = explicit_probs(q64, k64, causal=True, key_padding_mask=padding) > 0
    last_lse = torch.logsumexp(logits.masked_fill(~allowed, float("-inf"))[..., -1, :], -1)
    (want.square().sum() + last_lse.sum()).backward()
    for g, x in zip(got, (q64, k64, v64), strict=True):
        assert rel_err(g, x.grad) < 1e-5


def test_environment_override_forces_the_torch_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Triton path ran despite LEANVISION_KERNELS=torch")

    monkeypatch.setattr(attention_triton_module, "attention_triton", refuse)
    monkeypatch.setenv("LEANVISION_KERNELS", "torch")
    q, k, v = _inputs(1, 2, 2, 8, 8, 32)
    assert rel_err(attention(q, k, v), explicit_attention(q, k, v)) < 1e-5
    monkeypatch.setenv("LEANVISION_KERNELS", "triton")
    with pytest.raises(AssertionError, match="Triton path ran"):
        attention(q, k, v)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda q, k, v: ((q[0], k, v), {}), "q must be a 4-D"),
        (lambda q, k, v: ((q, k.half(), v), {}), "k has dtype"),
        (lambda q, k, v: ((q.long(), k, v), {}), "q has dtype"),
        (lambda q, k, v: ((q, k, v.half()), {}), "v has dtype"),
        (lambda q, k, v: ((q[:, :3], k, v), {}), "not a multiple of the 2 heads of k"),
        (lambda q, k, v: ((q, k, v[:, :, :5]), {}), "v has shape"),
        (lambda q, k, v: ((q, k[:1], v[:1]), {}), "k has batch size"),
        (lambda q, k, v: ((q, k[..., :16], v), {}), "k has head dim"),
        (lambda q, k, v: ((q, k, v.to("meta")), {}), "v is on meta"),
        (
            lambda q, k, v: ((q.new_zeros(2, 4, 3, 300), k.new_zeros(2, 2, 9, 300), v), {}),
            "allowed head dims: 1 to 256",
        ),
        (lambda q, k, v: ((q, k.numpy(), v), {}), "k must be a torch.Tensor"),
        (lambda q, k, v: ((q, k, v), {"key_padding_mask": torch.ones(2, 9)}), "key_padding_mask"),
        (
            lambda q, k, v: ((q, k, v), {"key_padding_mask": torch.ones(2, 5, dtype=torch.bool)}),
            r"key_padding_mask has shape \(2, 5\)",
        ),
        (lambda q, k, v: ((q, k, v), {"scale": -1.0}), "scale must be > 0"),
        (lambda q, k, v: ((q, k, v), {"causal": 1}), "causal must be a bool"),
        (lambda q, k, v: ((q, k, v), {"backend": "cuda"}), "backend='cuda'"),
    ],
    ids=[
        "rank", "k-dtype", "int-dtype", "v-dtype", "heads", "v-shape", "batch", "head-dim",
        "device", "head-dim-range", "type", "mask-dtype", "mask-shape", "scale", "causal",
        "backend",
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(change, match):
    q, k, v = _inputs(2, 4, 2, 3, 9, 32)
    args, kwargs = change(q, k, v)
    with pytest.raises((ValueError, TypeError), match=match):
        attention(*args, **kwargs)


def test_interpreter_uses_a_single_config():
    device = torch.device("cpu")
    config = configs.attention_config(device, torch.float16, 4096, 128, True)
    assert set(config) == {"BLOCK_M", "BLOCK_N"}
    assert configs.attention_config(device, torch.float32, 3, 64, False)["BLOCK_M"] == 16


def _tune_script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "tune_attention.py"
    spec = importlib.util.spec_from_file_location("tune_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_script_help_runs_without_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _tune_script().parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--head-dims" in capsys.readouterr().out


def test_tuned_json_is_loaded_for_the_current_gpu(tmp_path, monkeypatch):
    """A file written by benchmarks/tune_attention.py overrides the heuristic on its GPU."""
    write_tuned = _tune_script().write_tuned
    monkeypatch.setenv("LEANVISION_TUNED_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU 80GB")
    configs.clear_cache()
    cuda = torch.device("cuda")
    heuristic = configs.attention_config(cuda, torch.bfloat16, 4096, 128, True)
    tuned = {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 4}
    generic = {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 2, "num_stages": 1}
    path = write_tuned(
        "NVIDIA Test GPU 80GB",
        {
            "attention": {
                configs.attention_key(128, torch.bfloat16, True, 4096): tuned,
                configs.attention_key(128, torch.bfloat16, False, None): generic,
            }
        },
    )
    assert path == tmp_path / "nvidia-test-gpu-80gb.json"
    assert json.loads(path.read_text())["device"] == "NVIDIA Test GPU 80GB"
    assert configs.attention_config(cuda, torch.bfloat16, 4000, 128, True) == tuned
    assert configs.attention_config(cuda, torch.bfloat16, 8000, 128, False) == generic
    # No entry for this shape: the heuristic; short queries still shrink BLOCK_M.
    assert configs.attention_config(cuda, torch.bfloat16, 4096, 64, True)["BLOCK_M"] == 128
    assert configs.attention_config(cuda, torch.bfloat16, 5, 128, True)["BLOCK_M"] == 16
    # A corrupt file never breaks a call: the heuristic comes back.
    path.write_text("{not json")
    configs.clear_cache()
    assert configs.attention_config(cuda, torch.bfloat16, 4096, 128, True) == heuristic
    configs.clear_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 256])
def test_gpu_matches_reference(dtype, causal, head_dim):
    q, k, v = (x.cuda() for x in _inputs(2, 8, 2, 1000, 1100, head_dim, dtype=dtype))
    padding = padding_from_lengths([1100, 900], 1100).cuda()
    out, lse = attention_triton(
        q, k, v, causal, None, padding,
        out=poisoned(q.shape, dtype, "cuda"), lse=poisoned(q.shape[:-1], torch.float32, "cuda"),
    )  # fmt: skip
    ref_out, ref_lse = attention_ref(q.double(), k.double(), v.double(), causal, None, padding)
    assert rel_err(out, ref_out) < TOLERANCE[dtype]
    assert (lse.double() - ref_lse).abs().max() < 1e-3

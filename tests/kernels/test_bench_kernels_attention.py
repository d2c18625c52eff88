"""The pure helpers of benchmarks/kernels_attention.py (FLOP and byte counts, table, shapes)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("kernels_attention")


@pytest.mark.parametrize(("q_len", "k_len"), [(1, 1), (5, 5), (3, 8), (8, 3), (1, 9), (77, 77)])
def test_causal_pairs_counts_the_bottom_right_mask(bench, q_len, k_len):
    # FlashAttention's bottom-right causal mask: query i sees keys j <= i + (Lk - Lq).
    allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(diagonal=k_len - q_len)
    assert bench.causal_pairs(q_len, k_len) == int(allowed.sum())


def test_attention_flops_are_two_matmuls_over_allowed_pairs(bench):
    batch, heads, q_len, k_len, head_dim = 2, 3, 6, 10, 64
    # q @ k^T and p @ v each cost 2 * D FLOPs (multiply + add) per allowed (query, key) pair.
    full = bench.attention_flops(batch, heads, q_len, k_len, head_dim, causal=False)
    assert full == 2 * (2 * batch * heads * q_len * k_len * head_dim)
    causal = bench.attention_flops(batch, heads, q_len, k_len, head_dim, causal=True)
    assert causal == 4 * batch * heads * head_dim * bench.causal_pairs(q_len, k_len)
    square = bench.attention_flops(1, 1, 100, 100, 8, causal=True)
    assert square == 4 * 8 * 100 * 101 // 2  # roughly half of the full square


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_decode_bytes_equal_the_tensors_a_step_touches(bench, dtype):
    batch, q_heads, kv_heads, k_len, head_dim = 3, 8, 2, 50, 128
    q = torch.empty(batch, q_heads, 1, head_dim, dtype=dtype)
    k = v = torch.empty(batch, kv_heads, k_len, head_dim, dtype=dtype)
    touched = sum(x.numel() * x.element_size() for x in (q, k, v, torch.empty_like(q)))
    got = bench.decode_bytes(batch, q_heads, kv_heads, k_len, head_dim, q.element_size())
    assert got == touched
    assert bench.copy_bytes(1000, 2) == 2 * 1000 * 2  # read once, written once


def test_efficientvit_b1_shapes_match_timm_lite_mla_calls(bench):
    timm = pytest.importorskip("timm")
    model = timm.create_model("efficientvit_b1", pretrained=False).eval()
    seen = []
    for module in model.modules():
        if hasattr(module, "_attn") and hasattr(module, "kernel_func"):

            def record(q, k, v, _original=module._attn):
                seen.append(tuple(q.shape))
                return _original(q, k, v)

            module._attn = record  # instance attribute on a throwaway model
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 128))
    assert sorted(set(seen)) == sorted(bench.efficientvit_b1_linear_attention_shapes(64, 128))


def test_add_speedups_and_format_table(bench):
    rows = [
        {"section": "decode", "case": "B1", "impl": "sdpa", "ms": 3.0, "metric": "GB/s"},
        {"section": "decode", "case": "B1", "impl": "leanvision", "ms": 1.5, "value": 2000.0},
        {"section": "decode", "case": "B8", "impl": "leanvision", "ms": 1.0},
        {"section": "decode", "case": "B8", "impl": "broken (n/a: RuntimeError)"},
    ]
    bench.add_speedups(rows, {"decode": "sdpa"})
    assert [r["vs base"] for r in rows] == [1.0, 2.0, None, None]
    lines = bench.format_table(rows).splitlines()
    assert lines[0].split() == list(bench.COLUMNS[:-1]) + ["vs", "base"]
    assert len(lines) == 2 + len(rows)
    assert lines[2].split()[:4] == ["decode", "B1", "sdpa", "3"]
    assert "2000" in lines[2 + 1] and lines[2 + 1].split()[-1] == "2"
    assert lines[2 + 3].split()[-3:] == ["-", "-", "-"]  # missing cells print as '-'
    # Every row's cells start under their column header.
    start = lines[0].index("impl")
    assert all(line[start:].startswith(r["impl"]) for line, r in zip(lines[2:], rows, strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_main_without_cuda_says_so_and_exits_zero(bench, capsys, tmp_path):
    assert bench.main(["--out", str(tmp_path / "x.txt")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "x.txt").exists()

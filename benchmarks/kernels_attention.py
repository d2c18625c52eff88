"""GPU benchmark of the attention-family kernels against SDPA and the torch references.

Prints one table (bf16 by default) and writes it to ``benchmarks/results/<device>.txt`` plus
the rows as ``<device>.json`` (or to ``--out``):

* prefill ``attention``: forward TFLOP/s at B*L ~ 16k tokens, L in {1k, 4k, 16k}, D in {64,
  128}, causal and not, vs SDPA's flash and cuDNN backends and the torch reference;
* ``attention_scores``: time vs the softmax materialised in torch, and as a share of one
  prefill attention call at the same shape;
* ``decode_attention``: B in {1, 8, 32}, Lk in {4k, 32k, 128k}, GB/s and the fraction of the
  measured device-to-device copy bandwidth, vs SDPA and the torch reference;
* ``linear_attention`` at EfficientViT-B1's Lite-MLA shapes for a 1024x2048 image.

Times: CUDA events around each call, after warm-up; the median of the repeats. Without a CUDA
device the script says so and exits 0. Run: ``python benchmarks/kernels_attention.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).with_name("results")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODEL_WIDTH = 2048  # prefill heads = MODEL_WIDTH / D
TOKENS = 16384  # prefill batch * length
DECODE_HEADS, DECODE_KV_HEADS, DECODE_HEAD_DIM = 32, 8, 128  # Llama-3-8B-like GQA 4:1
REFERENCE_MAX_BYTES = 4 << 30  # the fp32 torch references copy their inputs: skip larger ones
COLUMNS = ("section", "case", "impl", "ms", "metric", "value", "vs base")

# --------------------------------------------------------------------------- pure helpers


def causal_pairs(q_len: int, k_len: int) -> int:
    """(query, key) pairs a bottom-right-aligned causal mask allows.

    Query i sees keys j <= i + (k_len - q_len), as FlashAttention aligns it.

    >>> causal_pairs(4, 4), causal_pairs(2, 5), causal_pairs(5, 2)
    (10, 9, 3)
    """
    offset = k_len - q_len
    return sum(min(k_len, max(0, i + offset + 1)) for i in range(q_len))


def attention_flops(
    batch: int, heads: int, q_len: int, k_len: int, head_dim: int, causal: bool
) -> int:
    """Forward FLOPs of softmax attention: 2 matmuls of 2*D FLOPs per allowed (q, k) pair.

    >>> attention_flops(1, 1, 2, 3, 4, causal=False)
    96
    """
    pairs = causal_pairs(q_len, k_len) if causal else q_len * k_len
    return 4 * batch * heads * head_dim * pairs


def decode_bytes(
    batch: int, q_heads: int, kv_heads: int, k_len: int, head_dim: int, element_size: int
) -> int:
    """Bytes one decode step must move: the K and V caches read once, q read, out written.

    >>> decode_bytes(1, 2, 1, 10, 4, 2)
    192
    """
    cache = 2 * batch * kv_heads * k_len * head_dim
    query_and_out = 2 * batch * q_heads * head_dim
    return (cache + query_and_out) * element_size


def copy_bytes(numel: int, element_size: int) -> int:
    """Bytes a device-to-device ``copy_`` moves: every element read once and written once.

    >>> copy_bytes(1024, 2)
    4096
    """
    return 2 * numel * element_size


def efficientvit_b1_linear_attention_shapes(
    height: int, width: int, batch: int = 1
) -> list[tuple[int, int, int, int]]:
    """(B, H, N, D) of the Lite-MLA calls in EfficientViT-B1 for one input size.

    B1 has widths (16, 32, 64, 128, 256) and head dim 16; its stages 3 and 4 (strides 16 and
    32) use Lite-MLA, whose multi-scale branch (one 5x5 aggregation) doubles the heads.

    >>> efficientvit_b1_linear_attention_shapes(1024, 2048)
    [(1, 16, 8192, 16), (1, 32, 2048, 16)]
    """
    head_dim, scales = 16, 2
    shapes = []
    for channels, stride in ((128, 16), (256, 32)):
        tokens = math.ceil(height / stride) * math.ceil(width / stride)
        shapes.append((batch, scales * channels // head_dim, tokens, head_dim))
    return shapes


def add_speedups(rows: list[dict], baseline: dict[str, str]) -> list[dict]:
    """Fill ``vs base`` = baseline ms / row ms within each (section, case).

    ``baseline`` maps a section to the impl that is its baseline; rows without a time or
    without a baseline in their case get None.

    >>> rows = [{"section": "s", "case": "c", "impl": "a", "ms": 2.0},
    ...         {"section": "s", "case": "c", "impl": "b", "ms": 1.0}]
    >>> [r["vs base"] for r in add_speedups(rows, {"s": "a"})]
    [1.0, 2.0]
    """
    base_ms = {
        (r["section"], r["case"]): r["ms"]
        for r in rows
        if baseline.get(r["section"]) == r["impl"] and r.get("ms")
    }
    for r in rows:
        base = base_ms.get((r["section"], r["case"]))
        r["vs base"] = base / r["ms"] if base and r.get("ms") else None
    return rows


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def format_table(rows: Iterable[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """Left-aligned text table of ``rows`` (dicts) under ``columns``; missing cells are '-'.

    >>> print(format_table([{"a": 1.5, "b": "x"}], ("a", "b")))
    a    b
    ---  -
    1.5  x
    """
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
              for line in cells]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- GPU timing


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``fn()`` measured with CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _measure(rows, section, case, impl, fn, metric=None, amount=None, per=1e12):
    """Time ``fn`` and append a row; ``amount / seconds / per`` is the metric value."""
    row = {"section": section, "case": case, "impl": impl, "metric": metric}
    try:
        ms = cuda_time_ms(fn)
        row["ms"] = ms
        row["value"] = amount / (ms * 1e-3) / per if amount else None
    except Exception as error:  # an SDPA backend can refuse a shape: say so, keep going
        row["impl"] = f"{impl} (n/a: {type(error).__name__})"
    finally:
        torch.cuda.empty_cache()
    rows.append(row)
    return row


def sdpa(q, k, v, causal=False, backend_name: str | None = None):
    """``scaled_dot_product_attention``, restricted to one SDPA backend when one is named."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    context = (
        sdpa_kernel(getattr(SDPBackend, backend_name)) if backend_name else contextlib.nullcontext()
    )
    with context:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1]
        )


def materialised_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The (B, Lk) attention each key receives, via the full softmax matrix in torch."""
    probs = torch.softmax((q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5, dim=-1)
    return probs.mean(dim=(1, 2))


def _leanvision(name: str):
    """A leanvision kernel by name, or None when it is not importable in this checkout."""
    try:
        import leanvision.kernels as kernels

        return getattr(kernels, name, None)
    except ImportError:
        return None


def bench_prefill(rows: list[dict], dtype: torch.dtype) -> None:
    from leanvision.kernels.ops.attention.ref import attention_ref

    attention = _leanvision("attention")
    for length in (1024, 4096, 16384):
        for head_dim in (64, 128):
            for causal in (False, True):
                batch, heads = TOKENS // length, MODEL_WIDTH // head_dim
                q, k, v = (
                    torch.randn(batch, heads, length, head_dim, device="cuda", dtype=dtype)
                    for _ in range(3)
                )
                case = f"B{batch} L{length} D{head_dim}" + (" causal" if causal else "")
                flops = attention_flops(batch, heads, length, length, head_dim, causal)
                impls = {
                    "sdpa-flash": functools.partial(sdpa, q, k, v, causal, "FLASH_ATTENTION"),
                    "sdpa-cudnn": functools.partial(sdpa, q, k, v, causal, "CUDNN_ATTENTION"),
                }
                if length <= 4096:  # the chunked fp32 reference takes minutes at 16k
                    impls["torch-ref"] = functools.partial(attention_ref, q, k, v, causal=causal)
                if attention is not None:
                    impls["leanvision"] = functools.partial(attention, q, k, v, causal=causal)
                for impl, fn in impls.items():
                    _measure(rows, "prefill", case, impl, fn, "TFLOP/s", flops)
                del q, k, v, impls


def bench_scores(rows: list[dict], dtype: torch.dtype) -> None:
    attention_scores = _leanvision("attention_scores")
    attention = _leanvision("attention")
    heads, head_dim = MODEL_WIDTH // 128, 128
    for length in (1024, 4096):
        q, k = (
            torch.randn(1, heads, length, head_dim, device="cuda", dtype=dtype) for _ in range(2)
        )
        case = f"B1 H{heads} L{length} D{head_dim}"
        _measure(
            rows, "scores", case, "torch-materialised", functools.partial(materialised_scores, q, k)
        )
        if attention_scores is None:
            continue
        row = _measure(
            rows, "scores", case, "leanvision", functools.partial(attention_scores, q, k)
        )
        # The target: scores cost <= 20% of one prefill attention call at this shape.
        if attention is not None:
            prefill_fn, prefill_name = (
                functools.partial(attention, q, k, k),
                "leanvision attention (1 call)",
            )
        else:
            prefill_fn = functools.partial(sdpa, q, k, k, False, "FLASH_ATTENTION")
            prefill_name = "sdpa-flash (1 prefill call)"
        prefill = _measure(rows, "scores", case, prefill_name, prefill_fn)
        if row.get("ms") and prefill.get("ms"):
            row["metric"], row["value"] = "x prefill", row["ms"] / prefill["ms"]


def measure_copy_bandwidth(numel: int = 1 << 29) -> float:
    """Device-to-device copy bandwidth in GB/s (torch ``copy_`` of a 1 GiB bf16 buffer)."""
    source = torch.empty(numel, device="cuda", dtype=torch.bfloat16)
    target = torch.empty_like(source)
    ms = cuda_time_ms(functools.partial(target.copy_, source))
    del source, target
    torch.cuda.empty_cache()
    return copy_bytes(numel, 2) / (ms * 1e-3) / 1e9


def bench_decode(rows: list[dict], dtype: torch.dtype, copy_gbs: float) -> None:
    from leanvision.kernels.ops.decode.op import decode_attention
    from leanvision.kernels.ops.decode.ref import decode_attention_ref

    element = torch.empty((), dtype=dtype).element_size()
    for batch in (1, 8, 32):
        for length in (4096, 32768, 131072):
            shape = (batch, DECODE_KV_HEADS, length, DECODE_HEAD_DIM)
            q = torch.randn(batch, DECODE_HEADS, 1, DECODE_HEAD_DIM, device="cuda", dtype=dtype)
            k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(2))
            lengths = torch.full((batch,), length, device="cuda", dtype=torch.int32)
            moved = decode_bytes(
                batch, DECODE_HEADS, DECODE_KV_HEADS, length, DECODE_HEAD_DIM, element
            )
            case = f"B{batch} Lk{length}"
            impls = {
                "sdpa": functools.partial(sdpa, q, k, v),
                "sdpa-flash": functools.partial(sdpa, q, k, v, False, "FLASH_ATTENTION"),
                "sdpa-cudnn": functools.partial(sdpa, q, k, v, False, "CUDNN_ATTENTION"),
                "leanvision": functools.partial(decode_attention, q, k, v, lengths),
            }
            if moved <= REFERENCE_MAX_BYTES:
                impls["torch-ref"] = functools.partial(decode_attention_ref, q, k, v, lengths)
            for impl, fn in impls.items():
                row = _measure(rows, "decode", case, impl, fn, "GB/s", moved, per=1e9)
                if row.get("value"):
                    rows.append({
                        "section": "decode", "case": case, "impl": f"{impl} / copy bw",
                        "metric": "fraction", "value": row["value"] / copy_gbs,
                    })  # fmt: skip
            del q, k, v, impls


def bench_linear(rows: list[dict], dtype: torch.dtype) -> None:
    from leanvision.kernels.ops.linear_attention.op import linear_attention
    from leanvision.kernels.ops.linear_attention.ref import linear_attention_ref

    for shape in efficientvit_b1_linear_attention_shapes(1024, 2048):
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
        case = "B{} H{} N{} D{}".format(*shape)
        moved = 4 * q.numel() * q.element_size()  # q, k, v read, out written
        for impl, fn in (("torch-ref", linear_attention_ref), ("leanvision", linear_attention)):
            _measure(
                rows, "linear", case, impl, functools.partial(fn, q, k, v), "GB/s", moved, per=1e9
            )


BASELINES = {"prefill": "sdpa-flash", "scores": "torch-materialised", "decode": "sdpa",
             "linear": "torch-ref"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--out", type=Path, default=None,
                        help="text file for the table (a .json with the rows goes beside it); "
                             "default benchmarks/results/<device>.txt")  # fmt: skip
    parser.add_argument("--sections", default="prefill,scores,decode,linear",
                        help="comma-separated subset to run")  # fmt: skip
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels_attention: no CUDA device found; nothing was measured. "
              "Run this script on a GPU machine.")  # fmt: skip
        return 0
    from leanvision.kernels.configs import device_slug
    from leanvision.kernels.dispatch import kernel_mode

    dtype, sections = DTYPES[args.dtype], set(args.sections.split(","))
    device = torch.cuda.get_device_name()
    copy_gbs = measure_copy_bandwidth()
    rows: list[dict] = []
    if "prefill" in sections:
        bench_prefill(rows, dtype)
    if "scores" in sections:
        bench_scores(rows, dtype)
    if "decode" in sections:
        bench_decode(rows, dtype, copy_gbs)
    if "linear" in sections:
        bench_linear(rows, dtype)
    add_speedups(rows, BASELINES)
    header = (
        f"# {device}, {args.dtype}, torch {torch.__version__}, {kernel_mode()}, "
        f"copy bandwidth {copy_gbs:.0f} GB/s; 'vs base' = baseline ms / ms, baselines: "
        + ", ".join(f"{s}={b}" for s, b in BASELINES.items())
    )
    text = header + "\n" + format_table(rows)
    print(text)
    out = args.out or RESULTS_DIR / f"{device_slug(device)}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    meta = {"device": device, "dtype": args.dtype, "torch": torch.__version__,
            "copy_gbs": copy_gbs, "rows": rows}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

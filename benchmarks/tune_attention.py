"""Tune the prefill attention and attention-scores kernels on this GPU and save the winners.

Sweeps block sizes, warps and stages for the issue's prefill shapes (B*L ~ 16k tokens,
L in {1k, 4k, 16k}, D in {64, 128}, causal and not), times each candidate with CUDA events,
checks the winner against SDPA, and writes ``leanvision/kernels/tuned/<gpu-name>.json`` (or
into ``$LEANVISION_TUNED_DIR``), which ``leanvision.kernels.configs`` loads at run time.

    python benchmarks/tune_attention.py                 # full sweep, bf16
    python benchmarks/tune_attention.py --quick         # fewer candidates and shapes
    python benchmarks/tune_attention.py --lengths 4096 --head-dims 128 --dtype float16
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from leanvision.kernels import configs  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
MODEL_WIDTH = 2048  # heads = width // D, a typical LLM/ViT width
SCORE_ROWS = 64  # query rows per sequence when tuning attention_scores (FastV-like)


def write_tuned(
    device_name: str, found: dict[str, dict[str, dict]], triton_version: str = ""
) -> Path:
    """Merge ``found`` ({op: {shape key: config}}) into the tuning file of ``device_name``.

    Entries of other ops and shapes already in the file are kept. Returns the file's path.

    >>> write_tuned("My GPU", {"attention": {"D64-bfloat16-full": {"BLOCK_M": 64}}})  # doctest: +SKIP
    """
    path = configs.tuned_path(device_name)
    saved: dict = {}
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get("configs", {})
        except ValueError:
            saved = {}  # a corrupt file is replaced
    for op, entries in found.items():
        saved.setdefault(op, {}).update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"device": device_name, "triton": triton_version, "configs": saved}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    configs.clear_cache()
    return path


def time_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream (CUDA events)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def attention_candidates(head_dim: int, quick: bool) -> list[dict]:
    """Launch configs to try for one head dim (big tiles are dropped where they cannot fit)."""
    block_ms = (64, 128)
    block_ns = (32, 64) if quick else (32, 64, 128)
    warps = (4, 8)
    stages = (2, 3) if quick else (2, 3, 4)
    out = []
    for block_m, block_n, num_warps, num_stages in itertools.product(
        block_ms, block_ns, warps, stages
    ):
        if head_dim > 128 and block_m * block_n > 64 * 64:
            continue  # D=256 tiles beyond 64x64 spill out of shared memory
        out.append(
            {
                "BLOCK_M": block_m,
                "BLOCK_N": block_n,
                "num_warps": num_warps,
                "num_stages": num_stages,
            }
        )
    return out


def scores_candidates(quick: bool) -> list[dict]:
    grid = itertools.product((16, 32, 64), (32, 64, 128), (4, 8), (2,) if quick else (2, 3))
    return [{"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s} for m, n, w, s in grid]


def best_config(run: Callable[[dict], object], candidates: list[dict]) -> tuple[dict, float]:
    """The fastest candidate (and its time); candidates that fail to compile are skipped."""
    best, best_ms = None, float("inf")
    for config in candidates:
        try:
            elapsed = time_ms(lambda config=config: run(config))
        except Exception as error:  # out of shared memory / registers: not a candidate here
            print(f"  skip {config}: {type(error).__name__}")
            continue
        if elapsed < best_ms:
            best, best_ms = config, elapsed
    if best is None:
        raise RuntimeError("no candidate config ran on this GPU")
    return best, best_ms


def tune_attention(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, dict]:
    from leanvision.kernels._triton_common import next_pow2
    from leanvision.kernels.ops.attention.triton import attention_triton

    found: dict[str, dict] = {}
    for head_dim, causal in itertools.product(args.head_dims, (False, True)):
        block_d = next_pow2(head_dim)
        heads = max(1, MODEL_WIDTH // head_dim)
        longest = None
        for length in sorted(args.lengths):
            batch = max(1, args.tokens // length)
            q, k, v = (
                torch.randn(batch, heads, length, head_dim, device="cuda", dtype=dtype)
                for _ in range(3)
            )
            candidates = attention_candidates(head_dim, args.quick)
            config, elapsed = best_config(
                lambda c, q=q, k=k, v=v, causal=causal: attention_triton(q, k, v, causal, config=c),
                candidates,
            )
            out, _ = attention_triton(q, k, v, causal, config=config)
            want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            error = ((out.float() - want.float()).norm() / want.float().norm()).item()
            if error > 2e-2:
                raise RuntimeError(f"best config {config} is wrong: relative error {error:.2e}")
            flops = 4 * batch * heads * length * length * head_dim * (0.5 if causal else 1.0)
            print(
                f"attention D={head_dim} L={length} causal={causal}: {config} "
                f"{elapsed:.3f} ms, {flops / elapsed / 1e9:.1f} TFLOP/s, err {error:.1e}"
            )
            found[configs.attention_key(block_d, dtype, causal, length)] = config
            longest = config
        # The longest length's winner also serves lengths that were not tuned.
        found[configs.attention_key(block_d, dtype, causal, None)] = longest
    return found


def tune_scores(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, dict]:
    from leanvision.kernels._triton_common import next_pow2
    from leanvision.kernels.ops.scores.triton import attention_scores_triton

    found: dict[str, dict] = {}
    length = max(args.lengths)
    for head_dim in args.head_dims:
        heads = max(1, MODEL_WIDTH // head_dim)
        batch = max(1, args.tokens // length)
        q, k = (
            torch.randn(batch, heads, length, head_dim, device="cuda", dtype=dtype)
            for _ in range(2)
        )
        index = torch.arange(length - SCORE_ROWS, length, device="cuda").expand(batch, -1)
        config, elapsed = best_config(
            lambda c, q=q, k=k, index=index: attention_scores_triton(
                q, k, None, True, index, config=c
            ),
            scores_candidates(args.quick),
        )
        print(f"attention_scores D={head_dim} L={length} R={SCORE_ROWS}: {config} {elapsed:.3f} ms")
        found[f"D{next_pow2(head_dim)}-{configs.dtype_name(dtype)}"] = config
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--tokens", type=int, default=16384, help="B*L per shape (default 16k)")
    parser.add_argument("--quick", action="store_true", help="fewer candidates per shape")
    parser.add_argument(
        "--ops", nargs="+", choices=["attention", "attention_scores"],
        default=["attention", "attention_scores"],
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_attention.py needs a CUDA GPU; nothing was tuned here.", file=sys.stderr)
        return 0  # like every benchmark script without a GPU (benchmarks/README.md)
    import triton

    dtype = DTYPES[args.dtype]
    name = torch.cuda.get_device_name()
    print(f"tuning on {name}, triton {triton.__version__}, {args.dtype}")
    found: dict[str, dict[str, dict]] = {}
    if "attention" in args.ops:
        found["attention"] = tune_attention(args, dtype)
    if "attention_scores" in args.ops:
        found["attention_scores"] = tune_scores(args, dtype)
    if args.dry_run:
        print(json.dumps(found, indent=2))
        return 0
    print(f"wrote {write_tuned(name, found, triton.__version__)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""VLM visual-token compression: prefill, decode, memory and FLOPs per method x budget.

The cases are the ``vlm`` suite of ``leanvision bench`` (``leanvision/bench/suites/vlm.py``):
every method at 576 -> 192, 128, 64 tokens against the uncompressed model, on images and a
16-frame video. On the CPU the models are LLaVA-1.5-7B / LLaVA-OneVision-7B narrowed and
shortened (real token counts); on CUDA the full 7B shapes in bf16 with random weights;
``--model PATH`` benchmarks a local checkpoint instead. Prints the table and writes it to
``benchmarks/results/vlm-<device>.txt`` plus the rows, with the environment, to
``vlm-<device>.json`` (or to ``--out`` and ``--out`` with a ``.json`` suffix).

Run: ``python benchmarks/vlm.py --quick`` (CPU smoke run) or
``python benchmarks/vlm.py --device cuda --batch 1 --batch 8``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).with_name("results")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv: list[str] | None = None) -> int:
    from leanvision.bench import BenchOptions, format_table, run_cases, write_json
    from leanvision.bench.suites.vlm import default_config, device_slug, vlm_cases
    from leanvision.core.env import environment_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: fp32 on CPU, bf16 on CUDA"
    )
    parser.add_argument("--model", help="a local checkpoint directory (default: shaped 7B models)")
    parser.add_argument(
        "--batch",
        type=int,
        action="append",
        help="prompts per call, repeatable (default: 1 on CPU, 1 and 8 on CUDA)",
    )
    parser.add_argument("--quick", action="store_true", help="budget 64 only, smaller models")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="where to write the table (and PATH.json)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda was asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    if args.batch and min(args.batch) < 1:
        print(f"--batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    default_dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    options = BenchOptions(
        device=args.device,
        dtype=DTYPES[args.dtype or default_dtype],
        quick=args.quick,
        model=args.model,
    )
    config = default_config(options)
    if args.batch:
        config = dataclasses.replace(config, batches=tuple(args.batch))
    cases = vlm_cases(options, config)
    timings = run_cases("vlm", cases, options, warmup=args.warmup, repeat=args.repeat)
    table = format_table(timings)
    print(table)
    out = Path(args.out) if args.out else RESULTS_DIR / f"vlm-{device_slug(args.device)}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    record = {**vars(args), "config": dataclasses.asdict(config)}
    written = write_json(timings, out.with_suffix(".json"), environment_info(), record)
    print(f"\ntable: {out}\nresults: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

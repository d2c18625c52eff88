"""EfficientViT-B segmentation throughput: our LiteMLA vs timm's, outputs checked in the run.

The cases are the ``seg`` suite of ``leanvision bench`` (``leanvision/bench/suites/seg.py``):
images/s for B0-B3 at 512x512 and 1024x2048, fp32 on CPU, fp16 and bf16 on CUDA. Prints the
table and writes it to ``benchmarks/results/seg-<device>.txt`` plus the rows, with the
environment, to ``seg-<device>.json`` (or to ``--out``).

Run: ``python benchmarks/seg.py --quick`` (CPU: B0/B1 at 512x512) or
``python benchmarks/seg.py --device cuda``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).with_name("results")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def device_label(device: str) -> str:
    """A file-safe device name: the GPU's name on CUDA, ``cpu`` otherwise."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return "cpu"


def main(argv: list[str] | None = None) -> int:
    from leanvision.bench import BenchOptions, format_table, run_cases, write_json
    from leanvision.bench.suites.seg import seg_suite
    from leanvision.core.env import environment_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: fp32 on CPU, fp16 + bf16 on CUDA"
    )
    parser.add_argument("--quick", action="store_true", help="B0/B1 at 512x512 only")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="where to write the table (and PATH.json)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda was asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    options = BenchOptions(device=args.device, dtype=DTYPES[args.dtype or "fp32"], quick=args.quick)
    timings = run_cases("seg", seg_suite(options), options, warmup=args.warmup, repeat=args.repeat)
    table = format_table(timings)
    print(table)
    out = Path(args.out) if args.out else RESULTS_DIR / f"seg-{device_label(args.device)}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    written = write_json(timings, out.with_suffix(".json"), environment_info(), vars(args))
    print(f"\nresults: {out} and {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Diffusion acceleration: tome, deepcache, residual, deepcache+tome and LCM against the
same-seed baseline, on an SD 1.5-shaped UNet and a DiT-XL/2-shaped transformer.

The cases are the ``diffusion`` suite of ``leanvision bench``
(``leanvision/bench/suites/diffusion.py``): latency ratio to the baseline, MACs ratio,
PSNR/SSIM of the decoded images and (CUDA) peak memory. GPU: the full-size models at
512x512, 50 DDIM steps; CPU: reduced width at 256x256 (``--quick``: smaller, 10 steps).
Prints the table and writes it to ``benchmarks/results/diffusion-<device>.txt`` plus the
rows, with the environment, to ``diffusion-<device>.json`` (or to ``--out``).

Run: ``python benchmarks/diffusion.py --quick`` (CPU smoke run) or
``python benchmarks/diffusion.py --device cuda --dtype fp16``.
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
    from leanvision.bench.suites.diffusion import diffusion_suite
    from leanvision.core.env import environment_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--quick", action="store_true", help="smaller CPU shapes, 10 steps")
    parser.add_argument("--model", help="a local SD 1.x pipeline folder (real weights)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="where to write the table (and PATH.json)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda was asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")]
    options = BenchOptions(device=args.device, dtype=dtype, quick=args.quick, model=args.model)
    timings = run_cases(
        "diffusion", diffusion_suite(options), options, warmup=args.warmup, repeat=args.repeat
    )
    table = format_table(timings)
    print(table)
    name = f"diffusion-{device_label(args.device)}{'-quick' if args.quick else ''}.txt"
    out = Path(args.out) if args.out else RESULTS_DIR / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    written = write_json(timings, out.with_suffix(".json"), environment_info(), vars(args))
    print(f"\nresults: {out} and {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every ``benchmarks/<suite>.py`` script shares: common options, the device check, and
writing the table plus JSON under ``benchmarks/results/``.

>>> parser = suite_parser("demo", dtype_help="fp32 everywhere", quick_help="tiny shapes")
>>> args = parser.parse_args(["--device", "cpu", "--quick"])
>>> args.quick, resolve_dtype(args, cpu="fp32", cuda="bf16")
(True, torch.float32)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from leanvision.bench.report import format_table, write_json
from leanvision.bench.runner import Timing
from leanvision.core.env import environment_info
from leanvision.kernels.configs import device_slug

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def suite_parser(description: str, *, dtype_help: str, quick_help: str) -> argparse.ArgumentParser:
    """An argument parser with ``--device --dtype --quick --repeat --warmup --out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help=f"default: {dtype_help}")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="where to write the table (and PATH.json)")
    return parser


def device_missing(args: argparse.Namespace) -> bool:
    """True (after saying so on stderr) when ``--device cuda`` is asked for without a GPU."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda was asked for, but no CUDA device is available", file=sys.stderr)
        return True
    return False


def resolve_dtype(args: argparse.Namespace, *, cpu: str, cuda: str) -> torch.dtype:
    """``--dtype``, or the device's default."""
    return DTYPES[args.dtype or (cuda if args.device.startswith("cuda") else cpu)]


def device_label(device: str) -> str:
    """A file-safe device name: the GPU's name on CUDA, ``cpu`` otherwise."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return device_slug(torch.cuda.get_device_name(torch.device(device)))
    return "cpu"


def results_name(suite: str, args: argparse.Namespace) -> str:
    """``<suite>-<device>[-full][-quick].txt``, the default name of a script's table.

    >>> results_name("diffusion", argparse.Namespace(device="cpu", quick=True, full=True))
    'diffusion-cpu-full-quick.txt'
    """
    flags = "".join(f"-{flag}" for flag in ("full", "quick") if getattr(args, flag, False))
    return f"{suite}-{device_label(args.device)}{flags}.txt"


def save_results(
    suite: str,
    timings: list[Timing],
    args: argparse.Namespace,
    record: dict[str, Any] | None = None,
) -> Path:
    """Print the table, write it to ``--out`` (default ``benchmarks/results/<suite>-<device>
    [-full][-quick].txt``) and the rows with the environment beside it as JSON; return the table's path.
    """
    table = format_table(timings)
    print(table)
    out = Path(args.out) if args.out else RESULTS_DIR / results_name(suite, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    written = write_json(
        timings, out.with_suffix(".json"), environment_info(), record or vars(args)
    )
    print(f"\nresults: {out} and {written}")
    return out

"""Command line: ``leanvision info | bench | demo``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

DTYPES = ("float32", "float16", "bfloat16")


def _info(args: argparse.Namespace) -> int:
    from leanvision.core.env import environment_info, format_info

    print(format_info(environment_info()))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from leanvision.bench import BenchOptions, format_table, load_suites, report, run_suites
    from leanvision.bench.suites import DEFAULT_SUITES
    from leanvision.core.env import environment_info

    suites = load_suites()
    if args.list:
        for name, suite in sorted(suites.items()):
            if isinstance(suite, Exception):
                print(f"{name:<10} unavailable: {suite}")
            else:
                print(f"{name:<10} {suite.description}")
        return 0
    names = args.names or list(DEFAULT_SUITES)
    unknown = [name for name in names if name not in suites]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {sorted(suites)}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda was asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    options = BenchOptions(
        device=args.device,
        dtype=getattr(torch, args.dtype),
        quick=args.quick,
        model=args.model,
        full=args.full,
    )
    timings = run_suites(names, options, warmup=args.warmup, repeat=args.repeat)
    print(format_table(timings))
    json_path = (
        args.json or f"bench-results/{'-'.join(names)}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    options_record = {**vars(args), "names": names}
    options_record.pop("func", None)
    written = report.write_json(timings, json_path, environment_info(), options_record)
    print(f"\nresults: {written}")
    if args.plot:
        print(f"plot: {report.write_plot(timings, args.plot)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    print(
        "leanvision demo is not yet available: the Gradio demos land with the demo issue. "
        "Try `leanvision bench` or the examples in the README.",
    )
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leanvision", description="Make the vision models you already use cheaper to run."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, device, kernel mode, optional features")
    info.set_defaults(func=_info)

    bench = commands.add_parser("bench", help="run benchmarks (default: the main job)")
    bench.add_argument("names", nargs="*", help="benchmarks to run (see --list)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument("--json", help="where to write results (default: bench-results/...json)")
    bench.add_argument("--plot", help="also write a PNG plot here")
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    bench.add_argument("--dtype", default="float32", choices=DTYPES)
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    bench.add_argument("--model", help="a local checkpoint path or hub id, for model suites")
    bench.add_argument(
        "--full", action="store_true", help="full-size models and schedules even on a CPU (slow)"
    )
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--repeat", type=int, default=5)
    bench.set_defaults(func=_bench)

    demo = commands.add_parser("demo", help="the Gradio demo (not yet available)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

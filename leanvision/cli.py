"""Command line: ``leanvision info | bench | demo``.

A bad argument, a missing file or a missing optional dependency ends the command with one
line on stderr, ``leanvision: error: ...``, and exit status 2; ``--debug`` (or
``LEANVISION_DEBUG=1``) shows the traceback instead.

>>> main(["bench", "--repeat", "0"])  # stderr: leanvision: error: argument --repeat: ...
2
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence

from leanvision.core.errors import AlreadyPatchedError, UpstreamVersionError

DTYPES = ("float32", "float16", "bfloat16")
DEBUG_ENV = "LEANVISION_DEBUG"
MODEL_SUITES = ("vlm", "diffusion")
MODEL_HELP = (
    "the model of a model benchmark; nothing is downloaded. vlm: a local transformers "
    "checkpoint directory (image-text-to-text, e.g. fetched with `hf download "
    "llava-hf/llava-1.5-7b-hf --local-dir DIR`) or a shape name (random weights at real "
    "shapes: {shapes}); diffusion: a local Stable Diffusion 1.x pipeline directory"
)


ACCURACY_HELP = "accuracy kept by every method, on the trained tiny models (runs alone)"


class UsageError(Exception):
    """A bad command line: the message is shown as ``leanvision: error: <message>``."""


# What a user can fix: shown as one line, exit status 2. Anything else is a bug: traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UsageError,
    ValueError,
    TypeError,  # UnsupportedModelError too
    OSError,  # FileNotFoundError, PermissionError, IsADirectoryError...
    ImportError,  # MissingDependencyError and a plain missing module
    AlreadyPatchedError,
    UpstreamVersionError,
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` (one line) instead of printing usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed; give an int >= {low}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; give cpu, cuda or cuda:N")
    return text


def _info(args: argparse.Namespace) -> int:
    from leanvision.core.env import environment_info, format_info

    print(format_info(environment_info()))
    return 0


def _check_model(model: str | None, names: list[str]) -> None:
    """Refuse a ``--model`` that no model suite can load, before anything runs."""
    from leanvision.testing.vlm_shapes import REAL_SHAPES

    if model is None:
        return
    if not set(names) & set(MODEL_SUITES):
        raise UsageError(
            f"--model is read by the {' and '.join(MODEL_SUITES)} benchmarks only; "
            f"{names} would ignore it"
        )
    if os.path.isdir(model):
        return
    if model in REAL_SHAPES and "diffusion" not in names:
        return
    if os.path.exists(model):
        raise UsageError(f"--model {model!r} is a file; give the checkpoint's directory")
    shapes = f" or a vlm shape name ({', '.join(sorted(REAL_SHAPES))})"
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    hint = (
        f"; leanvision bench does not download: run `hf download {model} --local-dir DIR` "
        f"and pass --model DIR"
        if looks_like_hub_id
        else ""
    )
    raise UsageError(
        f"--model {model!r} is not a local directory; give a checkpoint directory"
        f"{shapes if 'diffusion' not in names else ''}{hint}"
    )


def _bench(args: argparse.Namespace) -> int:
    from leanvision.bench import BenchOptions, format_table, load_suites, report, run_suites
    from leanvision.bench.suites import DEFAULT_SUITES, SUITES
    from leanvision.core.env import environment_info
    from leanvision.core.registry import did_you_mean

    if args.list:
        for name, suite in sorted(load_suites().items()):
            if isinstance(suite, Exception):
                print(f"{name:<10} unavailable: {suite}")
            else:
                print(f"{name:<10} {suite.description}")
        print(f"{'accuracy':<10} {ACCURACY_HELP}")
        return 0
    names = args.names or list(DEFAULT_SUITES)
    if "accuracy" in names:
        return _bench_accuracy(args, names)
    # Checked against the suite table, before any suite (and its libraries) is imported.
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        hint = did_you_mean(unknown[0], sorted(SUITES))
        raise UsageError(f"unknown benchmark(s) {unknown}{hint}; available: {sorted(SUITES)}")
    _check_model(args.model, names)
    if args.json and os.path.isdir(args.json):
        raise UsageError(f"--json {args.json!r} is a directory; give a file name")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available")
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
    options_record.pop("debug", None)
    written = report.write_json(timings, json_path, environment_info(), options_record)
    print(f"\nresults: {written}")
    if args.plot:
        print(f"plot: {report.write_plot(timings, args.plot)}")
    return 0


def _bench_accuracy(args: argparse.Namespace, names: list[str]) -> int:
    """``leanvision bench accuracy``: runs alone, on the CPU, on the trained tiny models."""
    if names != ["accuracy"]:
        raise UsageError(f"accuracy runs alone (it measures accuracy, not time); got {names}")
    for flag, value in (("--model", args.model), ("--plot", args.plot), ("--full", args.full)):
        if value:
            raise UsageError(
                f"{flag} does not apply to the accuracy benchmark (its plots go beside --json)"
            )
    if args.device != "cpu":
        raise UsageError("the accuracy benchmark runs on the CPU (its models are tiny)")
    from leanvision.bench.accuracy import format_tables, run_accuracy, write_results
    from leanvision.core.env import environment_info

    rows = run_accuracy(quick=args.quick)
    print(format_tables(rows))
    json_path = args.json or f"bench-results/accuracy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    written = write_results(rows, json_path, environment_info() | {"quick": args.quick})
    print("\nresults: " + ", ".join(str(path) for path in written))
    return 0


def _demo(args: argparse.Namespace) -> int:
    print(
        "leanvision demo is not yet available: the Gradio demos land with the demo issue. "
        "Try `leanvision bench` or the examples in the README.",
    )
    return 1


def build_parser() -> argparse.ArgumentParser:
    from leanvision.testing.vlm_shapes import REAL_SHAPES

    # --debug is accepted before or after the subcommand (SUPPRESS: a subcommand's default
    # does not overwrite a --debug given before it).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)",
    )
    parser = _Parser(
        prog="leanvision",
        description="Make the vision models you already use cheaper to run.",
        parents=[debug],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{info,bench,demo}")

    info = commands.add_parser(
        "info", parents=[debug], help="versions, device, kernel mode, optional features"
    )
    info.set_defaults(func=_info)

    bench = commands.add_parser(
        "bench", parents=[debug], help="run benchmarks (default: the main job)"
    )
    bench.add_argument("names", nargs="*", help="benchmarks to run (see --list)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    bench.add_argument("--json", help="where to write results (default: bench-results/...json)")
    bench.add_argument("--plot", help="also write a PNG plot here")
    bench.add_argument(
        "--device", default="cpu", type=_device, help="cpu, cuda or cuda:N (default: cpu)"
    )
    bench.add_argument("--dtype", default="float32", choices=DTYPES)
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    bench.add_argument(
        "--model",
        help=MODEL_HELP.format(shapes=", ".join(sorted(REAL_SHAPES))),
        metavar="DIR|SHAPE",
    )
    bench.add_argument(
        "--full", action="store_true", help="full-size models and schedules even on a CPU (slow)"
    )
    bench.add_argument("--warmup", type=_int_at_least(0), default=2, help="untimed calls (>= 0)")
    bench.add_argument("--repeat", type=_int_at_least(1), default=5, help="timed calls (>= 1)")
    bench.set_defaults(func=_bench)

    demo = commands.add_parser("demo", parents=[debug], help="the Gradio demo (not yet available)")
    demo.set_defaults(func=_demo)
    return parser


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``leanvision`` command with ``argv`` (default: ``sys.argv[1:]``); return the
    exit status: 0 on success, 2 for a user error (reported in one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"leanvision: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("leanvision: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

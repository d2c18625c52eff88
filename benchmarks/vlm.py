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

import dataclasses
import sys


def main(argv: list[str] | None = None) -> int:
    from leanvision.bench import BenchOptions, run_cases
    from leanvision.bench.script import device_missing, resolve_dtype, save_results, suite_parser
    from leanvision.bench.suites.vlm import default_config, vlm_cases

    parser = suite_parser(
        __doc__.splitlines()[0],
        dtype_help="fp32 on CPU, bf16 on CUDA",
        quick_help="budget 64 only, smaller models",
    )
    parser.add_argument("--model", help="a local checkpoint directory (default: shaped 7B models)")
    parser.add_argument(
        "--batch",
        type=int,
        action="append",
        help="prompts per call, repeatable (default: 1 on CPU, 1 and 8 on CUDA)",
    )
    args = parser.parse_args(argv)
    if device_missing(args):
        return 2
    if args.batch and min(args.batch) < 1:
        print(f"--batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    options = BenchOptions(
        device=args.device,
        dtype=resolve_dtype(args, cpu="fp32", cuda="bf16"),
        quick=args.quick,
        model=args.model,
    )
    config = default_config(options)
    if args.batch:
        config = dataclasses.replace(config, batches=tuple(args.batch))
    timings = run_cases(
        "vlm", vlm_cases(options, config), options, warmup=args.warmup, repeat=args.repeat
    )
    save_results("vlm", timings, args, {**vars(args), "config": dataclasses.asdict(config)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""EfficientViT-B segmentation throughput: our LiteMLA vs timm's, outputs checked in the run.

The cases are the ``seg`` suite of ``leanvision bench`` (``leanvision/bench/suites/seg.py``):
images/s for B0-B3 at 512x512 and 1024x2048, fp32 on CPU, fp16 and bf16 on CUDA. Prints the
table and writes it to ``benchmarks/results/seg-<device>.txt`` plus the rows, with the
environment, to ``seg-<device>.json`` (or to ``--out``).

Run: ``python benchmarks/seg.py --quick`` (CPU: B0/B1 at 512x512) or
``python benchmarks/seg.py --device cuda``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from leanvision.bench import BenchOptions, run_cases
    from leanvision.bench.script import device_missing, resolve_dtype, save_results, suite_parser
    from leanvision.bench.suites.seg import seg_suite

    parser = suite_parser(
        __doc__.splitlines()[0],
        dtype_help="fp32 on CPU, fp16 + bf16 on CUDA",
        quick_help="B0/B1 at 512x512 only",
    )
    args = parser.parse_args(argv)
    if device_missing(args):
        return 2
    options = BenchOptions(
        device=args.device, dtype=resolve_dtype(args, cpu="fp32", cuda="fp32"), quick=args.quick
    )
    timings = run_cases("seg", seg_suite(options), options, warmup=args.warmup, repeat=args.repeat)
    save_results("seg", timings, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

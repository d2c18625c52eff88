"""Diffusion acceleration: tome, deepcache, residual, deepcache+tome and LCM against the
same-seed baseline, on an SD 1.5-shaped UNet and a DiT-XL/2-shaped transformer.

The cases are the ``diffusion`` suite of ``leanvision bench``
(``leanvision/bench/suites/diffusion.py``): latency ratio to the baseline, MACs ratio,
PSNR/SSIM of the decoded images and (CUDA) peak memory. GPU: the full-size models at
512x512, 50 DDIM steps; CPU: reduced width at 256x256 (``--quick``: smaller, 10 steps), or with
``--full`` the full-size models and 50 steps at 256x256 (``--full --quick``: the issue's target
settings only, 45 to 75 minutes on 2 cores).
Prints the table and writes it to ``benchmarks/results/diffusion-<device>.txt`` plus the
rows, with the environment, to ``diffusion-<device>.json`` (or to ``--out``).

Run: ``python benchmarks/diffusion.py --quick`` (CPU smoke run) or
``python benchmarks/diffusion.py --device cuda --dtype fp16``; ``--only CASE`` (repeatable)
times just those rows, each with its group's baseline.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from leanvision.bench import BenchOptions, run_cases
    from leanvision.bench.script import device_missing, resolve_dtype, save_results, suite_parser
    from leanvision.bench.suites.diffusion import CASE_NAMES, diffusion_suite

    parser = suite_parser(
        __doc__.splitlines()[0],
        dtype_help="fp16 on CUDA, fp32 on CPU",
        quick_help="smaller CPU shapes, 10 steps",
    )
    parser.add_argument("--model", help="a local SD 1.x pipeline folder (real weights)")
    parser.add_argument(
        "--full",
        action="store_true",
        help="on a CPU too: the full-size SD 1.5 UNet and DiT-XL/2 with 50 DDIM steps, at 256x256",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=CASE_NAMES,
        metavar="CASE",
        help="time only this case, with its group's baseline (repeat for more); one of: "
        + ", ".join(CASE_NAMES),
    )
    args = parser.parse_args(argv)
    if device_missing(args):
        return 2
    dtype = resolve_dtype(args, cpu="fp32", cuda="fp16")
    options = BenchOptions(
        device=args.device,
        dtype=dtype,
        quick=args.quick,
        model=args.model,
        full=args.full,
        only=tuple(args.only) if args.only else None,
    )
    timings = run_cases(
        "diffusion", diffusion_suite(options), options, warmup=args.warmup, repeat=args.repeat
    )
    save_results("diffusion", timings, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-step cost of DeepCache and ToMe on the SD 1.5 UNet at any resolution, composed into
the cost of a 50-step DDIM run.

A full 50-step run of the SD 1.5 UNet at 512x512 takes tens of minutes on a CPU per setting;
the step-caching settings, though, only mix two kinds of UNet call (a full step and a cached
step) in a known proportion (DeepCache interval 3: 17 full + 33 cached of 50). This script
times one call of each kind per setting, side by side on the same inputs (CFG batch 2), counts
their MACs (``torch.utils.flop_counter``, attention included), and prints

    50-step time = full steps x full-call time + cached steps x cached-call time

and its ratio to 50 baseline calls. Every sample of a setting (its full and its cached call)
is taken in turn with a baseline call (A B A B ...), and the speedup is the median of the
per-sample ratios, with their interquartile range from 3 samples on; a speedup above
``1 / MACs ratio`` is flagged as noise. It is an estimate by composition, not a timed 50-step
run (``benchmarks/diffusion.py --full`` is that); the MACs ratio is exact for the schedule.

Run: ``python benchmarks/diffusion_steps.py`` (512x512, the full-size UNet) or
``--image 256 --width 0.25`` for a quick look; writes ``benchmarks/results/
diffusion-steps-<device>-<image>px.txt``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from leanvision.bench.suites.diffusion import QUICK_SETTINGS, SD_SETTINGS

STEPS = 50
# The suite's target settings whose full/cached steps follow a fixed schedule (residual's
# skips depend on the run, so they cannot be composed from two calls).
SETTINGS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "baseline": [],
    **{
        label: methods
        for label, methods in SD_SETTINGS
        if label in QUICK_SETTINGS and all(name != "residual" for name, _ in methods)
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None)
    parser.add_argument("--image", type=int, default=512, help="image side in pixels")
    parser.add_argument("--width", type=float, default=1.0, help="UNet channel scale")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per kind (median)")
    parser.add_argument("--out", help="where to write the table")
    return parser.parse_args(argv)


def _full_steps(methods: list[tuple[str, dict[str, Any]]]) -> int:
    from leanvision.diffusion.cache.schedules import uniform_full_steps

    intervals = [options["interval"] for name, options in methods if name == "deepcache"]
    return sum(uniform_full_steps(STEPS, intervals[0])) if intervals else STEPS


def measure(unet: Any, inputs: dict[str, Any], methods: list, repeat: int, device: str) -> dict:
    """Seconds (``repeat`` samples) and MACs of a full and a cached call under ``methods``:
    the first two calls of a run on the bare UNet (a falling timestep continues the run).
    Each sample is taken in turn with a bare (baseline) call, in ``baseline_s``; the MACs
    count comes first and warms both up."""
    import torch

    from leanvision.bench.runner import alternate, call_seconds
    from leanvision.diffusion.api import accelerate
    from leanvision.diffusion.macs import count_macs
    from leanvision.diffusion.registry import load_methods

    registry = load_methods()
    configs = [registry.resolve(name, **options)[0] for name, options in methods]
    kinds = ("full", "cached")
    steps = {
        kind: dict(inputs, timestep=torch.tensor(timestep, device=device))
        for kind, timestep in zip(kinds, (999, 979), strict=True)
    }

    def run(counted: bool = False) -> dict[str, float]:
        handle = accelerate(unet, configs) if configs else None
        try:
            if counted:
                return {kind: count_macs(unet, **steps[kind])[1] for kind in kinds}
            return {
                kind: call_seconds(lambda kind=kind: unet(**steps[kind]), device) for kind in kinds
            }
        finally:
            if handle is not None:
                handle.remove()

    macs = run(counted=True)
    if configs:
        baseline, own = alternate(
            lambda: call_seconds(lambda: unet(**steps["full"]), device), run, repeat
        )
    else:  # the baseline itself: its full calls are its own pairs
        own = [run() for _ in range(repeat)]
        baseline = [sample["full"] for sample in own]
    seconds = {kind: [sample[kind] for sample in own] for kind in kinds}
    return {"seconds": seconds, "baseline_s": baseline, "macs": macs}


def compose(rows: dict[str, dict], full_steps: dict[str, int]) -> list[dict[str, Any]]:
    """50-step time and MACs per setting (from the per-call medians), and the speedup: the
    median of the per-sample ratios ``50 x baseline call / composed 50-step time``, its
    quartiles, and whether it exceeds ``1 / macs_ratio``."""
    from leanvision.bench.runner import PairedRatio, above_bound, paired_ratio

    base_macs = STEPS * rows["baseline"]["macs"]["full"]
    table = []
    for name, row in rows.items():
        full, cached = full_steps[name], STEPS - full_steps[name]
        seconds = row["seconds"]
        totals = [
            full * f + cached * c for f, c in zip(seconds["full"], seconds["cached"], strict=True)
        ]
        ratio = paired_ratio([STEPS * b for b in row["baseline_s"]], totals)
        if name == "baseline":
            ratio = PairedRatio(1.0, None, None, ratio.pairs)
        median = {kind: statistics.median(values) for kind, values in seconds.items()}
        macs_ratio = (full * row["macs"]["full"] + cached * row["macs"]["cached"]) / base_macs
        table.append(
            {
                "setting": name,
                "full_s": median["full"],
                "cached_s": median["cached"] if cached else None,
                "steps": f"{full}F+{cached}C",
                "total_s": full * median["full"] + cached * median["cached"],
                "paired_baseline_s": statistics.median(row["baseline_s"]),
                "speedup": ratio.median,
                "speedup_iqr": "" if name == "baseline" else ratio.interval(),
                "pairs": ratio.pairs,
                "macs_ratio": macs_ratio,
                "bound": 1 / macs_ratio,
                "above_bound": above_bound(ratio.median, macs_ratio),
            }
        )
    return table


def format_rows(table: list[dict[str, Any]], title: str) -> str:
    lines = [
        title,
        "",
        "| setting | steps | full call s | cached call s | 50-step s | paired baseline call s "
        "| speedup | speedup IQR | MACs ratio | MACs bound | check |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        cached = "-" if row["cached_s"] is None else f"{row['cached_s']:.3f}"
        check = "NOISE: above bound" if row["above_bound"] else "ok"
        lines.append(
            f"| {row['setting']} | {row['steps']} | {row['full_s']:.3f} | {cached} | "
            f"{row['total_s']:.1f} | {row['paired_baseline_s']:.3f} | {row['speedup']:.2f}x | "
            f"{row['speedup_iqr']} | "
            f"{row['macs_ratio']:.3f} | <={row['bound']:.2f}x | {check} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import diffusers as df
    import torch

    from leanvision.bench.script import RESULTS_DIR, device_label, device_missing, resolve_dtype
    from leanvision.bench.suites.diffusion import build_seeded, sd15_unet_config

    if device_missing(args):
        return 2
    dtype = resolve_dtype(args, cpu="fp32", cuda="fp16")
    config = sd15_unet_config(args.width)
    unet = build_seeded(args.device, dtype, lambda: df.UNet2DConditionModel(**config))
    latent = args.image // 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inputs = dict(
            sample=torch.randn(2, 4, latent, latent).to(args.device, dtype),
            encoder_hidden_states=torch.randn(2, 77, config["cross_attention_dim"]).to(
                args.device, dtype
            ),
        )
    rows, full_steps = {}, {}
    with torch.no_grad():
        for name, methods in SETTINGS.items():
            rows[name] = measure(unet, inputs, methods, args.repeat, args.device)
            full_steps[name] = _full_steps(methods)
            if (
                full_steps[name] < STEPS
                and not rows[name]["macs"]["cached"] < rows[name]["macs"]["full"]
            ):
                raise RuntimeError(f"{name}: the second call was not a cached step")
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    title = (
        f"SD 1.5 UNet ({args.width:g}x width) at {args.image}x{args.image}, CFG batch 2, "
        f"{STEPS} DDIM steps composed from per-call medians of {args.repeat}; speedup: median "
        f"of {args.repeat} per-sample ratios, each sample taken in turn with a baseline call; "
        f"device {device_label(args.device)}, {str(dtype).removeprefix('torch.')}"
    )
    text = format_rows(compose(rows, full_steps), title)
    print(text)
    name = f"diffusion-steps-{device_label(args.device)}-{args.image}px.txt"
    out = Path(args.out) if args.out else RESULTS_DIR / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

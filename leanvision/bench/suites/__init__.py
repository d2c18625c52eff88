"""Benchmark suites by name; each module registers itself with ``register_benchmark``."""

SUITES: dict[str, str] = {
    "decode": "leanvision.bench.suites.decode",
    "diffusion": "leanvision.bench.suites.diffusion",
    "seg": "leanvision.bench.suites.seg",
    "vlm": "leanvision.bench.suites.vlm",
}

# What ``leanvision bench`` (and ``make bench``) runs when no name is given.
DEFAULT_SUITES: tuple[str, ...] = ("decode",)

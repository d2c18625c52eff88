"""Benchmark suites by name; each module registers itself with ``register_benchmark``."""

SUITES: dict[str, str] = {
    "decode": "leanvision.bench.suites.decode",
}

# What ``leanvision bench`` (and ``make bench``) runs when no name is given.
DEFAULT_SUITES: tuple[str, ...] = ("decode",)

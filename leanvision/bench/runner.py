"""Time benchmark cases: warm-up, repeated timing, median and spread, ratio to a baseline."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tqdm.auto import tqdm

from leanvision.bench.registry import BenchOptions, Case, get_suite


@dataclasses.dataclass
class Timing:
    """Seconds per call of one case; ``spread`` is the interquartile range over the median."""

    suite: str
    group: str
    case: str
    unit: str
    items: float
    median_s: float
    spread: float
    repeats: int
    baseline: bool
    speedup: float | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.items / self.median_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "throughput": self.throughput}


def _synchronize(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def call_seconds(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Wall-clock seconds of one ``fn()``, with queued CUDA work finished before and after.

    >>> call_seconds(lambda: sum(range(1000))) > 0
    True
    """
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def time_call(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    warmup: int = 2,
    repeat: int = 5,
    min_sample_s: float = 0.02,
) -> list[float]:
    """Seconds per call, ``repeat`` samples after ``warmup`` calls.

    Calls shorter than ``min_sample_s`` are looped inside one sample so that timer
    resolution and launch jitter do not dominate.
    """
    for _ in range(warmup):
        fn()
    first = call_seconds(fn, device)
    inner = max(1, math.ceil(min_sample_s / max(first, 1e-9)))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _synchronize(device)
        samples.append((time.perf_counter() - start) / inner)
    return samples


def _summarise(suite: str, case: Case, samples: list[float]) -> Timing:
    median = statistics.median(samples)
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [median] * 3
    return Timing(
        suite=suite,
        group=case.group,
        case=case.name,
        unit=case.unit,
        items=case.items,
        median_s=median,
        spread=(quartiles[2] - quartiles[0]) / median if median > 0 else 0.0,
        repeats=len(samples),
        baseline=case.baseline,
        metrics=dict(case.metrics),
    )


def _attach_speedups(timings: list[Timing]) -> None:
    baselines = {(t.suite, t.group): t for t in timings if t.baseline}
    for timing in timings:
        base = baselines.get((timing.suite, timing.group))
        if base is not None:
            timing.speedup = base.median_s / timing.median_s


def run_cases(
    suite: str,
    cases: Iterable[Case],
    options: BenchOptions | None = None,
    *,
    warmup: int = 2,
    repeat: int = 5,
) -> list[Timing]:
    """Time ``cases`` (with a progress bar) and compare each with its group's baseline.

    >>> rows = run_cases("demo", [Case("sum", lambda: sum(range(1000)), items=1000,
    ...                                unit="adds", baseline=True)], repeat=2)
    >>> rows[0].case, rows[0].speedup
    ('sum', 1.0)
    """
    options = options or BenchOptions()
    cases = list(cases)
    timings = []
    for case in tqdm(cases, desc=f"bench {suite}", unit="case", leave=False):
        samples = time_call(case.fn, device=options.device, warmup=warmup, repeat=repeat)
        timings.append(_summarise(suite, case, samples))
    _attach_speedups(timings)
    return timings


def run_suites(
    names: Iterable[str],
    options: BenchOptions | None = None,
    *,
    warmup: int = 2,
    repeat: int = 5,
) -> list[Timing]:
    """Run the registered suites ``names`` and return one :class:`Timing` per case."""
    options = options or BenchOptions()
    timings: list[Timing] = []
    for name in names:
        cases = get_suite(name).cases(options)
        timings += run_cases(name, cases, options, warmup=warmup, repeat=repeat)
    return timings

"""Time benchmark cases: warm-up, each case interleaved with its group's baseline
(A B A B ...), the median of per-pair ratios with its interquartile range, and a check of every
ratio against the bound its FLOPs/MACs allow.

Rule 10 of the design: one slow patch of time on a shared machine must not decide a ratio, so
a case and its baseline alternate sample by sample and each ratio is the median of the
per-pair ratios ``baseline_i / case_i``; fewer than :data:`MIN_SPREAD_SAMPLES` samples get a
count and no spread; a speedup above ``1 / compute_ratio`` is flagged, not reported as a win.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from leanvision.bench.registry import BenchOptions, Case, get_suite

MIN_SPREAD_SAMPLES = 3  # below this, a row shows its sample count and no spread
T = TypeVar("T")
U = TypeVar("U")


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values``, interpolated linearly between
    order statistics (numpy's default percentile).

    >>> quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    (2.0, 3.0, 4.0)
    """
    if not values:
        raise ValueError("quartiles of no values")
    if len(values) == 1:
        return values[0], values[0], values[0]
    first, median, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, median, third


def relative_spread(samples: Sequence[float]) -> float | None:
    """Interquartile range over the median; None for fewer than ``MIN_SPREAD_SAMPLES`` samples.

    >>> relative_spread([1.0, 2.0, 3.0, 4.0, 5.0]), relative_spread([1.0, 3.0])
    (0.6666666666666666, None)
    """
    if len(samples) < MIN_SPREAD_SAMPLES:
        return None
    first, median, third = quartiles(samples)
    return (third - first) / median if median > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class PairedRatio:
    """The median of per-pair ratios ``baseline_i / case_i`` (a speedup when both are seconds),
    ``low``/``high`` their first and third quartiles (None under ``MIN_SPREAD_SAMPLES`` pairs),
    and ``pairs``, how many there were."""

    median: float
    low: float | None
    high: float | None
    pairs: int

    def interval(self) -> str:
        """``"low-highx"`` (the quartiles), or ``"n=K"`` when there were too few pairs.

        >>> PairedRatio(4.0, 3.0, 4.5, 5).interval(), PairedRatio(4.0, None, None, 2).interval()
        ('3.00-4.50x', 'n=2')
        """
        if self.low is None or self.high is None:
            return f"n={self.pairs}"
        return f"{self.low:.2f}-{self.high:.2f}x"


def paired_ratio(baseline: Sequence[float], case: Sequence[float]) -> PairedRatio:
    """Summarise the ratios ``baseline[i] / case[i]`` of samples taken in interleaved pairs.

    >>> paired_ratio([4.0, 4.0, 8.0], [1.0, 2.0, 2.0])
    PairedRatio(median=4.0, low=3.0, high=4.0, pairs=3)
    >>> paired_ratio([4.0], [2.0])
    PairedRatio(median=2.0, low=None, high=None, pairs=1)
    """
    if len(baseline) != len(case) or not case:
        raise ValueError(
            f"need as many baseline as case samples (>= 1), got {len(baseline)} and {len(case)}"
        )
    ratios = [b / c for b, c in zip(baseline, case, strict=True)]
    low, median, high = quartiles(ratios)
    if len(ratios) < MIN_SPREAD_SAMPLES:
        low = high = None
    return PairedRatio(median, low, high, len(ratios))


def above_bound(speedup: float | None, compute_ratio: float | None) -> bool:
    """True when ``speedup`` exceeds ``1 / compute_ratio``, the most a case doing
    ``compute_ratio`` of its baseline's FLOPs (or MACs) can gain: such a ratio is noise.

    >>> above_bound(4.81, 0.2442), above_bound(2.9, 0.1653), above_bound(None, 0.5)
    (True, False, False)
    """
    if speedup is None or not compute_ratio or compute_ratio <= 0:
        return False
    return speedup > (1 + 1e-9) / compute_ratio


def alternate(
    first: Callable[[], T], second: Callable[[], U], repeat: int
) -> tuple[list[T], list[U]]:
    """Call ``first`` then ``second``, ``repeat`` times (A B A B ...); what each returned.

    >>> alternate(lambda: "a", lambda: "b", 2)
    (['a', 'a'], ['b', 'b'])
    """
    firsts, seconds = [], []
    for _ in range(repeat):
        firsts.append(first())
        seconds.append(second())
    return firsts, seconds


@dataclasses.dataclass
class Timing:
    """Seconds per call of one case, as measured.

    ``median_s`` and ``spread`` (interquartile range over the median; None under
    ``MIN_SPREAD_SAMPLES`` samples) summarise ``samples_s``, ``repeats`` of them. ``speedup``
    is the median of the per-pair ratios ``paired_baseline_s[i] / samples_s[i]`` of samples
    taken in turn with the group's baseline, ``speedup_low``/``speedup_high`` their quartiles.
    ``bound`` is ``1 / compute_ratio`` of the case (the most its FLOPs/MACs allow) and
    ``above_bound`` says the speedup exceeds it: noise, not a win.
    """

    suite: str
    group: str
    case: str
    unit: str
    items: float
    median_s: float
    spread: float | None
    repeats: int
    baseline: bool
    speedup: float | None = None
    speedup_low: float | None = None
    speedup_high: float | None = None
    bound: float | None = None
    above_bound: bool = False
    samples_s: list[float] = dataclasses.field(default_factory=list)
    paired_baseline_s: list[float] = dataclasses.field(default_factory=list)
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


class _Sampler:
    """Warms ``case`` up, then gives one sample (seconds per call) per :meth:`sample`.

    ``case.setup`` runs, untimed, before the warm-up and before every sample, so a case that
    shares a model with others (a patch to switch) is timed in its own state whatever ran
    before it. Calls shorter than ``min_sample_s`` are looped inside one sample so that timer
    resolution and launch jitter do not dominate.
    """

    def __init__(self, case: Case, device: str, warmup: int, min_sample_s: float = 0.02):
        self.case, self.device = case, device
        self._setup()
        for _ in range(warmup):
            case.fn()
        first = call_seconds(case.fn, device)
        self.inner = max(1, math.ceil(min_sample_s / max(first, 1e-9)))

    def _setup(self) -> None:
        if self.case.setup is not None:
            self.case.setup()

    def sample(self) -> float:
        self._setup()
        _synchronize(self.device)
        start = time.perf_counter()
        for _ in range(self.inner):
            self.case.fn()
        _synchronize(self.device)
        return (time.perf_counter() - start) / self.inner


def time_call(
    fn: Callable[[], Any],
    *,
    device: str = "cpu",
    warmup: int = 2,
    repeat: int = 5,
    min_sample_s: float = 0.02,
) -> list[float]:
    """Seconds per call, ``repeat`` samples after ``warmup`` calls (and one calibration call).

    Calls shorter than ``min_sample_s`` are looped inside one sample so that timer
    resolution and launch jitter do not dominate.

    >>> samples = time_call(lambda: sum(range(100)), warmup=1, repeat=3)
    >>> len(samples), all(s > 0 for s in samples)
    (3, True)
    """
    sampler = _Sampler(Case("call", fn), device, warmup, min_sample_s)
    return [sampler.sample() for _ in range(repeat)]


def _summarise(
    suite: str, case: Case, samples: list[float], paired: list[float] | None = None
) -> Timing:
    """One row from its samples and, for a case compared with a baseline, the baseline
    samples taken in turn with them (a baseline's own ratio is 1)."""
    ratio = paired_ratio(paired, samples) if paired else None
    if case.baseline:
        ratio = PairedRatio(1.0, None, None, len(samples))
    bound = 1 / case.compute_ratio if case.compute_ratio and not case.baseline else None
    speedup = ratio.median if ratio else None
    return Timing(
        suite=suite,
        group=case.group,
        case=case.name,
        unit=case.unit,
        items=case.items,
        median_s=statistics.median(samples),
        spread=relative_spread(samples),
        repeats=len(samples),
        baseline=case.baseline,
        speedup=speedup,
        speedup_low=ratio.low if ratio else None,
        speedup_high=ratio.high if ratio else None,
        bound=bound,
        above_bound=bound is not None and above_bound(speedup, case.compute_ratio),
        samples_s=list(samples),
        paired_baseline_s=list(paired or []),
        metrics=dict(case.metrics),
    )


def _time_group(
    suite: str, cases: list[Case], device: str, warmup: int, repeat: int, progress: Any
) -> dict[int, Timing]:
    """Rows of one group, by ``id`` of their case: every case alternates with the group's
    baseline, ``repeat`` pairs each (the baseline row pools all its samples); without a
    baseline, each case is timed alone."""
    baseline = next((case for case in cases if case.baseline), None)
    rows: dict[int, Timing] = {}
    if baseline is None:
        for case in cases:
            sampler = _Sampler(case, device, warmup)
            rows[id(case)] = _summarise(suite, case, [sampler.sample() for _ in range(repeat)])
            progress.update()
        return rows
    base_sampler = _Sampler(baseline, device, warmup)
    pooled: list[float] = []
    for case in cases:
        if case is baseline:
            continue
        sampler = _Sampler(case, device, warmup)
        base, own = alternate(base_sampler.sample, sampler.sample, repeat)
        pooled += base
        rows[id(case)] = _summarise(suite, case, own, base)
        progress.update()
    if not pooled:  # a baseline alone in its group
        pooled = [base_sampler.sample() for _ in range(repeat)]
    rows[id(baseline)] = _summarise(suite, baseline, pooled)
    progress.update()
    return rows


def run_cases(
    suite: str,
    cases: Iterable[Case],
    options: BenchOptions | None = None,
    *,
    warmup: int = 2,
    repeat: int = 5,
) -> list[Timing]:
    """Time ``cases`` (with a progress bar), each in ``repeat`` interleaved pairs with its
    group's baseline, and return one :class:`Timing` per case, in the order given.

    >>> rows = run_cases("demo", [Case("sum", lambda: sum(range(1000)), items=1000,
    ...                                unit="adds", baseline=True)], repeat=2)
    >>> rows[0].case, rows[0].speedup
    ('sum', 1.0)
    """
    options = options or BenchOptions()
    cases = list(cases)
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    rows: dict[int, Timing] = {}
    with tqdm(total=len(cases), desc=f"bench {suite}", unit="case", leave=False) as progress:
        for members in groups.values():
            rows |= _time_group(suite, members, options.device, warmup, repeat, progress)
    return [rows[id(case)] for case in cases]


def run_suites(
    names: Iterable[str],
    options: BenchOptions | None = None,
    *,
    warmup: int = 2,
    repeat: int = 5,
) -> list[Timing]:
    """Run the registered suites ``names`` and return one :class:`Timing` per case.

    >>> from leanvision.bench import Case, register_benchmark
    >>> _ = register_benchmark("doc-noop", "an empty call")(lambda options: [Case("noop", int)])
    >>> [timing.case for timing in run_suites(["doc-noop"], warmup=0, repeat=2)]
    ... # doctest: +ELLIPSIS
    [...'noop']
    """
    options = options or BenchOptions()
    timings: list[Timing] = []
    for name in names:
        cases = get_suite(name).cases(options)
        timings += run_cases(name, cases, options, warmup=warmup, repeat=repeat)
    return timings

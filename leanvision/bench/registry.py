"""Registered benchmark suites and what they yield."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch


@dataclasses.dataclass
class BenchOptions:
    """Settings every suite receives. ``quick`` asks for smaller sizes (CI, smoke runs);
    ``full`` asks for the GPU's full-size models and schedules on any device (suites that
    scale down on a CPU say how they honour it). ``only``: the case names to time, each with
    its group's baseline (None: every case; the suites that honour it say so)."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    quick: bool = False
    model: str | None = None
    full: bool = False
    only: tuple[str, ...] | None = None


@dataclasses.dataclass
class Case:
    """One timed row.

    ``fn`` is called repeatedly and timed; ``items`` is how many ``unit``s one call processes,
    so throughput is ``items / median``. Within a ``group``, every case is timed in turn with
    the case marked ``baseline`` (A B A B ...). ``metrics`` are extra columns measured once
    (MACs, PSNR, memory). ``compute_ratio``: the case's FLOPs (or MACs) over its baseline's,
    when known; a speedup above ``1 / compute_ratio`` is flagged as noise. ``setup`` runs,
    untimed, before the warm-up and before every sample (e.g. switching a shared model's patch).
    """

    name: str
    fn: Callable[[], Any]
    items: float = 1.0
    unit: str = "calls"
    group: str = ""
    baseline: bool = False
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    compute_ratio: float | None = None
    setup: Callable[[], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    cases: Callable[[BenchOptions], Iterable[Case]]


_SUITES: dict[str, Suite] = {}


def register_benchmark(
    name: str, description: str
) -> Callable[[Callable[[BenchOptions], Iterable[Case]]], Callable[[BenchOptions], Iterable[Case]]]:
    """Register a suite: a function from :class:`BenchOptions` to the :class:`Case` s to time.

    >>> @register_benchmark("doc-demo", "an empty call, for the docs")
    ... def doc_demo(options):
    ...     return [Case("noop", lambda: None)]
    >>> get_suite("doc-demo").description
    'an empty call, for the docs'
    """

    def decorator(
        cases: Callable[[BenchOptions], Iterable[Case]],
    ) -> Callable[[BenchOptions], Iterable[Case]]:
        if name in _SUITES:
            raise ValueError(f"benchmark {name!r} is already registered")
        _SUITES[name] = Suite(name, description, cases)
        return cases

    return decorator


def load_suites() -> dict[str, Suite | Exception]:
    """Import every known suite module and return every registered suite (yours too); a suite
    whose optional dependency is missing maps to the import error so that ``--list`` can say
    why it is unavailable.

    >>> {"vlm", "diffusion"} <= set(load_suites())
    True
    """
    from leanvision.bench.suites import SUITES

    found: dict[str, Suite | Exception] = dict(_SUITES)
    for name, module in SUITES.items():
        try:
            importlib.import_module(module)
            found[name] = _SUITES[name]
        except ImportError as error:
            found[name] = error
    return found


def get_suite(name: str) -> Suite:
    """The registered suite ``name``; ``ValueError`` naming the available ones otherwise, or the
    suite's import error when its optional dependency is missing.

    >>> get_suite("vlm").name
    'vlm'
    """
    suites = load_suites()
    if name not in suites:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(sorted(suites))}")
    suite = suites[name]
    if isinstance(suite, Exception):
        raise suite
    return suite

"""Benchmark runner behind ``leanvision bench``: registered suites, timing, tables, JSON, plots.

>>> from leanvision.bench import Case, run_cases
>>> [t.case for t in run_cases("demo", [Case("noop", lambda: None)], repeat=2)]
['noop']
"""

from leanvision.bench.registry import BenchOptions, Case, get_suite, load_suites, register_benchmark
from leanvision.bench.report import format_table, write_json, write_plot
from leanvision.bench.runner import (
    PairedRatio,
    Timing,
    above_bound,
    alternate,
    paired_ratio,
    run_cases,
    run_suites,
    time_call,
)

__all__ = [
    "BenchOptions",
    "Case",
    "PairedRatio",
    "Timing",
    "above_bound",
    "alternate",
    "format_table",
    "get_suite",
    "load_suites",
    "paired_ratio",
    "register_benchmark",
    "run_cases",
    "run_suites",
    "time_call",
    "write_json",
    "write_plot",
]

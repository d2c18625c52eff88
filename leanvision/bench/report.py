"""Present timings: a plain-text table, a JSON file with the environment, a PNG plot."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leanvision.bench.runner import PairedRatio, Timing


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ratio_cells(t: Timing) -> list[str]:
    """``vs baseline`` and ``ratio IQR``: the median of per-pair ratios and its quartiles
    (``n=K`` instead when there were fewer than ``MIN_SPREAD_SAMPLES`` pairs)."""
    if t.speedup is None:
        return ["-", "-"]
    if t.baseline:
        return ["baseline", ""]
    ratio = PairedRatio(t.speedup, t.speedup_low, t.speedup_high, t.repeats)
    return [f"{t.speedup:.2f}x", ratio.interval()]


def _bound_cells(t: Timing) -> list[str]:
    """``bound`` (1 / FLOPs or MACs ratio) and ``check``: noise when the speedup exceeds it."""
    if t.bound is None:
        return ["", ""]
    return [f"<={t.bound:.2f}x", "NOISE: above bound" if t.above_bound else "ok"]


def format_table(timings: Sequence[Timing]) -> str:
    """A fixed-width table, one row per case, grouped as the suites yielded them.

    ``spread`` is the interquartile range over the median, ``-`` for fewer than
    ``MIN_SPREAD_SAMPLES`` samples (``n``); ``vs baseline`` is the median of the per-pair
    ratios (case and baseline timed in turn) and ``ratio IQR`` their quartiles; ``bound`` and
    ``check`` appear when a case knows its FLOPs/MACs ratio.

    >>> from leanvision.bench import Case, run_cases
    >>> print(format_table(run_cases("demo", [Case("noop", lambda: None)], repeat=2)))
    ... # doctest: +ELLIPSIS
    suite  group  case  ms/call ...
    -----  ...
    demo          noop  ...
    """
    metric_names: list[str] = []
    for timing in timings:
        metric_names += [name for name in timing.metrics if name not in metric_names]
    bounded = any(t.bound is not None for t in timings)
    header = ["suite", "group", "case", "ms/call", "spread", "n", "throughput", "vs baseline"]
    header += ["ratio IQR"] + (["bound", "check"] if bounded else []) + metric_names
    rows = [header]
    for t in timings:
        row = [
            t.suite,
            t.group,
            t.case,
            f"{t.median_s * 1e3:.3f}",
            "-" if t.spread is None else f"±{t.spread * 100:.1f}%",
            str(t.repeats),
            f"{t.throughput:.4g} {t.unit}/s",
            *_ratio_cells(t),
            *(_bound_cells(t) if bounded else []),
        ]
        row += [
            _format_metric(t.metrics[name]) if name in t.metrics else "" for name in metric_names
        ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_json(
    timings: Sequence[Timing], path: str | os.PathLike, environment: dict, options: dict
) -> Path:
    """Write ``timings`` with the ``environment`` and the run's ``options`` as JSON to ``path``
    (folders created); returns the path.

    >>> import json, tempfile
    >>> from leanvision.bench import Case, run_cases
    >>> timings = run_cases("demo", [Case("noop", lambda: None)], repeat=2)
    >>> path = write_json(timings, tempfile.mkdtemp() + "/run.json", {"cpu": "x"}, {"repeat": 2})
    >>> json.loads(path.read_text())["results"][0]["case"]
    'noop'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": environment,
        "options": options,
        "results": [t.to_dict() for t in timings],
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def write_plot(timings: Sequence[Timing], path: str | os.PathLike) -> Path:
    """Horizontal bars of throughput, one panel per (suite, group), baseline drawn grey; writes
    a PNG to ``path`` (needs matplotlib) and returns the path.

    >>> import tempfile
    >>> from leanvision.bench import Case, run_cases
    >>> timings = run_cases("demo", [Case("noop", lambda: None)], repeat=2)
    >>> write_plot(timings, tempfile.mkdtemp() + "/run.png").stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Timing]] = {}
    for timing in timings:
        groups.setdefault((timing.suite, timing.group), []).append(timing)
    figure, axes = plt.subplots(
        len(groups), 1, figsize=(8, 1.2 + 0.45 * len(timings) + 0.6 * len(groups)), squeeze=False
    )
    for axis, ((suite, group), rows) in zip(axes[:, 0], groups.items(), strict=True):
        colours = ["#999999" if row.baseline else "#3b7dd8" for row in rows]
        axis.barh([row.case for row in rows], [row.throughput for row in rows], color=colours)
        axis.invert_yaxis()
        axis.set_title(f"{suite}: {group}" if group else suite, fontsize=10)
        axis.set_xlabel(f"{rows[0].unit}/s")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

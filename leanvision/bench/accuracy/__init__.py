"""``leanvision bench accuracy``: how much accuracy each method keeps, on trained tiny models.

Speed benchmarks run on random weights; this one runs every method on the small trained
models of :mod:`leanvision.testing.trained`, offline, in minutes on a CPU:

* **VLM** (:mod:`.vlm`): every visual-token method at 50%, 25% and 12.5% of the tokens, with
  ``random`` and ``pool`` as baselines: accuracy, retention and prefill FLOPs ratio.
* **Diffusion** (:mod:`.diffusion`): every caching setting and the distilled LCM student on
  the trained shapes pipeline: PSNR/SSIM against the full run, the judge's accuracy and the
  MACs ratio.

>>> base = {"task": "t", "model": "m", "questions": 8, "kept": 1.0, "flops_ratio": 1.0}
>>> rows = [base | {"method": "uncompressed", "budget": 1.0, "accuracy": 0.9, "retention": 1.0},
...         base | {"method": "pool", "budget": 0.5, "accuracy": 0.45, "retention": 0.5}]
>>> print(retention_table(rows))
**t / m**: uncompressed 90.0% on 8 test questions
<BLANKLINE>
| method | 50% |
|---|---|
| pool | 45.0% (50%), 1.00 |
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TASKS",
    "diffusion_table",
    "format_tables",
    "retention_table",
    "run_accuracy",
    "write_plots",
    "write_results",
]

# Which rows each task family yields: module and function, imported only when asked for.
TASKS = {
    "vlm": ("leanvision.bench.accuracy.vlm", "vlm_accuracy_rows"),
    "diffusion": ("leanvision.bench.accuracy.diffusion", "diffusion_accuracy_rows"),
}


def run_accuracy(
    quick: bool = False, tasks: Sequence[str] = tuple(TASKS), progress: bool = True
) -> list[dict[str, Any]]:
    """The rows of ``tasks`` (``"vlm"``, ``"diffusion"``); ``quick`` scores fewer items."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown accuracy task(s) {unknown}; available: {sorted(TASKS)}")
    rows: list[dict[str, Any]] = []
    for task in tasks:
        module, function = TASKS[task]
        rows += getattr(importlib.import_module(module), function)(quick=quick, progress=progress)
    return rows


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if "accuracy" in row or "skipped" in row:
            groups.setdefault((row["task"], row["model"]), []).append(row)
    return groups


def _budget_label(budget: float | None) -> str:
    return "own" if budget is None else f"{budget:.1%}".replace(".0%", "%")


def retention_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown, one table per (task, model) under a title with the uncompressed accuracy: a
    line per method, a column per budget, each cell ``accuracy (retention), FLOPs ratio`` (the
    LM prefill's); methods that set their own token count (video) add the fraction they kept."""
    parts = []
    for (task, model), group in _groups(rows).items():
        base = next(row for row in group if row["method"] == "uncompressed")
        budgets = list(dict.fromkeys(row["budget"] for row in group if row is not base))
        cells: dict[str, dict[Any, str]] = {}
        for row in group:
            if row is base:
                continue
            if "skipped" in row:
                cell = "n/a"
            else:
                kept = f" @{row['kept']:.0%}" if row["budget"] is None else ""
                cell = f"{row['accuracy']:.1%} ({row['retention']:.0%}){kept}, "
                cell += f"{row['flops_ratio']:.2f}"
            cells.setdefault(row["method"], {})[row["budget"]] = cell
        header = ["method", *(_budget_label(budget) for budget in budgets)]
        lines = [
            f"**{task} / {model}**: uncompressed {base['accuracy']:.1%} "
            f"on {base['questions']} test questions",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for method, line in cells.items():
            lines.append(f"| {method} | " + " | ".join(line.get(b, "") for b in budgets) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def diffusion_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per diffusion setting with PSNR, SSIM, the judge's accuracy (all three
    attributes right, and colour alone) and the MACs ratio."""
    lines = ["**shapes-t2i / stable diffusion**", ""]
    lines.append("| method | setting | PSNR dB | SSIM | judge: all | judge: colour | MACs ratio |")
    lines.append("|---|---|---|---|---|---|---|")
    for row in rows:
        if "judge_accuracy" not in row:
            continue
        psnr = "ref" if row["psnr"] == float("inf") else f"{row['psnr']:.1f}"
        lines.append(
            f"| {row['method']} | {row['setting']} | {psnr} | {row['ssim']:.3f} | "
            f"{row['judge_accuracy']:.1%} | {row['judge_color']:.1%} | {row['macs_ratio']:.2f} |"
        )
    return "\n".join(lines) if len(lines) > 4 else ""


def write_plots(rows: Sequence[dict[str, Any]], directory: str | Path) -> list[Path]:
    """One PNG per (task, model): retention against the kept fraction, a line per method;
    returns the paths (``<directory>/accuracy-<task>-<model>.png``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for (task, model), group in _groups(rows).items():
        figure = Figure(figsize=(7, 4.5), dpi=110)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        methods: dict[str, list[tuple[float, float]]] = {}
        for row in group:
            if "retention" in row and row["method"] != "uncompressed":
                methods.setdefault(row["method"], []).append((row["kept"], row["retention"]))
        for method, points in sorted(methods.items()):
            points.sort()
            style = "--" if method in ("random", "pool") else "-"
            axes.plot(*zip(*points, strict=True), style, marker="o", label=method)
        axes.axhline(1.0, color="grey", linewidth=0.8)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("visual tokens kept (fraction)")
        axes.set_ylabel("accuracy retention")
        axes.set_title(f"{task} / {model}: retention against budget", fontsize=10)
        axes.legend(fontsize=7, ncol=2)
        path = Path(directory) / f"accuracy-{task}-{model}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
        paths.append(path)
    return paths


def write_results(
    rows: Sequence[dict[str, Any]], path: str | Path, environment: dict[str, Any]
) -> list[Path]:
    """Write the rows as JSON to ``path``, the tables as Markdown beside it (``.md``) and the
    plots in its folder; returns every path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment, "rows": rows}, indent=1) + "\n")
    tables = path.with_suffix(".md")
    tables.write_text(format_tables(rows) + "\n")
    return [path, tables, *write_plots(rows, path.parent)]


def format_tables(rows: Sequence[dict[str, Any]]) -> str:
    """The VLM retention tables, then the diffusion table (each when it has rows)."""
    return "\n\n".join(part for part in (retention_table(rows), diffusion_table(rows)) if part)

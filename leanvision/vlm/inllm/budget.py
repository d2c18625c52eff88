"""One budget for every in-LLM method, and stage layers that scale with the model's depth.

``keep`` (a ratio) or ``tokens`` (a count) is always the number of visual tokens left after
the LAST pruning stage; each method derives its earlier stages from it (PyramidDrop: a
geometric pyramid, ``keep ** (s / S)`` at stage ``s`` of ``S``; SparseVLM: the shape of its
paper's 300/200/110 schedule). ``ratios`` (one kept fraction per stage) is the per-stage
alternative. Without ``layers``, a method's stages sit at its paper's layers taken as
fractions of LLaVA-1.5-7B's 32 decoder layers, mapped onto the model's depth.

>>> scaled_layers((8, 16, 24), 32), scaled_layers((8, 16, 24), 4), scaled_layers((3, 7, 16), 2)
((8, 16, 24), (1, 2, 3), (1,))
>>> geometric_ratios(0.125, 3)
(0.5, 0.25, 0.125)
>>> [round(r * 576) for r in schedule_ratios(110 / 576, 3)]
[300, 200, 110]
"""

from __future__ import annotations

import math
from typing import Any

import torch

from leanvision.core.config import check_token_count_and_ratio
from leanvision.core.warn import warn_user

__all__ = [
    "REFERENCE_DEPTH",
    "check_overall_budget",
    "final_count",
    "geometric_ratios",
    "resolve_layers",
    "scaled_layers",
    "schedule_ratios",
]

# decoder layers of LLaVA-1.5-7B (Vicuna-7B), the model the papers' layer settings are for
REFERENCE_DEPTH = 32

# SparseVLM v1.5's schedule for LLaVA-1.5 (576 visual tokens), at stage fractions 1/3, 2/3, 1;
# 576 at 0 (every token) anchors stages that come before the first one of the paper
SCHEDULE_POINTS = ((0.0, 576.0), (1 / 3, 300.0), (2 / 3, 200.0), (1.0, 110.0))


def scaled_layers(layers: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """``layers`` of a 32-layer language model mapped onto a ``depth``-layer one:
    ``ceil(layer * depth / 32)``, each in ``1 .. depth - 1``; stages that collide merge."""
    if depth < 2:
        raise ValueError(
            f"in-LLM pruning needs a language model with at least 2 decoder layers, got {depth}"
        )
    scaled = {
        min(depth - 1, max(1, math.ceil(layer * depth / REFERENCE_DEPTH))) for layer in layers
    }
    return tuple(sorted(scaled))


def resolve_layers(
    name: str, layers: tuple[int, ...] | None, paper: tuple[int, ...], depth: int
) -> tuple[int, ...]:
    """The stage layers of a method on a ``depth``-layer language model: ``layers`` when given
    (``ValueError`` past the depth), else ``paper`` scaled (:func:`scaled_layers`)."""
    label = "layer" if name == "fastv" else "layers"
    if layers is not None:
        if layers[-1] > depth - 1:
            shown = layers[0] if name == "fastv" else list(layers)
            raise ValueError(
                f"{label}={shown!r} is past the language model's depth ({depth} decoder "
                f"layers); allowed: 1..{depth - 1}"
            )
        return tuple(layers)
    return scaled_layers(paper, depth)


def warn_collapsed(name: str, paper: tuple[int, ...], layers: tuple[int, ...], depth: int) -> None:
    """Tell the user when a shallow model leaves room for fewer stages than the paper's."""
    if len(layers) < len(paper):
        warn_user(
            f"{name}: this language model has {depth} decoder layers, too few for the "
            f"paper's {len(paper)} stages at layers {list(paper)} of {REFERENCE_DEPTH}; "
            f"pruning at layers={list(layers)} (pass layers= to choose)"
        )


def check_overall_budget(keep: Any, tokens: Any, ratios: Any) -> None:
    """``keep`` (ratio in (0, 1]) or ``tokens`` (int >= 1): the tokens left after the last
    stage; or ``ratios`` (one per stage). At most one of them."""
    given = [f"{n}={v!r}" for n, v in (("keep", keep), ("tokens", tokens), ("ratios", ratios))]
    given = [text for text in given if not text.endswith("=None")]
    if len(given) > 1:
        raise ValueError(
            f"pass one budget: keep= or tokens= (tokens left after the last stage) or ratios= "
            f"(one kept fraction per stage), got {', '.join(given)}"
        )
    for label, value in (("keep", keep), ("tokens", tokens)):
        if isinstance(value, (list, tuple)):
            raise TypeError(
                f"{label} is one overall budget (the visual tokens left after the last stage), "
                f"got {value!r}; for one kept fraction per stage pass ratios={tuple(value)!r}"
            )
    check_token_count_and_ratio(tokens, keep)


def final_count(visual_before: torch.Tensor, keep: float, tokens: int | None) -> torch.Tensor:
    """Visual tokens left after the last stage, ``(B,)`` out of ``visual_before`` ``(B,)``:
    ``tokens`` (``ValueError`` above a row's visual tokens) or ``round(n * keep)`` (>= 1)."""
    if tokens is not None:
        fewest = int(visual_before.min())
        if tokens > fewest:
            raise ValueError(
                f"tokens={tokens} is more than the prompt's {fewest} visual tokens; "
                f"allowed: 1..{fewest}"
            )
        return torch.full_like(visual_before, tokens)
    return (visual_before.double() * keep).round().long().clamp(min=1)


def geometric_ratios(keep: float, stages: int) -> tuple[float, ...]:
    """PyramidDrop's pyramid ending at ``keep``: ``keep ** (s / stages)`` for ``s = 1..stages``."""
    return tuple(round(keep ** (s / stages), 12) for s in range(1, stages + 1))


def schedule_curve(t: torch.Tensor) -> torch.Tensor:
    """SparseVLM's schedule (tokens of 576) at stage fraction ``t``, log-linear between the
    paper's stages."""
    xs = torch.tensor([p[0] for p in SCHEDULE_POINTS], dtype=torch.float64)
    ys = torch.tensor([p[1] for p in SCHEDULE_POINTS], dtype=torch.float64).log()
    upper = torch.searchsorted(xs, t.clamp(0, 1)).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[upper - 1], xs[upper], ys[upper - 1], ys[upper]
    return (y0 + (y1 - y0) * (t - x0) / (x1 - x0)).exp()


def schedule_shares(stages: int) -> torch.Tensor:
    """``(stages,)``: each stage's kept tokens relative to the last stage's, in the paper's
    schedule shape (``300/110, 200/110, 1`` for 3 stages)."""
    t = torch.arange(1, stages + 1, dtype=torch.float64) / stages
    return schedule_curve(t) / SCHEDULE_POINTS[-1][1]


def schedule_ratios(keep: float, stages: int) -> tuple[float, ...]:
    """SparseVLM's per-stage kept fractions ending at ``keep`` (each at most 1)."""
    return tuple(min(1.0, round(keep * float(s), 12)) for s in schedule_shares(stages))

"""Mergers: fold the information of dropped tokens into kept ones.

Mergers take a unit's ``(n, D)`` values (projected features, or the projector's inputs when
the merge happens before it) and return merged values, or ``(anchors, features)``: the slot
indices (sorted) and ``(k, D)`` features. Similarities use ViT keys (``(n, d)``) or the
features themselves, always by cosine. :func:`place` turns a method's ordered output into
slots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leanvision.vlm.selectors import complement


def keep_only(features: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """No merge: the kept tokens, sorted by position."""
    anchors = torch.sort(kept).values
    return anchors, features[anchors]


def place(
    sources: torch.Tensor, values: torch.Tensor, total: int, reorder: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots for a method's output tokens, given in the method's own order.

    ``sources`` ``(k,)``: the unit token each output token stands for, ``-1`` for a token
    made from several (VisionZip's CLS, PruMerge+'s extra token); ``values`` ``(k, D)``.
    With ``reorder`` (renumbered positions) the tokens fill slots ``0..k-1`` in the given
    order, so the LLM sees exactly that sequence. Otherwise each token sits at its source's
    slot (raster order); ``-1`` tokens before the first sourced one take the first free slots,
    the others the last free slots. Returns ``(anchors, features)``, anchors sorted.

    >>> place(torch.tensor([5, -1]), torch.eye(2), 8, False)[0].tolist()
    [5, 7]
    >>> place(torch.tensor([5, -1]), torch.eye(2), 8, True)[0].tolist()
    [0, 1]
    """
    count = int(sources.numel())
    device = values.device
    if reorder:
        return torch.arange(count, device=device), values
    sources = sources.to(device)
    real = sources >= 0
    free = complement(sources[real], total).to(device)
    synthetic = (~real).nonzero().squeeze(-1)
    first_real = int(real.nonzero()[0]) if bool(real.any()) else count
    leading = synthetic[synthetic < first_real]
    trailing = synthetic[synthetic >= first_real]
    slots = sources.clone()
    slots[leading] = free[: leading.numel()]
    if trailing.numel():
        slots[trailing] = free[free.numel() - trailing.numel() :]
    order = torch.argsort(slots)
    return slots[order], values[order]


def contextual_tokens(
    values: torch.Tensor, keys: torch.Tensor, rest: torch.Tensor, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's contextual tokens from the ``rest`` (sorted) of a unit's tokens.

    ``contextual`` targets are taken every ``len(rest) // contextual`` tokens of ``rest``
    (raster order); every other token of ``rest`` joins the target with the most similar key
    (cosine), and each contextual token is its target plus the mean of the tokens that joined
    it (the target alone when none did). Returns ``(targets, merged)``: ``(c,)`` unit indices
    and ``(c, D)`` float32 merged ``values``.
    """
    contextual = min(contextual, rest.numel())
    if contextual <= 0:
        return rest[:0], values.new_zeros(0, values.shape[1], dtype=torch.float32)
    step = max(1, rest.numel() // contextual)
    target_slots = torch.arange(0, rest.numel(), step, device=rest.device)[:contextual]
    is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=rest.device)
    is_target[target_slots] = True
    targets, others = rest[is_target], rest[~is_target]
    unit = F.normalize(keys.float(), dim=-1)
    assignment = (unit[others] @ unit[targets].T).argmax(dim=1)  # (others,)
    sums = values.new_zeros(targets.numel(), values.shape[1], dtype=torch.float32)
    sums.index_add_(0, assignment, values[others].float())
    counts = torch.zeros(targets.numel(), device=values.device)
    counts.index_add_(0, assignment, torch.ones(others.numel(), device=values.device))
    return targets, values[targets].float() + sums / counts.clamp(min=1).unsqueeze(-1)


def knn_weighted_merge(
    values: torch.Tensor,
    keys: torch.Tensor,
    scores: torch.Tensor,
    kept: torch.Tensor,
    neighbours: int,
) -> torch.Tensor:
    """PruMerge: each kept token (in the order of ``kept``) adds its ``neighbours`` most
    key-similar (cosine) other tokens of the unit, kept or not, weighted by their attention
    score: ``x_i + sum_j s_j x_j``. Returns ``(k, D)`` float32."""
    unit = F.normalize(keys.float(), dim=-1)
    similarity = unit[kept] @ unit.T  # (k, n)
    similarity[torch.arange(kept.numel(), device=kept.device), kept] = float("-inf")
    count = min(neighbours, values.shape[0] - 1)
    if count <= 0:
        return values[kept].float()
    nearest = similarity.topk(count, dim=1).indices  # (k, count)
    weights = torch.nan_to_num(scores.float(), neginf=0.0)[nearest].unsqueeze(-1)
    return values[kept].float() + (values.float()[nearest] * weights).sum(1)


def weighted_sum(values: torch.Tensor, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(D,)`` float32 ``sum_j s_j x_j`` over ``index``: PruMerge's extra token, which holds
    every token that was not kept, weighted by attention (weights are not normalised)."""
    weights = torch.nan_to_num(scores.float(), neginf=0.0)[index]
    return (values[index].float() * weights.unsqueeze(-1)).sum(0)


def bipartite_soft_matching(
    features: torch.Tensor, keys: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe: repeat bipartite matching until ``count`` tokens remain.

    Each round splits the survivors (in position order) into A (even) and B (odd), links each
    A token to its most similar B token (cosine of keys), and merges the ``r`` best-linked A
    tokens into their B partner, ``r = min(|A|, survivors - count)``. Features and keys are
    averaged weighted by how many original tokens each survivor holds.
    """
    anchors = torch.arange(features.shape[0], device=features.device)
    values = features.float()
    metric = keys.float()
    sizes = torch.ones(features.shape[0], device=features.device)
    while anchors.numel() > count:
        a, b = slice(0, None, 2), slice(1, None, 2)
        unit = F.normalize(metric, dim=-1)
        similarity = unit[a] @ unit[b].T
        best, partner = similarity.max(dim=1)
        merge = min(int(best.numel()), anchors.numel() - count)
        order = torch.sort(best, descending=True, stable=True).indices
        src, stay = order[:merge], order[merge:]
        dst = partner[src]
        size_a, size_b = sizes[a], sizes[b].clone()
        values_b = values[b] * size_b.unsqueeze(-1)
        metric_b = metric[b] * size_b.unsqueeze(-1)
        values_b.index_add_(0, dst, values[a][src] * size_a[src].unsqueeze(-1))
        metric_b.index_add_(0, dst, metric[a][src] * size_a[src].unsqueeze(-1))
        size_b.index_add_(0, dst, size_a[src])
        values_b, metric_b = values_b / size_b.unsqueeze(-1), metric_b / size_b.unsqueeze(-1)
        anchors_all = torch.cat([anchors[a][stay], anchors[b]])
        order_all = torch.argsort(anchors_all)
        anchors = anchors_all[order_all]
        values = torch.cat([values[a][stay], values_b])[order_all]
        metric = torch.cat([metric[a][stay], metric_b])[order_all]
        sizes = torch.cat([sizes[a][stay], size_b])[order_all]
    return anchors, values.to(features.dtype)


def pool_grid(
    features: torch.Tensor, grid: tuple[int, int], count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool an ``h x w`` raster to the largest ``h' x w'`` grid with ``h'w' <= count``
    (aspect kept). Each pooled token sits at its window's first (top-left) position."""
    height, width = grid
    scale = math.sqrt(count / (height * width))
    out_h = max(1, min(height, math.floor(height * scale + 1e-9)))
    out_w = max(1, min(width, count // out_h))
    image = features.float().T.reshape(1, -1, height, width)
    pooled = F.adaptive_avg_pool2d(image, (out_h, out_w))[0].reshape(features.shape[1], -1).T
    rows = torch.tensor([(i * height) // out_h for i in range(out_h)], device=features.device)
    cols = torch.tensor([(j * width) // out_w for j in range(out_w)], device=features.device)
    anchors = (rows[:, None] * width + cols[None, :]).reshape(-1)
    return anchors, pooled.to(features.dtype)


def pool_sequence(features: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D average pooling to ``count`` tokens, for units without a regular grid."""
    n = features.shape[0]
    pooled = F.adaptive_avg_pool1d(features.float().T.unsqueeze(0), count)[0].T
    anchors = torch.tensor([(i * n) // count for i in range(count)], device=features.device)
    return anchors, pooled.to(features.dtype)


def pool_stride(
    features: torch.Tensor, grid: tuple[int, int], stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool an ``h x w`` raster with ``stride x stride`` windows (edge windows
    smaller); each pooled token sits at its window's top-left position."""
    height, width = grid
    image = features.float().T.reshape(1, -1, height, width)
    pooled = F.avg_pool2d(image, stride, stride, ceil_mode=True, count_include_pad=False)
    pooled = pooled[0].reshape(features.shape[1], -1).T
    rows = torch.arange(0, height, stride, device=features.device)
    cols = torch.arange(0, width, stride, device=features.device)
    anchors = (rows[:, None] * width + cols[None, :]).reshape(-1)
    return anchors, pooled.to(features.dtype)

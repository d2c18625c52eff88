"""Mergers: fold the information of dropped tokens into kept ones.

Each merger takes a unit's ``(n, D)`` features and returns ``(anchors, features)``: the kept
token indices (sorted) and their new ``(k, D)`` features. Similarities use ViT keys (``(n, d)``)
or the features themselves, always by cosine.
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


def contextual_merge(
    features: torch.Tensor, keys: torch.Tensor, dominant: torch.Tensor, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip: keep ``dominant`` tokens and merge the rest into ``contextual`` tokens.

    The remaining tokens (in raster order) give ``contextual`` evenly strided targets (stride
    ``remaining // contextual``); every other remaining token joins the target with the most
    similar key (cosine), and each contextual token is its target plus the mean of the tokens
    that joined it (the target alone when none did), as in VisionZip. It sits at its target's
    position.
    """
    n = features.shape[0]
    rest = complement(dominant, n)
    anchors = [dominant]
    new_features = [features[dominant]]
    if contextual > 0 and rest.numel() > 0:
        contextual = min(contextual, rest.numel())
        step = max(1, rest.numel() // contextual)
        target_slots = torch.arange(0, rest.numel(), step, device=features.device)[:contextual]
        is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=features.device)
        is_target[target_slots] = True
        targets, others = rest[is_target], rest[~is_target]
        unit = F.normalize(keys.float(), dim=-1)
        similarity = unit[others] @ unit[targets].T  # (others, targets)
        assignment = similarity.argmax(dim=1)
        sums = torch.zeros(targets.numel(), features.shape[1], device=features.device)
        sums.index_add_(0, assignment, features[others].float())
        counts = torch.zeros(targets.numel(), device=features.device)
        counts.index_add_(0, assignment, torch.ones(others.numel(), device=features.device))
        merged = features[targets].float() + sums / counts.clamp(min=1).unsqueeze(-1)
        anchors.append(targets)
        new_features.append(merged.to(features.dtype))
    anchors_all = torch.cat(anchors)
    order = torch.argsort(anchors_all)
    return anchors_all[order], torch.cat(new_features)[order]


def knn_weighted_merge(
    features: torch.Tensor,
    keys: torch.Tensor,
    scores: torch.Tensor,
    kept: torch.Tensor,
    neighbours: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PruMerge: each kept token adds its ``neighbours`` most key-similar other tokens,
    weighted by their attention score: ``x_i + sum_j s_j x_j``."""
    anchors = torch.sort(kept).values
    unit = F.normalize(keys.float(), dim=-1)
    similarity = unit[anchors] @ unit.T  # (k, n)
    similarity[torch.arange(anchors.numel()), anchors] = float("-inf")  # not itself
    count = min(neighbours, features.shape[0] - 1)
    if count <= 0:
        return anchors, features[anchors]
    nearest = similarity.topk(count, dim=1).indices  # (k, count)
    weights = torch.nan_to_num(scores.float(), neginf=0.0)[nearest].unsqueeze(-1)
    update = (features.float()[nearest] * weights).sum(1)
    return anchors, (features[anchors].float() + update).to(features.dtype)


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

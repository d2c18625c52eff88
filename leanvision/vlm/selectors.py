"""Selectors: which of a unit's ``n`` visual tokens to keep, given scores/keys/features.

Every selector returns a 1-D ``LongTensor`` of token indices (not necessarily sorted). They
know nothing of models; shapes are ``(n,)`` scores, ``(n, d)`` keys or features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def top_k(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores (ties: lower index first).

    >>> top_k(torch.tensor([0.1, 0.5, 0.2]), 2).tolist()
    [1, 2]
    """
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[:count]


def iqr_outliers(scores: torch.Tensor) -> torch.Tensor:
    """Indices whose score lies above ``Q3 + 1.5 * IQR`` (PruMerge's adaptive selection).

    >>> iqr_outliers(torch.tensor([1.0, 1.1, 0.9, 1.0, 9.0])).tolist()
    [4]
    """
    values = scores.float()
    finite = values[torch.isfinite(values)]
    q1, q3 = torch.quantile(finite, 0.25), torch.quantile(finite, 0.75)
    return (values > q3 + 1.5 * (q3 - q1)).nonzero().squeeze(-1)


def evenly_spaced(candidates: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` entries of ``candidates`` spread evenly over it (raster order = spatially
    uniform), first and last included.

    >>> evenly_spaced(torch.arange(10), 3).tolist()
    [0, 4, 9]
    """
    if count <= 0 or candidates.numel() == 0:
        return candidates[:0]
    count = min(count, candidates.numel())
    positions = torch.linspace(0, candidates.numel() - 1, count, device=candidates.device)
    return candidates[positions.round().long()]


def complement(indices: torch.Tensor, total: int) -> torch.Tensor:
    """Sorted indices in ``range(total)`` that are not in ``indices``."""
    keep = torch.ones(total, dtype=torch.bool, device=indices.device)
    keep[indices] = False
    return keep.nonzero().squeeze(-1)


def max_min_diversity(features: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy max-min diversity on cosine distance (DivPrune).

    The first token is the one farthest from its nearest neighbour; each next token is the
    one whose distance to the already selected set (its closest selected token) is largest.
    Returns the indices in selection order.

    >>> max_min_diversity(torch.tensor([[1.0, 0], [0.99, 0.1], [0, 1.0]]), 2).tolist()
    [2, 0]
    """
    unit = F.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.T
    n = distance.shape[0]
    count = min(count, n)
    eye = torch.eye(n, dtype=torch.bool, device=distance.device)
    nearest = distance.masked_fill(eye, float("inf")).min(dim=1).values
    if n == 1:
        nearest = torch.zeros(1, device=distance.device)
    chosen = [int(torch.argmax(nearest))]
    closest = distance[chosen[0]].clone()  # distance of every token to the selected set
    for _ in range(count - 1):
        closest[chosen] = float("-inf")
        pick = int(torch.argmax(closest))
        chosen.append(pick)
        closest = torch.minimum(closest, distance[pick])
    return torch.tensor(chosen, dtype=torch.long, device=features.device)


def random_subset(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct indices drawn uniformly from ``range(n)`` with ``generator``."""
    return torch.randperm(n, generator=generator)[:count]

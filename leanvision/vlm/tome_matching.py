"""ToMe's token arithmetic for :mod:`leanvision.vlm.tome`: how many tokens each ViT block
merges (the schedule), the bipartite soft-matching plan of one block, size-weighted merging,
and the first member of every group.

>>> merge_schedule(577, protected=1, blocks=23, target=64)[:4]
[23, 23, 23, 23]
"""

from __future__ import annotations

import torch


def constant_schedule(tokens: int, protected: int, blocks: int, r: int) -> list[int]:
    """ToMe's constant ``r`` per block, capped at half the unprotected tokens of each block."""
    schedule = []
    for _ in range(blocks):
        step = min(r, (tokens - protected) // 2)
        schedule.append(step)
        tokens -= step
    return schedule


def _most_merged(tokens: int, protected: int, blocks: int) -> int:
    """Most tokens ``blocks`` blocks can merge away, each halving the unprotected ones."""
    removed = 0
    for _ in range(blocks):
        step = (tokens - protected) // 2
        removed, tokens = removed + step, tokens - step
    return removed


def merge_schedule(tokens: int, protected: int, blocks: int, target: int) -> list[int]:
    """Tokens merged in each of ``blocks`` blocks so that ``target`` unprotected tokens are
    left of ``tokens`` (``protected`` never merged): as even as possible, earlier blocks taking
    the remainder, and front-loaded where later blocks could not take their share.

    >>> merge_schedule(65, protected=1, blocks=3, target=16)
    [16, 16, 16]
    """
    remaining = tokens - protected - target
    most = _most_merged(tokens, protected, blocks)
    if remaining > most:
        raise ValueError(
            f"{blocks} ViT block(s) can merge {tokens - protected} tokens down to no fewer than "
            f"{tokens - protected - most} (each block at most halves them); asked for {target}. "
            "Use a larger tokens=/keep="
        )
    schedule = []
    for index in range(blocks):
        left = blocks - index
        step = min(-(-remaining // left), (tokens - protected) // 2)
        while remaining - step > _most_merged(tokens - step, protected, left - 1):
            step += 1
        schedule.append(step)
        tokens, remaining = tokens - step, remaining - step
    return schedule


def bipartite_plan(
    metric: torch.Tensor, r: int, protect_first: bool
) -> tuple[torch.Tensor, int] | None:
    """Where each token goes when ToMe merges ``r`` of ``metric``'s ``(B, t, d)`` tokens.

    Returns ``(B, t)`` indices into the ``t - r`` merged tokens and ``t - r``, laid out as in
    ToMe: the unmerged A tokens first (in position order when the first token is protected,
    else by descending similarity), then every B token; ``None`` when nothing is merged.
    """
    batch, length, _ = metric.shape
    r = min(r, (length - int(protect_first)) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|)
        if protect_first:
            scores[:, 0, :] = float("-inf")
        best, partner = scores.max(dim=-1)
        order = torch.sort(best, dim=-1, descending=True, stable=True).indices
        merged, unmerged = order[:, :r], order[:, r:]
        if protect_first:
            unmerged = unmerged.sort(dim=-1).values
        kept = unmerged.shape[1]
        device = metric.device
        a_index = torch.empty_like(best, dtype=torch.long)
        a_index.scatter_(1, unmerged, torch.arange(kept, device=device).expand(batch, -1))
        a_index.scatter_(1, merged, kept + partner.gather(1, merged))
        plan = torch.empty(batch, length, dtype=torch.long, device=device)
        plan[:, ::2] = a_index
        plan[:, 1::2] = kept + torch.arange(length // 2, device=device)
    return plan, length - r


def merge_by_size(
    hidden: torch.Tensor, sizes: torch.Tensor | None, plan: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted means of ``hidden`` ``(B, t, D)`` into ``length`` tokens by ``plan``
    ``(B, t)``; returns them and their sizes ``(B, length)`` (original tokens each holds)."""
    batch, _, width = hidden.shape
    accumulate = torch.promote_types(hidden.dtype, torch.float32)
    if sizes is None:
        sizes = torch.ones(plan.shape, dtype=accumulate, device=hidden.device)
    new_sizes = torch.zeros(batch, length, dtype=sizes.dtype, device=hidden.device)
    new_sizes.scatter_add_(1, plan, sizes)
    sums = torch.zeros(batch, length, width, dtype=accumulate, device=hidden.device)
    weighted = hidden.to(accumulate) * sizes.unsqueeze(-1).to(accumulate)
    sums.scatter_add_(1, plan.unsqueeze(-1).expand(-1, -1, width), weighted)
    merged = sums / new_sizes.unsqueeze(-1).to(accumulate)
    return merged.to(hidden.dtype), new_sizes


def first_of_group(groups: torch.Tensor) -> torch.Tensor:
    """``(B, n)`` index of the first token with the same group id, for ``(B, n)`` ids."""
    batch, length = groups.shape
    positions = torch.arange(length, device=groups.device).expand(batch, -1)
    first = torch.full((batch, int(groups.max()) + 1), length, device=groups.device)
    first.scatter_reduce_(1, groups, positions, reduce="amin")
    return first.gather(1, groups)

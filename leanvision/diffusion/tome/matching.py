"""Bipartite soft matching on a 2-D token grid, the core of ToMe for Stable Diffusion.

Bolya & Hoffman (2023), "Token Merging for Fast Stable Diffusion": the tokens of an
``height x width`` grid are split into destinations (one per ``sy x sx`` cell, picked at
random or the top-left one) and sources (everything else). Every source is paired with its
most cosine-similar destination; the ``merge_count`` sources with the best pairs are averaged
into their destination, the rest pass through. Attention then runs on
``N - merge_count`` tokens, and *unmerging* copies each destination's output back to the
sources merged into it, so the block's residual stream keeps all ``N`` tokens.

Everything here is pure torch on any device. No host/device synchronisation happens while
matching (no ``nonzero``, no ``.item()``), so a CUDA pipeline keeps its launch queue full.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

_MASK31 = 0x7FFFFFFF  # keep hash values below 2**31 so products of two stay inside int64


def _mix(values: torch.Tensor) -> torch.Tensor:
    """Scramble non-negative int64 values below 2**31 (xorshift-multiply rounds)."""
    for multiplier in (0x2C1B3C6D, 0x297A2D39, 0x1B873593):
        values = ((values ^ (values >> 15)) * multiplier) & _MASK31
    return values ^ (values >> 16)


def destination_choices(
    rows: int, cols: int, cells: int, key: torch.Tensor | int, device: torch.device | str
) -> torch.Tensor:
    """Which of the ``cells`` positions of each of ``rows x cols`` grid cells is the destination.

    A counter-based hash of ``key`` and the cell's index, so the choice is random-looking,
    the same on every device, and costs no generator state or host synchronisation. ``key`` is
    an int or an int64 tensor of one element (it may live on the GPU).

    >>> choice = destination_choices(2, 3, 4, key=7, device="cpu")
    >>> choice.shape, bool(((choice >= 0) & (choice < 4)).all())
    (torch.Size([2, 3]), True)
    """
    key = torch.as_tensor(key, dtype=torch.int64, device=device).reshape(-1)[:1]
    index = torch.arange(rows * cols, dtype=torch.int64, device=device)
    mixed = _mix((_mix(key & _MASK31) + index * 0x9E3779B1) & _MASK31)
    return (mixed % cells).reshape(rows, cols)


def grid_partition(
    height: int, width: int, sx: int, sy: int, choices: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and destination token positions (raster order) of a ``height x width`` grid.

    Each full ``sy x sx`` cell contributes one destination: cell position ``choices[i, j]``
    (``dy * sx + dx``; all zeros, the top-left token, when ``choices`` is None). Rows and
    columns left over when ``sy``/``sx`` do not divide the grid are all sources. Both index
    tensors are sorted ascending.

    >>> src, dst = grid_partition(2, 2, sx=2, sy=2)
    >>> src.tolist(), dst.tolist()
    ([1, 2, 3], [0])
    """
    rows, cols = height // sy, width // sx
    device = choices.device if choices is not None else torch.device("cpu")
    if choices is None:
        choices = torch.zeros(rows, cols, dtype=torch.int64, device=device)
    dy, dx = choices // sx, choices % sx
    row = torch.arange(rows, device=device)[:, None] * sy + dy
    col = torch.arange(cols, device=device)[None, :] * sx + dx
    is_dst = torch.zeros(height * width, dtype=torch.uint8, device=device)
    is_dst[(row * width + col).reshape(-1)] = 1
    # A stable sort of the 0/1 mask lists sources then destinations, each in raster order;
    # the split point is known on the host, so no nonzero() (a device sync) is needed.
    order = torch.sort(is_dst, stable=True).indices
    num_dst = rows * cols
    return order[: order.numel() - num_dst], order[order.numel() - num_dst :]


def _expand(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index[..., None].expand(*index.shape, channels)


@dataclasses.dataclass
class TokenMerge:
    """One matching: ``merge`` shrinks ``(B, N, C)`` tokens to ``(B, N - merged, C)``,
    ``unmerge`` restores ``(B, N, C)``.

    Merged layout: the unmerged sources (best-matched first), then every destination in
    raster order. ``kept`` / ``moved`` index the sources; ``moved_into`` indexes the
    destinations; all three are ``(B, ·)`` because each image matches its own tokens.
    """

    num_tokens: int
    src_positions: torch.Tensor  # (Ns,)
    dst_positions: torch.Tensor  # (Nd,)
    kept: torch.Tensor  # (B, Ns - r) unmerged sources
    moved: torch.Tensor  # (B, r) sources averaged into a destination
    moved_into: torch.Tensor  # (B, r) destination of each moved source

    @property
    def merged_count(self) -> int:
        return self.moved.shape[1]

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """Average each moved source into its destination; ``(B, N, C) -> (B, N - r, C)``."""
        channels = x.shape[-1]
        src = x.index_select(1, self.src_positions)
        dst = x.index_select(1, self.dst_positions)
        kept = src.gather(1, _expand(self.kept, channels))
        moved = src.gather(1, _expand(self.moved, channels))
        # "mean" with include_self: a destination becomes the mean of itself and its sources.
        dst = dst.scatter_reduce(1, _expand(self.moved_into, channels), moved, reduce="mean")
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """Give each source the output of the token it became; ``(B, N - r, C) -> (B, N, C)``."""
        batch, _, channels = y.shape
        num_kept = self.kept.shape[1]
        kept, dst = y[:, :num_kept], y[:, num_kept:]
        out = y.new_empty(batch, self.num_tokens, channels)
        # The three writes cover destinations, kept and moved sources: every position once.
        out.index_copy_(1, self.dst_positions, dst)
        out.scatter_(1, _expand(self.src_positions[self.kept], channels), kept)
        moved_out = dst.gather(1, _expand(self.moved_into, channels))
        out.scatter_(1, _expand(self.src_positions[self.moved], channels), moved_out)
        return out


@torch.no_grad()
def bipartite_soft_matching_2d(
    metric: torch.Tensor,
    height: int,
    width: int,
    sx: int,
    sy: int,
    merge_count: int,
    choices: torch.Tensor | None = None,
) -> TokenMerge | None:
    """Match ``metric`` tokens ``(B, height*width, C)`` and plan merging ``merge_count`` of them.

    Destinations are one token per ``sy x sx`` cell (``choices``, see :func:`grid_partition`).
    Returns None when nothing would merge (``merge_count <= 0`` or no destination), so the
    caller can skip the block untouched. ``merge_count`` is capped at the number of sources.

    >>> tokens = torch.randn(2, 16, 8)
    >>> plan = bipartite_soft_matching_2d(tokens, 4, 4, sx=2, sy=2, merge_count=8)
    >>> plan.merge(tokens).shape, plan.unmerge(plan.merge(tokens)).shape
    (torch.Size([2, 8, 8]), torch.Size([2, 16, 8]))
    """
    batch, num_tokens, _ = metric.shape
    if num_tokens != height * width:
        raise ValueError(
            f"metric has {num_tokens} tokens but the grid is {height}x{width}={height * width}"
        )
    # Build the partition where the tokens live: no host-to-device copy per block.
    if choices is None:
        choices = torch.zeros(height // sy, width // sx, dtype=torch.int64, device=metric.device)
    choices = choices.to(metric.device)
    src_positions, dst_positions = grid_partition(height, width, sx, sy, choices)
    src_positions = src_positions.to(metric.device)
    dst_positions = dst_positions.to(metric.device)
    merge_count = min(merge_count, src_positions.numel())
    if merge_count <= 0 or dst_positions.numel() == 0:
        return None
    unit = F.normalize(metric, dim=-1)  # cosine similarity = dot product of unit vectors
    scores = unit.index_select(1, src_positions) @ unit.index_select(1, dst_positions).mT
    best_score, best_dst = scores.max(dim=-1)  # (B, Ns)
    ranked = best_score.argsort(dim=-1, descending=True)
    moved = ranked[:, :merge_count]
    return TokenMerge(
        num_tokens=num_tokens,
        src_positions=src_positions,
        dst_positions=dst_positions,
        kept=ranked[:, merge_count:],
        moved=moved,
        moved_into=best_dst.gather(1, moved),
    )

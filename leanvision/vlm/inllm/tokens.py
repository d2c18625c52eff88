"""The token sets of in-LLM pruning and how masks, positions and rows follow them.

A stage's set lists, per row, the prompt tokens a decoder layer sees, in sequence order (which
is also the causal order). Each token is named by its *original* prompt position
(``Tokens.index``); a token a stage creates (SparseVLM's recycled tokens) is inserted right
after an existing one and borrows that token's original position, so ``index`` is
non-decreasing and a repeated value marks an inserted token. Whatever transformers built for
the full prompt (4-D mask rows/columns, 2-D padding mask, 1-D or M-RoPE positions, RoPE
cos/sin) is gathered at ``index``; where tokens repeat, the gathered 4-D mask is also made
causal in sequence order, so an inserted token sees the token it follows and is seen only by
the tokens after it.

>>> tokens = Tokens(torch.tensor([[0, 2, 2, 3]]), torch.tensor([[False, True, True, False]]),
...                 None, torch.tensor([3]))
>>> tokens.repeats, tokens.locate(torch.tensor([[3]])).tolist()
(True, [[3]])
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass
class Tokens:
    """The token set one stage works on, per row (all rows the same length ``L_s``).

    ``index`` ``(B, L_s)``: non-decreasing original prompt positions (a repeat is a token
    inserted after the one it repeats); ``visual`` ``(B, L_s)`` bool: ranking candidates;
    ``padding`` ``(B, L_s)`` bool or None (True = padding); ``last`` ``(B,)``: where the
    prompt's last real token (the last instruction token) sits in this set; ``separator``
    ``(B, L_s)`` bool or None: image-separator tokens (LLaVA-NeXT/OneVision newlines), which
    carry the image placeholder id but are never candidates; ``source`` ``(B, L_s)``: where
    each token sat in the previous set (None for the prompt); ``inserted`` ``(B, R)``: the
    positions of the tokens the stage created (None when it created none).
    """

    index: torch.Tensor
    visual: torch.Tensor
    padding: torch.Tensor | None
    last: torch.Tensor
    separator: torch.Tensor | None = None
    source: torch.Tensor | None = None
    inserted: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.index.shape[1])

    @property
    def repeats(self) -> bool:
        """Whether some original position appears twice (inserted tokens are present)."""
        return bool((self.index[:, 1:] == self.index[:, :-1]).any())

    @property
    def image(self) -> torch.Tensor:
        """``(B, L_s)`` bool: image placeholder tokens (candidates and separators)."""
        return self.visual if self.separator is None else self.visual | self.separator

    def locate(self, original: torch.Tensor) -> torch.Tensor:
        """Where original positions ``(B, n)`` (which must be kept) sit in this set (the first
        occurrence: a repeated position is the kept token, then what was inserted after it)."""
        return torch.searchsorted(self.index, original.to(self.index.device))


@dataclasses.dataclass
class Selection:
    """What a stage keeps, in the coordinates of the tokens entering it.

    ``keep`` ``(B, L')`` non-decreasing indices into the current set; an index repeated ``r``
    times inserts ``r - 1`` new tokens right after that token, whose hidden states are
    ``values`` ``(B, R, D)`` at positions ``replace`` ``(B, R)`` of the kept set (the rows that
    repeat an index). ``visual`` ``(B, L')``: which kept tokens are candidates from now on.
    """

    keep: torch.Tensor
    visual: torch.Tensor
    replace: torch.Tensor | None = None
    values: torch.Tensor | None = None


def expand_batch(tensor: torch.Tensor, batch: int, dim: int = 0) -> torch.Tensor:
    if tensor.shape[dim] == batch:
        return tensor
    shape = [-1] * tensor.dim()
    shape[dim] = batch
    return tensor.expand(*shape)


def gather_mask(mask: Any, rows: torch.Tensor | None, columns: torch.Tensor) -> Any:
    """Keep mask rows ``rows`` (or all) and key columns ``columns`` ``(B, n)`` of a 4-D
    ``(B, 1, Lq, Lk)`` or 2-D ``(B, Lk)`` mask; ``None`` stays ``None``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(
            f"in-LLM pruning needs a tensor attention mask in the decoder layers, got "
            f"{type(mask).__name__}; use attn_implementation 'sdpa', 'eager' or 'flash_attention_2'"
        )
    batch = columns.shape[0]
    columns = columns.to(mask.device)
    if mask.dim() == 2:
        return expand_batch(mask, batch).gather(1, columns)
    mask = expand_batch(mask, batch)
    heads, length_q = mask.shape[1], mask.shape[2]
    if rows is not None:
        rows = rows.to(mask.device)
        index = rows[:, None, :, None].expand(-1, heads, -1, mask.shape[3])
        mask = mask.gather(2, index)
        length_q = rows.shape[1]
    index = columns[:, None, None, :].expand(-1, heads, length_q, -1)
    return mask.gather(3, index)


def causal_in_order(mask: Any) -> Any:
    """A gathered square 4-D mask, also blocking every key after the query in sequence order
    (tokens that share an original position would otherwise see each other); 2-D masks and
    ``None`` are causal in sequence order already (flash attention, SDPA's ``is_causal``).

    >>> causal_in_order(torch.ones(1, 1, 2, 2, dtype=torch.bool)).int().tolist()
    [[[[1, 0], [1, 1]]]]
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        return mask
    length = mask.shape[-1]
    later = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
    if mask.dtype == torch.bool:
        return mask & ~later
    return mask.masked_fill(later, torch.finfo(mask.dtype).min)


def gather_positions(positions: Any, index: torch.Tensor, length: int) -> Any:
    """Gather the last dim of ``(B, L)`` / ``(R, B, L)`` position ids (other shapes pass)."""
    if not isinstance(positions, torch.Tensor) or positions.shape[-1] != length:
        return positions
    index = index.to(positions.device)
    if positions.dim() == 2:
        return expand_batch(positions, index.shape[0]).gather(1, index)
    if positions.dim() == 3:
        positions = expand_batch(positions, index.shape[0], dim=1)
        return positions.gather(2, index.unsqueeze(0).expand(positions.shape[0], -1, -1))
    return positions


def gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(B', L, D)`` -> ``(B, n, D)`` rows ``index`` ``(B, n)`` of each sequence."""
    tensor = expand_batch(tensor, index.shape[0])
    index = index.to(tensor.device)
    return tensor.gather(1, index.unsqueeze(-1).expand(-1, -1, tensor.shape[-1]))


def next_tokens(tokens: Tokens, selection: Selection) -> Tokens:
    """The set a stage leaves: ``tokens`` filtered (and extended) by ``selection``."""
    keep = selection.keep.to(tokens.index.device)
    index = tokens.index.gather(1, keep)
    padding = None if tokens.padding is None else tokens.padding.gather(1, keep)
    separator = None if tokens.separator is None else tokens.separator.gather(1, keep)
    replace = None
    if selection.replace is not None and selection.replace.numel():
        replace = selection.replace.to(keep.device)
        if separator is not None:  # a token inserted after a separator is not one
            separator = separator.scatter(1, replace, False)
    last_original = tokens.index.gather(1, tokens.last.unsqueeze(-1))
    new = Tokens(index, selection.visual.to(keep.device), padding, tokens.last, separator)
    new.last = new.locate(last_original).squeeze(-1)
    new.source, new.inserted = keep, replace
    return new

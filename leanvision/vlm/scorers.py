"""Scorers: what a method reads from the model to rank or compare visual tokens.

Attention scores and keys come from one ViT block through :mod:`leanvision.vlm.capture`
(``kernels.attention_scores``, no attention matrix); these helpers say which block and which
query rows, and compute the few feature-space similarities methods need.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from leanvision.vlm.adapters.base import ScoreRequest


@dataclasses.dataclass
class Unit:
    """The tokens one selection sees: an image (or crop), or one video frame.

    ``features`` ``(n, D)``; ``scores`` ``(n,)`` or None; ``keys`` ``(n, d)`` or None;
    ``grid`` ``(h, w)`` when the tokens are exactly that raster.
    """

    features: torch.Tensor
    scores: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index: torch.Tensor) -> Unit:
        """The unit restricted to ``index`` (raster layout is lost)."""
        return Unit(
            features=self.features[index],
            scores=None if self.scores is None else self.scores[index],
            keys=None if self.keys is None else self.keys[index],
        )


def attention_request(layer: int, query: str = "auto", keys: bool = False) -> ScoreRequest:
    """Scores from ViT block ``layer``: the CLS row (``"cls"``), all rows (``"all"``), or CLS
    when the tower has one (``"auto"``); plus the block's keys when ``keys``."""
    return ScoreRequest(layer=layer, query=query, scores=True, keys=keys)


def keys_request(layer: int) -> ScoreRequest:
    """Only the keys of ViT block ``layer`` (ToMe's similarity metric)."""
    return ScoreRequest(layer=layer, scores=False, keys=True)


NO_REQUEST = ScoreRequest(scores=False, keys=False)


def frame_similarity(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``(n,)`` cosine similarity of each token with the same position in the previous frame."""
    return F.cosine_similarity(previous.float(), current.float(), dim=-1)

"""Scorers: what a method reads from the model to rank or compare visual tokens.

Attention scores and keys come from one ViT block through :mod:`leanvision.vlm.capture`
(``kernels.attention_scores``, no attention matrix); these helpers say which block and which
query rows, and compute the few feature-space similarities methods need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from leanvision.vlm.adapters.base import ScoreRequest


@dataclasses.dataclass
class Unit:
    """The tokens one selection sees: an image (or crop), or one video frame.

    ``features`` ``(n, D)``; ``scores`` ``(n,)`` or None; ``keys`` ``(n, d)`` or None;
    ``grid`` ``(h, w)`` when the tokens are exactly that raster. ``vision`` ``(n, Dv)``
    pre-projector features and ``project`` (token-wise, ``(k, Dv) -> (k, D)``) when merges
    can happen before the projector; ``cls`` ``(Dv,)`` the pre-projector CLS feature the
    model dropped. ``reorder``: positions are renumbered, so a method may return its tokens in
    its own order in the unit's first slots (see :func:`leanvision.vlm.mergers.place`).
    """

    features: torch.Tensor
    scores: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    vision: torch.Tensor | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None
    cls: torch.Tensor | None = None
    reorder: bool = False

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index: torch.Tensor) -> Unit:
        """The unit restricted to ``index`` (raster layout is lost)."""
        return dataclasses.replace(
            self,
            features=self.features[index],
            scores=None if self.scores is None else self.scores[index],
            keys=None if self.keys is None else self.keys[index],
            vision=None if self.vision is None else self.vision[index],
            grid=None,
        )

    def merge_space(self) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """``(values, finish)``: the features merges are computed on, and what turns merged
        values into LLM features: the pre-projector features and the projector when known,
        else the projected features and the identity."""
        if self.vision is not None and self.project is not None:
            project = self.project
            dtype = self.features.dtype

            def finish(values: torch.Tensor) -> torch.Tensor:
                return project(values.to(self.vision.dtype)).to(dtype)

            return self.vision, finish
        return self.features, lambda values: values.to(self.features.dtype)


def attention_request(
    layer: int,
    query: str = "auto",
    keys: bool = False,
    heads: str = "mean",
    vision: bool = False,
    cls: bool = False,
) -> ScoreRequest:
    """Scores from ViT block ``layer``: the CLS row (``"cls"``), all rows (``"all"``), or CLS
    when the tower has one (``"auto"``), per-head softmaxes averaged (``heads="mean"``) or one
    softmax over the concatenated heads (``"concat"``); plus the block's keys when ``keys``,
    the pre-projector features when ``vision`` and the dropped CLS feature when ``cls``."""
    return ScoreRequest(
        layer=layer, query=query, scores=True, keys=keys, heads=heads, vision=vision, cls=cls
    )


def keys_request(layer: int) -> ScoreRequest:
    """Only the keys of ViT block ``layer`` (ToMe's similarity metric)."""
    return ScoreRequest(layer=layer, scores=False, keys=True)


NO_REQUEST = ScoreRequest(scores=False, keys=False)


def frame_similarity(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``(n,)`` cosine similarity of each token with the same position in the previous frame."""
    return F.cosine_similarity(previous.float(), current.float(), dim=-1)

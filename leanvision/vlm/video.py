"""Video methods: merge tokens across frames, pool long videos progressively.

``temporal`` (AuroraCap/PVC style): a frame's token that is similar (cosine > ``threshold``)
to the token at the same position in the previous frame joins it instead of being kept; each
run of similar tokens becomes one token (their mean) at the run's first position. It composes
with any image method through ``then``: ``compress(model, "temporal", then="visionzip",
tokens=32)`` then applies VisionZip to each frame's surviving tokens (``tokens``/``keep`` go to
``then``).

``progressive_pool`` (Visual Context Window Extension): the first frame of every ``group``
keeps all its tokens, the others are average-pooled by ``stride`` in space.

>>> Temporal(threshold=0.8, then="pool", keep=0.5).then_config().keep
0.5
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from leanvision.core.config import MethodConfig, check_range
from leanvision.vlm import mergers
from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment, VLMAdapter
from leanvision.vlm.methods import BudgetConfig, compress_frames
from leanvision.vlm.prefill import install_prefill
from leanvision.vlm.registry import METHODS
from leanvision.vlm.scorers import NO_REQUEST, Unit, frame_similarity


def _check_video_model(name: str, model: Any, adapter: VLMAdapter) -> None:
    if not adapter.supports_video:
        raise ValueError(
            f"{name!r} is a video method but {adapter.name} models take images only; "
            "video families: llava_onevision, qwen2_vl"
        )


@dataclasses.dataclass
class Temporal(BudgetConfig):
    """Merge each frame's tokens that repeat the previous frame (cosine > ``threshold``),
    then optionally apply the image method ``then`` (a name or config) to every frame."""

    threshold: float = 0.9
    then: str | MethodConfig | None = None

    def validate(self) -> None:
        super().validate()
        check_range("threshold", self.threshold, low=-1.0, high=1.0)
        if self.then is not None:
            self.then_config()  # raises for an unknown method or bad options

    def then_config(self) -> BudgetConfig | None:
        if self.then is None:
            return None
        if isinstance(self.then, MethodConfig):
            config = self.then
        else:
            options = {"tokens": self.tokens, "keep": self.keep}
            options = {k: v for k, v in options.items() if v is not None}
            config, _apply = METHODS.resolve(self.then, **options)
        if not isinstance(config, BudgetConfig) or isinstance(config, (Temporal, ProgressivePool)):
            raise ValueError(
                f"then={self.then!r} must be an image method (visionzip, prumerge+, tome, "
                "divprune, random, pool)"
            )
        return config

    def score_request(self, default_layer: int) -> ScoreRequest:
        then = self.then_config()
        return NO_REQUEST if then is None else then.score_request(default_layer)

    def check_model(self, model: Any, adapter: VLMAdapter) -> None:
        _check_video_model("temporal", model, adapter)
        then = self.then_config()
        if then is not None:
            then.check_model(model, adapter)

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        then = self.then_config()
        if segment.kind != "video" or not segment.frame_slices:
            if then is None:
                return torch.arange(segment.num_tokens), segment.features
            return then.compress_segment(segment)
        heads, merged = self.merge_runs(segment)
        frame_of = torch.zeros(segment.num_tokens, dtype=torch.long)
        for index, span in enumerate(segment.frame_slices):
            frame_of[span] = index

        def per_frame(unit: Unit, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            span = segment.frame_slices[index]
            mine = heads[frame_of[heads] == index]  # run heads starting in this frame
            local = mine - span.start
            survivors = Unit(
                features=merged[frame_of[heads] == index],
                scores=None if unit.scores is None else unit.scores[local],
                keys=None if unit.keys is None else unit.keys[local],
            )
            if then is None or survivors.size == 0:
                return local, survivors.features
            picked, values = then.compress_one(survivors)
            return local[picked], values

        return compress_frames(segment, per_frame)

    def merge_runs(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        """Run heads (segment token indices, sorted) and each run's mean feature."""
        frames = segment.frame_slices
        features = segment.features
        size = frames[0].stop - frames[0].start
        head = torch.arange(frames[0].start, frames[0].stop)  # current run head per position
        sums = features.float().clone()
        counts = torch.ones(segment.num_tokens)
        is_head = torch.zeros(segment.num_tokens, dtype=torch.bool)
        is_head[frames[0]] = True
        for previous, current in zip(frames[:-1], frames[1:], strict=True):
            if current.stop - current.start != size:
                raise ValueError("temporal merging needs frames with equal token counts")
            similar = frame_similarity(features[previous], features[current]) > self.threshold
            positions = torch.arange(current.start, current.stop)
            joins = similar.nonzero().squeeze(-1)
            sums.index_add_(0, head[joins], features[positions[joins]].float())
            counts.index_add_(0, head[joins], torch.ones(joins.numel()))
            starts = (~similar).nonzero().squeeze(-1)
            head[starts] = positions[starts]
            is_head[positions[starts]] = True
        heads = is_head.nonzero().squeeze(-1)
        merged = (sums[heads] / counts[heads].unsqueeze(-1)).to(features.dtype)
        return heads, merged


@dataclasses.dataclass
class ProgressivePool(BudgetConfig):
    """Keep every ``group``-th frame whole and average-pool the others by ``stride``."""

    stride: int = 2
    group: int = 4

    def validate(self) -> None:
        super().validate()
        if self.tokens is not None or self.keep is not None:
            raise ValueError(
                "progressive_pool sets its budget with stride= and group=, not tokens=/keep="
            )
        check_range("stride", self.stride, low=1)
        check_range("group", self.group, low=1)

    def check_model(self, model: Any, adapter: VLMAdapter) -> None:
        _check_video_model("progressive_pool", model, adapter)
        super().check_model(model, adapter)

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        if segment.kind != "video" or not segment.frame_slices:
            return torch.arange(segment.num_tokens), segment.features

        def per_frame(unit: Unit, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            if index % self.group == 0 or self.stride == 1 or unit.grid is None:
                return torch.arange(unit.size), unit.features
            return mergers.pool_stride(unit.features, unit.grid, self.stride)

        return compress_frames(segment, per_frame)


METHODS.register("temporal", Temporal)(install_prefill)
METHODS.register("progressive_pool", ProgressivePool)(install_prefill)

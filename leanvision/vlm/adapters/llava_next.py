"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres crops + the image-newline token.

Each image becomes a base crop (``side x side`` tokens) followed by the unpadded high-res
crops, one ``image_newline`` token closing every row. Scores, keys and pre-projector features
are laid out exactly like the features by running the model's own ``pack_image_features`` on
them, with a NaN newline: the NaN rows mark the newlines as ``fixed`` tokens, which no method
drops, merges or counts in its budget. ``crops`` says which crop (0: the base, whole-image
view) each token comes from, and ``cls`` holds each crop's CLS feature, for VisionZip's
per-crop budgets.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment
from leanvision.vlm.adapters.llava import (
    LlavaAdapter,
    attach_stats,
    recording_inputs,
    stack_records,
)


@contextlib.contextmanager
def recording_packs(inner: nn.Module, calls: list[tuple[Any, ...]]) -> Iterator[None]:
    """Record the arguments of ``inner.pack_image_features`` during the block.

    The instance attribute shadows the class method only inside the block (one forward), so the
    features can be split per image exactly as the model does.
    """
    original = inner.pack_image_features

    def pack(image_features: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((image_features, args, kwargs))
        return original(image_features, *args, **kwargs)

    inner.pack_image_features = pack
    try:
        yield
    finally:
        del inner.pack_image_features


class LlavaNextAdapter(LlavaAdapter):
    name = "llava_next"
    model_types = ("llava_next",)
    class_names = ("LlavaNextForConditionalGeneration",)

    def tokens_per_image(self, model: nn.Module) -> int | None:
        return None  # depends on each image's size (anyres)

    def _image_features(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        return self.inner(model).get_image_features(
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            vision_feature_layer=inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
            return_dict=True,
        )

    def _pack_stats(
        self, model: nn.Module, call: tuple[Any, ...], stats: torch.Tensor
    ) -> list[torch.Tensor]:
        image_features, args, kwargs = call
        sizes = [feature.shape[0] for feature in image_features]
        split = list(torch.split(stats, sizes, dim=0))
        newline = torch.full((stats.shape[-1],), float("nan"), device=stats.device)
        kwargs = {**kwargs, "image_newline": newline}
        packed, _lengths = type(self.inner(model)).pack_image_features(
            self.inner(model), split, *args, **kwargs
        )
        return packed

    def encode(
        self, model: nn.Module, inputs: dict[str, Any], request: ScoreRequest
    ) -> list[VisualSegment]:
        calls: list[tuple[Any, ...]] = []
        projected_from: list[torch.Tensor] = []
        with (
            recording_packs(self.inner(model), calls),
            recording_inputs(self.projector(model), projected_from, request.vision),
        ):
            output, records = self._run_tower(
                model, request, lambda: self._image_features(model, inputs)
            )
        features = list(output.pooler_output)
        crops = [feature.shape[0] for feature in calls[-1][0]]
        per_crop = calls[-1][0][0].shape[1]
        # channel blocks laid out per crop token, packed like the features in one call; the
        # first channel holds each token's crop index within its image (NaN: newline)
        starts = torch.tensor([0, *crops]).cumsum(0).tolist()
        marker = torch.cat([torch.arange(count, dtype=torch.float32) for count in crops])
        marker = marker.to(features[0].device)[:, None, None].expand(-1, per_crop, 1)
        blocks = [marker]
        stats = None
        if records:
            stats = self._drop_cls(model, inputs, stack_records(records))
            blocks.append(stats)
        vision = projected_from[0] if projected_from else None
        if vision is not None and vision.shape[:2] == marker.shape[:2]:
            blocks.append(vision.float())
        else:
            vision = None
        packed = self._pack_stats(model, calls[-1], torch.cat(blocks, dim=-1))
        cls = self._cls_features(model, inputs, output, request)
        segments = []
        for index, (feature, rows) in enumerate(zip(features, packed, strict=True)):
            fixed = torch.isnan(rows[:, 0])
            grid = None
            if crops[index] == 1 and int((~fixed).sum()) == per_crop:  # one crop + newline
                side = math.isqrt(per_crop)
                grid = (side, side) if side * side == per_crop else None
            segment = VisualSegment(features=feature, kind="image", grid=grid)
            segment.fixed = fixed if bool(fixed.any()) else None
            # OneVision may resize the crops bilinearly: a border token takes the nearest crop
            segment.crops = torch.nan_to_num(rows[:, 0], nan=-1.0).round().long()
            if stats is not None:
                attach_stats(segment, rows[:, 1 : 1 + stats.shape[-1]], request)
            if vision is not None:
                values = torch.nan_to_num(rows[:, -vision.shape[-1] :], nan=0.0)
                segment.vision = values.to(vision.dtype)
                segment.project = self.projector(model)
            if cls is not None:
                segment.cls = cls[starts[index] : starts[index + 1]]  # base crop first
            segments.append(segment)
        return segments

"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres crops + the image-newline token.

Each image becomes a base crop (``side x side`` tokens) followed by the unpadded high-res
crops, one ``image_newline`` token closing every row. Scores and keys are laid out exactly like
the features by running the model's own ``pack_image_features`` on them, with a NaN newline
(which becomes score ``-inf``: newlines are never chosen as important tokens).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment
from leanvision.vlm.adapters.llava import LlavaAdapter, image_segments, stack_records


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
        with recording_packs(self.inner(model), calls):
            output, records = self._run_tower(
                model, request, lambda: self._image_features(model, inputs)
            )
        features = list(output.pooler_output)
        packed_stats = None
        if records:
            stats = self._drop_cls(model, inputs, stack_records(records))
            packed_stats = self._pack_stats(model, calls[-1], stats)
        return image_segments(features, packed_stats, request)

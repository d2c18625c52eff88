"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP tower (no CLS token),
anyres images like LLaVA-NeXT, and videos (frames pooled 2x2 by the model, one newline token
closing each video). Without a CLS token, tokens are scored by the attention they receive.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment
from leanvision.vlm.adapters.llava import attach_stats, stack_records
from leanvision.vlm.adapters.llava_next import LlavaNextAdapter


class LlavaOnevisionAdapter(LlavaNextAdapter):
    name = "llava_onevision"
    model_types = ("llava_onevision",)
    class_names = ("LlavaOnevisionForConditionalGeneration",)
    supports_video = True
    vision_kwargs = (
        "pixel_values",
        "image_sizes",
        "pixel_values_videos",
        "image_sizes_videos",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "vision_aspect_ratio",
        "batch_num_images",
    )

    def _image_features(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        return self.inner(model).get_image_features(
            inputs["pixel_values"],
            inputs["image_sizes"],
            vision_feature_layer=inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
            batch_num_images=inputs.get("batch_num_images"),
            return_dict=True,
        )

    def encode(
        self, model: nn.Module, inputs: dict[str, Any], request: ScoreRequest
    ) -> list[VisualSegment]:
        segments = []
        if inputs.get("pixel_values") is not None:
            segments += super().encode(model, inputs, request)
        if inputs.get("pixel_values_videos") is not None:
            segments += self._encode_videos(model, inputs, request)
        return segments

    def _encode_videos(
        self, model: nn.Module, inputs: dict[str, Any], request: ScoreRequest
    ) -> list[VisualSegment]:
        inner = self.inner(model)
        videos = inputs["pixel_values_videos"]
        batch, frames = videos.shape[:2]
        output, records = self._run_tower(
            model,
            request,
            lambda: inner.get_video_features(
                videos,
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                return_dict=True,
            ),
        )
        features = output.pooler_output  # (videos, frames * per_frame + 1, D)
        per_frame = (features.shape[1] - 1) // frames
        side = int(round(per_frame**0.5))
        grid = (side, per_frame // side) if side * (per_frame // side) == per_frame else None
        pooled = None
        if records:
            stats = self._drop_cls(model, inputs, stack_records(records))
            pooled = inner.apply_pooling(stats).reshape(batch, frames * per_frame, -1)
            newline = torch.full_like(pooled[:, :1], float("nan"))
            pooled = torch.cat([pooled, newline], dim=1)
        segments = []
        for index in range(batch):
            segment = VisualSegment(
                features=features[index],
                kind="video",
                grid=grid,
                frame_slices=[slice(f * per_frame, (f + 1) * per_frame) for f in range(frames)],
            )
            if pooled is not None:
                attach_stats(segment, pooled[index], request)
            segments.append(segment)
        return segments

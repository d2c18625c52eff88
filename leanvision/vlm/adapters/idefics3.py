"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``,
``SmolVLMForConditionalGeneration``): a SigLIP tower (no CLS token), a connector that
pixel-shuffles ``s x s`` patches into one token, and each image split into crops that each
fill one run of ``image_seq_len`` placeholders. Budgets apply per crop.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment
from leanvision.vlm.adapters.llava import LlavaAdapter, attach_stats, stack_records


class Idefics3Adapter(LlavaAdapter):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    class_names = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    language_attr = "text_model"
    vision_attr = "vision_model"
    projector_attr = "connector"
    vision_kwargs = ("pixel_values", "pixel_attention_mask")

    def has_cls(self, model: nn.Module) -> bool:
        return False

    def default_score_layer(self, model: nn.Module) -> int:
        return len(self.vision_layers(model)) - 1  # features are the last hidden state

    def vision_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.vision_tower(model).encoder.layers

    def tokens_per_image(self, model: nn.Module) -> int | None:
        return int(self.inner(model).image_seq_len)

    def encode(
        self, model: nn.Module, inputs: dict[str, Any], request: ScoreRequest
    ) -> list[VisualSegment]:
        inner = self.inner(model)
        output, records = self._run_tower(
            model,
            request,
            lambda: inner.get_image_features(
                inputs["pixel_values"], inputs.get("pixel_attention_mask"), return_dict=True
            ),
        )
        per_crop = int(inner.image_seq_len)
        features = torch.cat(list(output.pooler_output), dim=0).split(per_crop, dim=0)
        stats = None
        if records:
            stats = stack_records(records)  # (crops, patches, C)
            stats = self._shuffle(model, stats)
        side = math.isqrt(per_crop)
        grid = (side, side) if side * side == per_crop else None
        segments = []
        for index, feature in enumerate(features):
            segment = VisualSegment(features=feature, kind="image", grid=grid)
            if stats is not None:
                attach_stats(segment, stats[index], request)
            segments.append(segment)
        return segments

    def _shuffle(self, model: nn.Module, stats: torch.Tensor) -> torch.Tensor:
        """Group patch stats the way the connector's pixel shuffle groups patches (mean)."""
        connector = self.projector(model)
        scale = int(connector.scale_factor)
        crops, patches, channels = stats.shape
        # the connector's own reshape applied to patch indices says which patches form a token
        index = torch.arange(patches, device=stats.device, dtype=torch.float32)
        groups = connector.pixel_shuffle(index.view(1, patches, 1), scale)[0].long()
        return stats[:, groups].mean(2)  # (crops, tokens, C)

"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``): a NaViT tower whose ``merger`` fuses each
``m x m`` block of patches into one LLM token, and M-RoPE positions ``(3, B, L)``.

Patches arrive grouped by merge block (``m * m`` consecutive patches = one token), so a
token's score/key is the mean over its block. Qwen2.5-VL attends within windows except in
``fullatt_block_indexes``: only those blocks give global scores, and they see the tokens in
window order, undone here with transformers' own ``get_vision_window_index``. Merges happen
between the merger's ``ln_q`` and its MLP (on the concatenated ``m x m`` patch group of each
token, read with a pre-hook on ``merger.mlp``), so merged tokens go through the non-linear MLP
as VisionZip/PruMerge+ merge before LLaVA's projector.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from leanvision.compat import transformers as tf_compat
from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment, VLMAdapter
from leanvision.vlm.adapters.llava import attach_stats, recording_inputs, resolve_layer
from leanvision.vlm.capture import ScoreRecorder, listening


class Qwen2VLAdapter(VLMAdapter):
    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    class_names = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    mrope = True
    supports_video = True
    vision_attr = "visual"
    vision_kwargs = (
        "pixel_values",
        "pixel_values_videos",
        "image_grid_thw",
        "video_grid_thw",
        "mm_token_type_ids",
        "second_per_grid_ts",
    )

    def projector(self, model: nn.Module) -> nn.Module:
        return self.vision_tower(model).merger

    def vision_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.vision_tower(model).blocks

    def vision_attention(self, model: nn.Module, index: int) -> nn.Module:
        return self.vision_layers(model)[index].attn

    def merge_size(self, model: nn.Module) -> int:
        return int(self.vision_config(model).spatial_merge_size)

    def global_vision_layers(self, model: nn.Module) -> list[int]:
        full = getattr(self.vision_config(model), "fullatt_block_indexes", None)
        depth = len(self.vision_layers(model))
        if full is None or model.config.model_type == "qwen2_vl":
            return list(range(depth))
        return sorted(int(i) for i in full if int(i) < depth)

    def mm_token_type_ids(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """0 text, 1 image, 2 video: what the processor returns, rebuilt from the ids."""
        types = (input_ids == self.image_token_id(model)).int()
        return types + 2 * (input_ids == self.video_token_id(model)).int()

    def prefill_position_ids(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **mm_inputs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(3, B, L)`` M-RoPE positions and ``(B, 1)`` deltas from ``get_rope_index``."""
        types = mm_inputs.get("mm_token_type_ids")
        if types is None:
            types = self.mm_token_type_ids(model, input_ids)
        extra = {}
        if mm_inputs.get("second_per_grid_ts") is not None:
            extra["second_per_grid_ts"] = mm_inputs["second_per_grid_ts"]
        return self.inner(model).get_rope_index(
            input_ids,
            mm_token_type_ids=types,
            image_grid_thw=mm_inputs.get("image_grid_thw"),
            video_grid_thw=mm_inputs.get("video_grid_thw"),
            attention_mask=attention_mask,
            **extra,
        )

    # -- vision path -------------------------------------------------------------------------
    def encode(
        self, model: nn.Module, inputs: dict[str, Any], request: ScoreRequest
    ) -> list[VisualSegment]:
        inner = self.inner(model)
        segments = []
        for kind, pixels_key, grid_key, getter in (
            ("image", "pixel_values", "image_grid_thw", inner.get_image_features),
            ("video", "pixel_values_videos", "video_grid_thw", inner.get_video_features),
        ):
            if inputs.get(pixels_key) is None:
                continue
            grid_thw = inputs[grid_key]
            recorder = self._recorder(model, request)
            mlp_inputs: list[torch.Tensor] = []
            mlp = getattr(self.projector(model), "mlp", None)
            with (
                recording_inputs(mlp, mlp_inputs, request.vision and mlp is not None),
                contextlib.nullcontext()
                if recorder is None
                else listening(self.vision_attention(model, recorder[0]), recorder[1]),
            ):
                output = getter(inputs[pixels_key], grid_thw, return_dict=True)
            stats = None if recorder is None else self._token_stats(model, recorder[1], grid_thw)
            vision = self._mlp_inputs(model, mlp_inputs, grid_thw) if mlp_inputs else None
            merge = self.merge_size(model)
            for index, feature in enumerate(output.pooler_output):
                frames, height, width = (int(v) for v in grid_thw[index])
                per_frame = (height // merge) * (width // merge)
                segment = VisualSegment(
                    features=feature,
                    kind=kind,
                    grid=(height // merge, width // merge),
                    frame_slices=[slice(f * per_frame, (f + 1) * per_frame) for f in range(frames)],
                )
                if stats is not None:
                    attach_stats(segment, stats[index], request)
                if vision is not None and vision[index].shape[0] == feature.shape[0]:
                    segment.vision, segment.project = vision[index], mlp
                segments.append(segment)
        return segments

    def _mlp_inputs(
        self, model: nn.Module, inputs: list[torch.Tensor], grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        """The merger MLP's inputs (``ln_q`` of each ``m x m`` patch group, concatenated), one
        ``(n, m * m * Dv)`` block per image in raster order."""
        tokens = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs], dim=0)
        order = self._window_index(model, grid_thw)
        if order is not None:  # Qwen2.5-VL merges in window order
            restored = torch.empty_like(tokens)
            restored[order.to(tokens.device)] = tokens
            tokens = restored
        sizes = (grid_thw.prod(-1) // self.merge_size(model) ** 2).tolist()
        return list(torch.split(tokens, sizes, dim=0))

    def _recorder(
        self, model: nn.Module, request: ScoreRequest
    ) -> tuple[int, ScoreRecorder] | None:
        if not (request.scores or request.keys):
            return None
        layer = resolve_layer(request.layer, len(self.vision_layers(model)))
        return layer, ScoreRecorder("all", request.scores, request.keys, request.heads)

    def _token_stats(
        self, model: nn.Module, recorder: ScoreRecorder, grid_thw: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per-patch records (in the order the block saw them) -> per-token ``(n, 1 + d)``."""
        rows = []
        for scores, keys in recorder.records:
            length = (scores if scores is not None else keys).shape[0]
            device = (scores if scores is not None else keys).device
            score = scores if scores is not None else torch.zeros(length, device=device)
            key = keys if keys is not None else torch.zeros(length, 0, device=device)
            rows.append(torch.cat([score.float().unsqueeze(-1), key.float()], dim=-1))
        patches = torch.cat(rows, dim=0)  # (total_patches, C)
        unit = self.merge_size(model) ** 2
        tokens = patches.reshape(-1, unit, patches.shape[-1]).mean(1)  # (total_tokens, C)
        order = self._window_index(model, grid_thw)
        if order is not None:
            # the block saw token window_index[g] at slot g; put it back in raster order
            restored = torch.empty_like(tokens)
            restored[order.to(tokens.device)] = tokens
            tokens = restored
        sizes = (grid_thw.prod(-1) // unit).tolist()
        return list(torch.split(tokens, sizes, dim=0))

    def _window_index(self, model: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor | None:
        tower = self.vision_tower(model)
        if not hasattr(tower, "fullatt_block_indexes"):
            return None
        return tf_compat.vision_window_index(grid_thw, tower)

"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower + MLP projector + Llama.

Also the base of the LLaVA-NeXT and LLaVA-OneVision adapters, which reuse ``_run_tower``.
The projector is token-wise, so a method may merge the projector's inputs (the selected ViT
features, read with a forward pre-hook held for one call) and project the merged tokens, as
VisionZip and PruMerge+ do.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment, VLMAdapter
from leanvision.vlm.capture import ScoreRecorder, listening


def resolve_layer(layer: int, depth: int) -> int:
    """A block index in ``[0, depth)`` from a possibly negative one; ``ValueError`` if outside.

    >>> resolve_layer(-2, 24)
    22
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    resolved = layer + depth if layer < 0 else layer
    if not 0 <= resolved < depth:
        raise ValueError(
            f"layer={layer} is past the vision tower's depth; allowed: {-depth}..{depth - 1}"
        )
    return resolved


@contextlib.contextmanager
def recording_inputs(module: nn.Module, inputs: list[torch.Tensor], active: bool) -> Iterator[None]:
    """Append the first positional input of every ``module`` call inside the block to
    ``inputs`` (nothing when not ``active``); the hook is removed on exit."""
    if not active:
        yield
        return
    hook = module.register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
    try:
        yield
    finally:
        hook.remove()


class LlavaAdapter(VLMAdapter):
    name = "llava"
    model_types = ("llava",)
    class_names = ("LlavaForConditionalGeneration",)
    vision_kwargs = (
        "pixel_values",
        "image_sizes",
        "vision_feature_layer",
        "vision_feature_select_strategy",
    )

    def has_cls(self, model: nn.Module) -> bool:
        return "clip" in str(getattr(self.vision_config(model), "model_type", ""))

    def _feature_layer(self, model: nn.Module, inputs: dict[str, Any] | None = None) -> int:
        layer = (inputs or {}).get("vision_feature_layer")
        if layer is None:
            layer = model.config.vision_feature_layer
        if isinstance(layer, (list, tuple)):
            layer = max(layer, key=lambda i: i if i >= 0 else 10_000 + i)
        return int(layer)

    def _strategy(self, model: nn.Module, inputs: dict[str, Any] | None = None) -> str:
        strategy = (inputs or {}).get("vision_feature_select_strategy")
        return strategy or model.config.vision_feature_select_strategy

    def default_score_layer(self, model: nn.Module) -> int:
        # hidden_states[j] is the output of block j - 1; the features come from block j - 1
        depth = len(self.vision_layers(model))
        hidden_index = self._feature_layer(model)
        hidden_index = hidden_index if hidden_index >= 0 else depth + 1 + hidden_index
        return max(hidden_index - 1, 0)

    def patches_per_side(self, model: nn.Module) -> int:
        vision = self.vision_config(model)
        return vision.image_size // vision.patch_size

    def tokens_per_image(self, model: nn.Module) -> int | None:
        side = self.patches_per_side(model)
        extra = 1 if self._strategy(model) == "full" and self.has_cls(model) else 0
        return side * side + extra

    # -- vision path -------------------------------------------------------------------------
    def _run_tower(
        self, model: nn.Module, request: ScoreRequest, run: Callable[[], Any]
    ) -> tuple[Any, list[tuple[torch.Tensor | None, torch.Tensor | None]]]:
        """Call ``run()`` (a ``get_*_features``) while recording block ``request.layer``."""
        if not (request.scores or request.keys):
            return run(), []
        depth = len(self.vision_layers(model))
        layer = resolve_layer(request.layer, depth)
        query = request.query
        if query == "auto":
            query = "cls" if self.has_cls(model) else "all"
        recorder = ScoreRecorder(query, request.scores, request.keys, request.heads)
        with listening(self.vision_attention(model, layer), recorder):
            output = run()
        return output, recorder.records

    def _drop_cls(
        self, model: nn.Module, inputs: dict[str, Any], stats: torch.Tensor
    ) -> torch.Tensor:
        """Per-patch stats ``(crops, N_vit, C)`` -> per-feature-token stats."""
        if self._strategy(model, inputs) == "default" and self.has_cls(model):
            return stats[:, 1:]
        return stats

    def _cls_features(
        self, model: nn.Module, inputs: dict[str, Any], output: Any, request: ScoreRequest
    ) -> torch.Tensor | None:
        """``(crops, Dv)`` pre-projector CLS features when the model dropped them (strategy
        ``"default"``, CLIP) and ``request.cls``; ``None`` otherwise."""
        hidden = getattr(output, "hidden_states", None)
        if not request.cls or hidden is None or not self.has_cls(model):
            return None
        if self._strategy(model, inputs) != "default":
            return None  # the CLS is the first feature token already
        layer = (inputs or {}).get("vision_feature_layer")
        if layer is None:
            layer = model.config.vision_feature_layer
        layers = layer if isinstance(layer, (list, tuple)) else [layer]
        if any(hidden[index] is None for index in layers):
            return None  # transformers kept only some hidden states
        return torch.cat([hidden[index][:, 0] for index in layers], dim=-1)

    def encode(
        self, model: nn.Module, inputs: dict[str, Any], request: ScoreRequest
    ) -> list[VisualSegment]:
        inner = self.inner(model)
        projected_from: list[torch.Tensor] = []
        with recording_inputs(self.projector(model), projected_from, request.vision):
            output, records = self._run_tower(
                model,
                request,
                lambda: inner.get_image_features(
                    pixel_values=inputs["pixel_values"],
                    vision_feature_layer=inputs.get("vision_feature_layer"),
                    vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                    image_sizes=inputs.get("image_sizes"),
                    return_dict=True,
                ),
            )
        features = list(output.pooler_output)
        stats = self._drop_cls(model, inputs, stack_records(records)) if records else None
        segments = image_segments(features, stats, request)
        vision = projected_from[0] if projected_from else None
        if vision is not None and [len(f) for f in features] != [vision.shape[1]] * len(vision):
            vision = None  # features split differently from the projector's batch
        cls = self._cls_features(model, inputs, output, request)
        for index, segment in enumerate(segments):
            if vision is not None:
                segment.vision, segment.project = vision[index], self.projector(model)
            if cls is not None:
                segment.cls = cls[index]
        return segments


def stack_records(
    records: list[tuple[torch.Tensor | None, torch.Tensor | None]],
) -> torch.Tensor:
    """Records of equal length -> ``(crops, N, 1 + d)`` (score channel first, then keys).

    A missing score is stored as 0, missing keys as an empty channel block.
    """
    rows = []
    for scores, keys in records:
        length = (scores if scores is not None else keys).shape[0]
        device = (scores if scores is not None else keys).device
        score = scores if scores is not None else torch.zeros(length, device=device)
        key = keys if keys is not None else torch.zeros(length, 0, device=device)
        rows.append(torch.cat([score.float().unsqueeze(-1), key.float()], dim=-1))
    return torch.stack(rows)


def image_segments(
    features: list[torch.Tensor], stats: torch.Tensor | None, request: ScoreRequest
) -> list[VisualSegment]:
    """One image segment per feature map, on a square grid when the count is a square, with
    its scoring stats attached when there are any."""
    segments = []
    for index, feature in enumerate(features):
        count = feature.shape[0]
        side = math.isqrt(count)
        grid = (side, side) if side * side == count else None
        segment = VisualSegment(features=feature, kind="image", grid=grid)
        if stats is not None:
            attach_stats(segment, stats[index], request)
        segments.append(segment)
    return segments


def attach_stats(segment: VisualSegment, stats: torch.Tensor, request: ScoreRequest) -> None:
    """Set ``segment.scores``/``keys`` from a ``(n, 1 + d)`` stats block (+ optional flag).

    Tokens whose stats row is NaN in the score channel (newlines) get score ``-inf``.
    """
    scores = stats[:, 0]
    if request.scores:
        segment.scores = torch.where(torch.isnan(scores), float("-inf"), scores)
    if request.keys:
        segment.keys = torch.nan_to_num(stats[:, 1:], nan=0.0)

"""The budget every pre-LLM method shares (``tokens``/``keep`` per image, crop or video
frame), its checks, and how a segment is cut into the units a budget applies to.

>>> BudgetConfig(tokens=64).budget(576), BudgetConfig(keep=0.5).budget(576)
(64, 288)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from leanvision.core.config import MethodConfig, check_budget
from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment, VLMAdapter
from leanvision.vlm.adapters.llava import resolve_layer
from leanvision.vlm.scorers import NO_REQUEST, Unit

__all__ = ["DEFAULT_KEEP", "BudgetConfig", "compress_frames", "make_unit", "too_many_tokens"]

DEFAULT_KEEP = 0.25


def too_many_tokens(tokens: int, available: int, unit: str, model_name: str) -> ValueError:
    """The one error for a ``tokens`` budget above what an image (or frame) has, raised at
    ``compress()`` where the count is fixed and at the forward where it varies.

    >>> error = too_many_tokens(100, 48, "image", "qwen2_vl")
    >>> str(error).split("; ")[0]
    'tokens=100 is more than the 48 visual tokens per image of this qwen2_vl model'
    """
    return ValueError(
        f"tokens={tokens} is more than the {available} visual tokens per {unit} of this "
        f"{model_name} model; allowed: 1..{available}, or keep= (a ratio)"
    )


@dataclasses.dataclass
class BudgetConfig(MethodConfig):
    """Shared budget fields. ``tokens``: tokens kept per image/frame; ``keep``: kept ratio;
    neither: ``keep=0.25``. Image newlines (LLaVA-NeXT/OneVision) are never candidates: always
    kept, never merged into, not counted in the budget.

    ``renumber``: give the LLM's tokens consecutive positions instead of their original ones
    (the output tokens then come in the method's own order, e.g. the paper's). ``None`` (the
    default) means the method's paper setting (``paper_renumber``) on 1-D RoPE models, and
    ``False`` on M-RoPE models (Qwen2-VL/2.5-VL): their positions are grid coordinates, which
    cannot be renumbered (``True`` raises there).

    >>> from leanvision.vlm import BudgetConfig
    >>> BudgetConfig(tokens=16).budget(64), BudgetConfig(keep=0.3).budget(64)
    (16, 19)
    >>> BudgetConfig().budget(64)  # keep=0.25
    16
    """

    tokens: int | None = None
    keep: float | None = None
    renumber: bool | None = None

    paper_renumber: ClassVar[bool] = False

    def validate(self) -> None:
        check_budget(self.tokens, self.keep, False if self.renumber is None else self.renumber)

    def resolve_renumber(self, adapter: VLMAdapter) -> bool:
        """Whether this model's prefill gets consecutive positions."""
        if self.renumber is None:
            return self.paper_renumber and not adapter.mrope
        return self.renumber

    def budget(self, available: int) -> int:
        """Tokens kept out of ``available`` (at least 1, at most ``available``)."""
        if self.tokens is not None:
            return max(1, min(self.tokens, available))
        keep = DEFAULT_KEEP if self.keep is None else self.keep
        return max(1, min(available, round(keep * available)))

    def score_request(self, default_layer: int) -> ScoreRequest:
        return NO_REQUEST

    def check_model(self, model: Any, adapter: VLMAdapter) -> None:
        """Raise ``ValueError`` for settings this model cannot take (before any patching)."""
        if self.renumber and adapter.mrope:
            raise ValueError(
                f"renumber=True is not supported for {adapter.name} (M-RoPE positions are grid "
                "coordinates); use renumber=False or None"
            )
        nominal = adapter.tokens_per_image(model)
        if self.tokens is not None and nominal is not None and self.tokens > nominal:
            raise too_many_tokens(self.tokens, nominal, "image", adapter.name)
        request = self.score_request(adapter.default_score_layer(model))
        if request.scores or request.keys:
            layer = resolve_layer(request.layer, len(adapter.vision_layers(model)))
            allowed = adapter.global_vision_layers(model)
            if layer not in allowed:
                raise ValueError(
                    f"layer={request.layer} is a windowed-attention ViT block of this "
                    f"{adapter.name} model; global scores need one of {allowed}"
                )

    def unit_sizes(self, segment: VisualSegment) -> list[tuple[str, int]]:
        """``(kind, tokens)`` of every unit the budget applies to in ``segment``: each video
        frame, or the image's candidates (newlines excluded)."""
        if segment.kind == "video" and segment.frame_slices:
            return [("video frame", span.stop - span.start) for span in segment.frame_slices]
        fixed = 0 if segment.fixed is None else int(segment.fixed.sum())
        return [("image", segment.num_tokens - fixed)]

    def check_segment(self, segment: VisualSegment, model_name: str) -> None:
        """At prefill, before anything is compressed: ``ValueError`` when ``tokens`` is more
        than a unit of ``segment`` has (dynamic-resolution models, whose token counts are
        known only then), in the words :meth:`check_model` uses at ``compress()`` time."""
        if self.tokens is None:
            return
        for kind, size in self.unit_sizes(segment):
            if self.tokens > size:
                raise too_many_tokens(self.tokens, size, kind, model_name)

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        """``(anchors, features)`` for one segment: images as one unit, videos frame by frame
        (tokens outside the frames, such as a closing newline, are kept). ``fixed`` tokens
        (newlines) stay as they are; the others form the unit, in raster order."""
        frames = segment.frame_slices if segment.kind == "video" else None
        if frames:
            return compress_frames(segment, lambda unit, _index: self.compress_one(unit))
        if segment.fixed is None:
            everything = torch.arange(segment.num_tokens, device=segment.features.device)
            return self.compress_one(make_unit(segment, everything, segment.grid, segment.reorder))
        candidates = (~segment.fixed).nonzero().squeeze(-1).to(segment.features.device)
        # tokens around fixed ones keep raster order: a newline still closes its row
        anchors, values = self.compress_one(make_unit(segment, candidates, segment.grid, False))
        fixed = segment.fixed.nonzero().squeeze(-1).to(segment.features.device)
        anchors_all = torch.cat([candidates[anchors.to(candidates.device)], fixed])
        order = torch.argsort(anchors_all)
        values_all = torch.cat([values, segment.features[fixed]])
        return anchors_all[order], values_all[order]

    def compress_one(self, unit: Unit) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the budget to one unit; a budget covering every token changes nothing."""
        count = self.budget(unit.size)
        if count >= unit.size:
            return torch.arange(unit.size, device=unit.features.device), unit.features
        return self.compressmake_unit(unit, count)

    def compressmake_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def make_unit(
    segment: VisualSegment,
    index: torch.Tensor,
    grid: tuple[int, ...] | None,
    reorder: bool,
    crop: int = 0,
) -> Unit:
    if grid is not None and (len(grid) != 2 or grid[0] * grid[1] != index.numel()):
        grid = None
    cls = segment.cls
    if cls is not None and cls.dim() == 2:  # one per crop: the base crop stands for the image
        cls = cls[crop]
    return Unit(
        features=segment.features[index],
        scores=None if segment.scores is None else segment.scores[index],
        keys=None if segment.keys is None else segment.keys[index],
        grid=grid,
        vision=None if segment.vision is None else segment.vision[index],
        project=segment.project,
        cls=cls,
        reorder=reorder,
    )


def compress_frames(segment: VisualSegment, compress: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``compress(unit, frame_index)`` on every frame of a video segment and join the
    results; tokens outside every frame are kept as they are."""
    anchors, features = [], []
    device = segment.features.device
    covered = torch.zeros(segment.num_tokens, dtype=torch.bool)
    for index, span in enumerate(segment.frame_slices):
        covered[span] = True
        tokens = torch.arange(span.start, span.stop, device=device)
        local, values = compress(make_unit(segment, tokens, segment.grid, segment.reorder), index)
        anchors.append(local.to(device) + span.start)
        features.append(values)
    extra = (~covered).nonzero().squeeze(-1).to(device)
    anchors.append(extra)
    features.append(segment.features[extra])
    anchors_all = torch.cat(anchors)
    order = torch.argsort(anchors_all)
    return anchors_all[order], torch.cat(features)[order]

"""Pre-LLM methods: named presets of scorer x selector x merger, registered in ``METHODS``.

Each config validates itself; ``apply`` installs the shared prefill hook
(:mod:`leanvision.vlm.prefill`) with a per-unit compression function. Budgets are per image
(or crop, or video frame): ``tokens`` (absolute) or ``keep`` (ratio of the unit's tokens).

>>> VisionZip(tokens=64).budget(576)
64
>>> Pool(keep=0.5).budget(576)
288
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from leanvision.core.config import MethodConfig, check_budget, check_range
from leanvision.vlm import mergers, selectors
from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment, VLMAdapter
from leanvision.vlm.adapters.llava import resolve_layer
from leanvision.vlm.prefill import install_prefill
from leanvision.vlm.registry import METHODS
from leanvision.vlm.scorers import NO_REQUEST, Unit, attention_request, keys_request

DEFAULT_KEEP = 0.25


@dataclasses.dataclass
class BudgetConfig(MethodConfig):
    """Shared budget fields. ``tokens``: tokens kept per image/frame; ``keep``: kept ratio;
    neither: ``keep=0.25``. ``renumber``: give kept tokens consecutive positions (1-D RoPE
    models only) instead of their original ones."""

    tokens: int | None = None
    keep: float | None = None
    renumber: bool = False

    def validate(self) -> None:
        check_budget(self.tokens, self.keep, self.renumber)

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
                "coordinates); use the default renumber=False"
            )
        nominal = adapter.tokens_per_image(model)
        if self.tokens is not None and nominal is not None and self.tokens > nominal:
            raise ValueError(
                f"tokens={self.tokens} is more than the {nominal} visual tokens per image of "
                f"this {adapter.name} model; allowed: 1..{nominal}"
            )
        request = self.score_request(adapter.default_score_layer(model))
        if request.scores or request.keys:
            layer = resolve_layer(request.layer, len(adapter.vision_layers(model)))
            allowed = adapter.global_vision_layers(model)
            if layer not in allowed:
                raise ValueError(
                    f"layer={request.layer} is a windowed-attention ViT block of this "
                    f"{adapter.name} model; global scores need one of {allowed}"
                )

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        """``(anchors, features)`` for one segment: images as one unit, videos frame by frame
        (tokens outside the frames, such as a closing newline, are kept)."""
        frames = segment.frame_slices if segment.kind == "video" else None
        if not frames:
            grid = segment.grid
            if grid is not None and grid[0] * grid[1] != segment.num_tokens:
                grid = None
            return self.compress_one(_unit(segment, slice(0, segment.num_tokens), grid))
        return compress_frames(segment, lambda unit, _index: self.compress_one(unit))

    def compress_one(self, unit: Unit) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the budget to one unit; a budget covering every token changes nothing."""
        count = self.budget(unit.size)
        if count >= unit.size:
            return torch.arange(unit.size, device=unit.features.device), unit.features
        return self.compress_unit(unit, count)

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _unit(segment: VisualSegment, span: slice, grid: tuple[int, int] | None) -> Unit:
    return Unit(
        features=segment.features[span],
        scores=None if segment.scores is None else segment.scores[span],
        keys=None if segment.keys is None else segment.keys[span],
        grid=grid,
    )


def compress_frames(segment: VisualSegment, compress: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``compress(unit, frame_index)`` on every frame of a video segment and join the
    results; tokens outside every frame are kept as they are."""
    anchors, features = [], []
    covered = torch.zeros(segment.num_tokens, dtype=torch.bool)
    for index, span in enumerate(segment.frame_slices):
        covered[span] = True
        grid = segment.grid
        if grid is not None and grid[0] * grid[1] != span.stop - span.start:
            grid = None
        local, values = compress(_unit(segment, span, grid), index)
        anchors.append(local.to(segment.features.device) + span.start)
        features.append(values)
    extra = (~covered).nonzero().squeeze(-1).to(segment.features.device)
    anchors.append(extra)
    features.append(segment.features[extra])
    anchors_all = torch.cat(anchors)
    order = torch.argsort(anchors_all)
    return anchors_all[order], torch.cat(features)[order]


def _check_layer(layer: int | None) -> None:
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise TypeError(f"layer must be an int (a ViT block index) or None, got {layer!r}")


@dataclasses.dataclass
class VisionZip(BudgetConfig):
    """VisionZip: dominant tokens by CLS attention (attention received without CLS) at ViT
    block ``layer`` (default: the block the features come from), plus contextual tokens that
    merge the rest by key similarity. ``dominant_ratio`` of the budget is dominant (54/64)."""

    layer: int | None = None
    dominant_ratio: float = 54 / 64
    query: str = "auto"

    def validate(self) -> None:
        super().validate()
        _check_layer(self.layer)
        check_range("dominant_ratio", self.dominant_ratio, low=0.0, high=1.0, low_inclusive=False)
        if self.query not in ("auto", "cls", "all"):
            raise ValueError(f"query={self.query!r} is not allowed; choose one of auto, cls, all")

    def score_request(self, default_layer: int) -> ScoreRequest:
        layer = default_layer if self.layer is None else self.layer
        return attention_request(layer, self.query, keys=True)

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        dominant_count = max(1, min(count, round(count * self.dominant_ratio)))
        if count >= 2 and dominant_count == count:
            dominant_count = count - 1  # keep at least one contextual token
        dominant = selectors.top_k(unit.scores, dominant_count)
        return mergers.contextual_merge(unit.features, unit.keys, dominant, count - dominant_count)


@dataclasses.dataclass
class PruMergePlus(BudgetConfig):
    """PruMerge+: CLS-attention outliers (above Q3 + 1.5 IQR) plus spatially uniform samples,
    then each kept token adds its ``neighbours`` key-nearest tokens weighted by attention.
    Without ``tokens``/``keep`` the count is adaptive, as in the paper."""

    layer: int | None = None
    neighbours: int = 32

    def validate(self) -> None:
        super().validate()
        _check_layer(self.layer)
        check_range("neighbours", self.neighbours, low=1)

    def budget(self, available: int) -> int:
        if self.tokens is None and self.keep is None:
            return -1  # adaptive: decided per unit from the outliers
        return super().budget(available)

    def score_request(self, default_layer: int) -> ScoreRequest:
        layer = default_layer if self.layer is None else self.layer
        return attention_request(layer, "auto", keys=True)

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        outliers = selectors.iqr_outliers(unit.scores)
        outliers = outliers[torch.sort(unit.scores[outliers], descending=True, stable=True).indices]
        if count < 0:  # adaptive: outliers + samples every (n / outliers) / 3 tokens
            # the paper's arithmetic sequence: every (n // outliers) // 3 tokens, below n - 1
            step = max(1, (unit.size // max(outliers.numel(), 1)) // 3)
            samples = torch.arange(0, max(unit.size - 1, 1), step, device=outliers.device)
            kept = torch.unique(torch.cat([outliers, samples]))
        elif outliers.numel() >= count:
            kept = outliers[:count]
        else:
            rest = selectors.complement(outliers, unit.size)
            kept = torch.cat([outliers, selectors.evenly_spaced(rest, count - outliers.numel())])
        if kept.numel() >= unit.size:
            return mergers.keep_only(unit.features, kept)
        return mergers.knn_weighted_merge(
            unit.features, unit.keys, unit.scores, kept, self.neighbours
        )


@dataclasses.dataclass
class BipartiteMerge(BudgetConfig):
    """Post-hoc merging after the vision tower: ToMe's bipartite soft matching on the keys of
    ViT block ``layer`` (default: the features' block), repeated on the projected features
    until the budget is met. Not ToMe itself (which merges inside every ViT block: ``"tome"``,
    :mod:`leanvision.vlm.tome`); kept as a cheap baseline that needs no ViT patching."""

    layer: int | None = None

    def validate(self) -> None:
        super().validate()
        _check_layer(self.layer)

    def score_request(self, default_layer: int) -> ScoreRequest:
        return keys_request(default_layer if self.layer is None else self.layer)

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mergers.bipartite_soft_matching(unit.features, unit.keys, count)


@dataclasses.dataclass
class DivPrune(BudgetConfig):
    """DivPrune: greedy max-min diversity on the cosine distance of the projected features."""

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mergers.keep_only(unit.features, selectors.max_min_diversity(unit.features, count))


@dataclasses.dataclass
class RandomPrune(BudgetConfig):
    """Uniformly random tokens (an honest baseline); ``seed`` makes it repeatable."""

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_range("seed", self.seed, low=0)

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        kept = selectors.random_subset(unit.size, count, generator).to(unit.features.device)
        return mergers.keep_only(unit.features, kept)


@dataclasses.dataclass
class Pool(BudgetConfig):
    """Spatial average pooling to the largest grid within the budget (1-D pooling for
    irregular layouts such as LLaVA-NeXT's unpadded crops)."""

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        if unit.grid is not None:
            return mergers.pool_grid(unit.features, unit.grid, count)
        return mergers.pool_sequence(unit.features, count)


def _register(name: str, config_class: type[BudgetConfig]) -> None:
    METHODS.register(name, config_class)(install_prefill)


for _name, _config in (
    ("visionzip", VisionZip),
    ("prumerge+", PruMergePlus),
    ("bipartite-merge", BipartiteMerge),
    ("divprune", DivPrune),
    ("random", RandomPrune),
    ("pool", Pool),
):
    _register(_name, _config)

# video methods register themselves on import
from leanvision.vlm import video  # noqa: E402, F401

__all__ = [
    "BipartiteMerge",
    "BudgetConfig",
    "DivPrune",
    "Pool",
    "PruMergePlus",
    "RandomPrune",
    "VisionZip",
]

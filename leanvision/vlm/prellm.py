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
from typing import ClassVar

import torch

from leanvision.core.config import check_range
from leanvision.vlm import mergers, selectors
from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment
from leanvision.vlm.budget import BudgetConfig, make_unit
from leanvision.vlm.prefill import install_prefill
from leanvision.vlm.registry import METHODS
from leanvision.vlm.scorers import Unit, attention_request, keys_request


def _check_layer(layer: int | None) -> None:
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise TypeError(f"layer must be an int (a ViT block index) or None, got {layer!r}")


@dataclasses.dataclass
class VisionZip(BudgetConfig):
    """VisionZip: CLS + dominant patches by CLS attention, plus merged contextual tokens.

    Yang et al. 2024; reference: dvlab-research/VisionZip,
    ``visionzip/clip_encoder.py``.

    Dominant tokens: the CLS token plus the patches with the most CLS attention (per-head
    softmaxes summed) at ViT block ``layer`` (default: the block the features come from,
    ``attentions[-2]`` on LLaVA); ``dominant_ratio`` of the budget is dominant, the CLS
    included (54/64: CLS + 53 patches). A tower without CLS (SigLIP, Qwen2-VL) ranks by the
    attention each patch receives (``query="all"``) and keeps patches only. Contextual tokens:
    the rest, in raster order, give evenly strided targets; every other token joins the target
    with the most similar key (head-mean keys of the same block) and each contextual token is
    its target plus the mean of its members, computed before the projector as in the
    reference (the weights sum to 2, so merging projected features would add the projector's
    bias twice): on the selected ViT features for LLaVA, NeXT and OneVision images, between
    ``ln_q`` and the MLP of Qwen2-VL's merger. Idefics3's connector is linear without bias, so
    there merging its outputs is the same; OneVision videos (frames pooled after the
    projector by the model) merge projected features.

    With ``renumber`` (the default on 1-D RoPE) the LLM sees the reference's sequence: CLS,
    dominant patches and contextual tokens (raster order each) at consecutive positions. With
    ``renumber=False`` tokens keep their positions and the CLS takes the first free one.

    LLaVA-NeXT/OneVision images: the budget applies to each crop (the base view and every
    high-res crop, each with its own CLS on CLIP towers), as the reference runs per 336-px
    crop. Unlike the reference, the crops stay unpadded with their row newlines (never
    dropped) and tokens stay in raster order: the reference drops the newlines, keeps padded
    rows, and orders the high-res crops' dominant tokens, CLS tokens and contextual tokens
    in three runs.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "visionzip", tokens=16) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_before"], handle.stats["tokens_after"]
    ([64], [16])
    """

    layer: int | None = None
    dominant_ratio: float = 54 / 64
    query: str = "auto"

    paper_renumber: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        _check_layer(self.layer)
        check_range("dominant_ratio", self.dominant_ratio, low=0.0, high=1.0, low_inclusive=False)
        if self.query not in ("auto", "cls", "all"):
            raise ValueError(f"query={self.query!r} is not allowed; choose one of auto, cls, all")

    def score_request(self, default_layer: int) -> ScoreRequest:
        layer = default_layer if self.layer is None else self.layer
        return attention_request(layer, self.query, keys=True, vision=True, cls=True)

    def unit_sizes(self, segment: VisualSegment) -> list[tuple[str, int]]:
        if segment.crops is None or segment.kind == "video":
            return super().unit_sizes(segment)
        crops = segment.crops[segment.crops >= 0]
        return [("image crop", int((crops == c).sum())) for c in torch.unique(crops).tolist()]

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        """Anyres images (LLaVA-NeXT/OneVision): one unit per crop, as the reference runs the
        tower per 336-px crop; fixed tokens (newlines) stay."""
        if segment.crops is None or segment.kind == "video":
            return super().compress_segment(segment)
        anchors, values = [], []
        for crop in torch.unique(segment.crops[segment.crops >= 0]).tolist():
            index = (segment.crops == crop).nonzero().squeeze(-1).to(segment.features.device)
            local, kept = self.compress_one(make_unit(segment, index, None, False, crop))
            anchors.append(index[local.to(index.device)])
            values.append(kept)
        rest = (segment.crops < 0).nonzero().squeeze(-1).to(segment.features.device)
        anchors_all = torch.cat([*anchors, rest])
        order = torch.argsort(anchors_all)
        return anchors_all[order], torch.cat([*values, segment.features[rest]])[order]

    def compressmake_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        dominant_count = max(1, min(count, round(count * self.dominant_ratio)))
        if count >= 2 and dominant_count == count:
            dominant_count = count - 1  # keep at least one contextual token
        has_cls = unit.cls is not None and unit.project is not None  # CLS needs projecting
        patches = dominant_count - 1 if has_cls else dominant_count
        dominant = torch.sort(selectors.top_k(unit.scores, patches)).values
        rest = selectors.complement(dominant, unit.size)
        values, finish = unit.merge_space()
        targets, merged = mergers.contextual_tokens(values, unit.keys, rest, count - dominant_count)
        sources = [dominant, targets]
        features = [unit.features[dominant], finish(merged)]
        if has_cls:
            sources.insert(0, torch.full((1,), -1, device=dominant.device))
            features.insert(0, finish(unit.cls[None].float()))
        return mergers.place(torch.cat(sources), torch.cat(features), unit.size, unit.reorder)


@dataclasses.dataclass
class PruMergePlus(BudgetConfig):
    """PruMerge+: IQR-outlier tokens by CLS attention plus spatial samples, neighbours merged in.

    Shang et al. 2024; reference: 42Shawn/LLaVA-PruMerge,
    ``llava/model/multimodal_encoder/clip_encoder.py``, ``token_prune_merge_advanced_plus``.

    Scores: the CLS row of ONE softmax over the logits of the concatenated heads
    (``q . k`` over the full width, scaled by its ``-1/2`` power) at ViT block ``layer``
    (default: the last block, ``-1``); a tower without CLS uses the mean over all query rows.
    Kept: the IQR outliers (score above ``Q3 + 1.5 IQR``, linear quantiles), top-``int(n *
    ratio)`` by score in descending order, then the spatial samples ``0, s, 2s, ... < n - 1``
    not already kept (``s = int(int(1 / ratio) / 3)``, ``ratio`` = outliers / n), in raster
    order. Each kept token adds its ``neighbours`` nearest other tokens (cosine of the block's
    concatenated keys) weighted by their score, and ONE extra token, the score-weighted sum of
    all tokens not kept, follows them. Merges are computed before the projector, as
    :class:`VisionZip` says where (projected features only for OneVision videos). With
    ``renumber`` (the default on 1-D RoPE) the LLM sees that sequence at consecutive
    positions; with ``renumber=False`` tokens keep their positions and the extra token takes
    the last free one.

    Without ``tokens``/``keep`` the count is adaptive, as in the paper. Our extension:
    ``tokens``/``keep`` fix the count (extra token included): the outliers by score, then
    evenly spaced tokens of the rest. Where the reference fails (no outlier: division by
    zero; a stride below 1) we sample every ``n // 3`` tokens and use a stride of 1.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "prumerge+", tokens=16) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_after"]
    [16]
    """

    layer: int | None = None
    neighbours: int = 32

    paper_renumber: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        _check_layer(self.layer)
        check_range("neighbours", self.neighbours, low=1)

    def budget(self, available: int) -> int:
        if self.tokens is None and self.keep is None:
            return -1  # adaptive: decided per unit from the outliers
        return super().budget(available)

    def score_request(self, default_layer: int) -> ScoreRequest:
        layer = -1 if self.layer is None else self.layer
        return attention_request(layer, "auto", keys=True, heads="concat", vision=True)

    def select(self, scores: torch.Tensor, count: int) -> torch.Tensor:
        """Kept indices in the reference's order (outliers by score, then samples)."""
        n = scores.numel()
        found = selectors.iqr_outliers(scores).numel()
        ranked = torch.sort(scores.float(), descending=True, stable=True).indices
        if count >= 0:  # our fixed-budget extension
            picked = ranked[: min(found, count)]
            rest = selectors.complement(picked, n)
            return torch.cat([picked, selectors.evenly_spaced(rest, count - picked.numel())])
        if found:
            ratio = found / n  # the reference's float arithmetic, truncations included
            picked = ranked[: int(n * ratio)]
            step = max(1, int(int(1 / ratio) / 3))
        else:
            picked, step = ranked[:0], max(1, n // 3)
        samples = torch.arange(0, max(n - 1, 1), step, device=scores.device)
        return torch.cat([picked, samples[~torch.isin(samples, picked)]])

    def compressmake_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        extra = count < 0 or count >= 2
        kept = self.select(unit.scores, count - 1 if count >= 2 else count)
        values, finish = unit.merge_space()
        merged = [mergers.knn_weighted_merge(values, unit.keys, unit.scores, kept, self.neighbours)]
        sources = [kept]
        dropped = selectors.complement(kept, unit.size)
        if extra and dropped.numel():
            merged.append(mergers.weighted_sum(values, unit.scores, dropped)[None])
            sources.append(torch.full((1,), -1, device=kept.device))
        features = finish(torch.cat(merged))
        return mergers.place(torch.cat(sources), features, unit.size, unit.reorder)


@dataclasses.dataclass
class BipartiteMerge(BudgetConfig):
    """Bipartite merge: ToMe's soft matching on the tokens, after the vision tower.

    Post-hoc merging after the vision tower: ToMe's bipartite soft matching on the keys of
    ViT block ``layer`` (default: the features' block), repeated on the projected features
    until the budget is met. Not ToMe itself (which merges inside every ViT block: ``"tome"``,
    :mod:`leanvision.vlm.tome`); kept as a cheap baseline that needs no ViT patching.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "bipartite-merge", keep=0.25) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_after"]
    [16]
    """

    layer: int | None = None

    def validate(self) -> None:
        super().validate()
        _check_layer(self.layer)

    def score_request(self, default_layer: int) -> ScoreRequest:
        return keys_request(default_layer if self.layer is None else self.layer)

    def compressmake_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mergers.bipartite_soft_matching(unit.features, unit.keys, count)


@dataclasses.dataclass
class DivPrune(BudgetConfig):
    """DivPrune: the most diverse tokens (greedy max-min cosine distance).

    Reference: vbdi/divprune, ``LLaVA/llava/model/llava_arch.py``. Greedy
    max-min diversity on the cosine distance of the projected features; kept tokens stay in
    raster order and ``renumber`` defaults to True on 1-D RoPE models, as the reference
    rebuilds the prompt with consecutive positions. Unlike its LLaVA-NeXT path, image
    newlines are never candidates.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "divprune", tokens=16) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_after"]
    [16]
    """

    paper_renumber: ClassVar[bool] = True

    def compressmake_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mergers.keep_only(unit.features, selectors.max_min_diversity(unit.features, count))


@dataclasses.dataclass
class RandomPrune(BudgetConfig):
    """Random: uniformly random tokens (an honest baseline); ``seed`` makes it repeatable.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "random", tokens=16, seed=1) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_after"]
    [16]
    """

    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_range("seed", self.seed, low=0)

    def compressmake_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        kept = selectors.random_subset(unit.size, count, generator).to(unit.features.device)
        return mergers.keep_only(unit.features, kept)


@dataclasses.dataclass
class Pool(BudgetConfig):
    """Pool: spatial average pooling to the largest grid within the budget.

    Spatial average pooling to the largest grid within the budget (1-D pooling for
    irregular layouts such as LLaVA-NeXT's unpadded crops).

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "pool", keep=0.25) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_after"]  # an 8 x 8 grid pooled to 4 x 4
    [16]
    """

    def compressmake_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
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

# the video methods and tome register themselves on import
from leanvision.vlm import tome, video  # noqa: E402, F401

__all__ = [
    "BipartiteMerge",
    "BudgetConfig",
    "DivPrune",
    "Pool",
    "PruMergePlus",
    "RandomPrune",
    "VisionZip",
]

"""Video methods: merge tokens across frames, pool long videos progressively.

``temporal`` (AuroraCap/PVC style): a frame's token that is similar (cosine > ``threshold``)
to the token at the same position in the previous frame joins it instead of being kept; each
run of similar tokens becomes one token (their mean) at the run's first position. It composes
with any image method through ``then``: ``compress(model, "temporal", then="visionzip",
tokens=32)`` then applies VisionZip to each frame's surviving tokens (``tokens``/``keep`` go to
``then``).

``progressive_pool`` (Visual Context Window Extension): the first frame of every ``group``
keeps all its tokens, the others are average-pooled by ``stride`` in space.

Both can be followed by an in-LLM method (``fastv``, ``pdrop``, ``sparsevlm``) through
``then``; its other options go in ``then_options`` (``tokens``/``keep`` are forwarded too).
The in-LLM stage then prunes the already-shortened sequence inside the language model, and
both patches live in the one handle ``compress`` returns:
``compress(model, "temporal", threshold=0.9, then="fastv", then_options={"layer": 2},
keep=0.25)``.

>>> Temporal(threshold=0.8, then="pool", keep=0.5).then_config().keep
0.5
>>> Temporal(then="fastv", then_options={"layer": 2}, keep=0.25).inllm_then().layer
2
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from leanvision.core.config import MethodConfig, check_range
from leanvision.vlm import mergers
from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment, VLMAdapter
from leanvision.vlm.budget import BudgetConfig, compress_frames
from leanvision.vlm.inllm import FastV, PDrop, SparseVLM
from leanvision.vlm.prefill import PrefillCompressor, install_prefill
from leanvision.vlm.registry import METHODS
from leanvision.vlm.scorers import NO_REQUEST, Unit, frame_similarity


def _check_video_model(name: str, model: Any, adapter: VLMAdapter) -> None:
    if not adapter.supports_video:
        raise ValueError(
            f"{name!r} is a video method but {adapter.name} models take images only; "
            "video families: llava_onevision, qwen2_vl"
        )


IMAGE_THEN = "visionzip, prumerge+, bipartite-merge, divprune, random, pool"
INLLM_THEN = "fastv, pdrop, sparsevlm"
INLLM_CONFIGS = (FastV, PDrop, SparseVLM)


class ThenMixin:
    """``then``/``then_options`` handling shared by the video methods (fields declared by
    each dataclass: ``then``, ``then_options``, ``tokens``, ``keep``)."""

    then: str | MethodConfig | None
    then_options: dict[str, Any] | None
    tokens: int | None
    keep: float | None

    def then_config(self) -> MethodConfig | None:
        """The method that follows (image or in-LLM), resolved with its options."""
        if self.then is None:
            if self.then_options:
                raise ValueError("then_options needs then= (the method they configure)")
            return None
        if isinstance(self.then, MethodConfig):
            if self.then_options:
                raise TypeError("pass then_options only with then= a method name, not a config")
            config = self.then
        elif isinstance(self.then, str):
            if self.then_options is not None and not isinstance(self.then_options, dict):
                raise TypeError(f"then_options must be a dict, got {self.then_options!r}")
            options = {"tokens": self.tokens, "keep": self.keep, **(self.then_options or {})}
            options = {k: v for k, v in options.items() if v is not None}
            config, _apply = METHODS.resolve(self.then, **options)
        else:
            raise TypeError(f"then must be a method name or config, got {self.then!r}")
        from leanvision.vlm.tome import Tome  # it merges inside the ViT, not per frame

        image = isinstance(config, BudgetConfig) and not isinstance(config, (ThenMixin, Tome))
        if not image and not isinstance(config, INLLM_CONFIGS):
            raise ValueError(
                f"then={self.then!r} must be an image method ({IMAGE_THEN}) or an in-LLM "
                f"method ({INLLM_THEN})"
            )
        return config

    def image_then(self) -> BudgetConfig | None:
        """The image method applied to every frame's surviving tokens, if ``then`` is one."""
        config = self.then_config()
        return None if isinstance(config, INLLM_CONFIGS) else config

    def inllm_then(self) -> MethodConfig | None:
        """The in-LLM method that prunes the shortened sequence, if ``then`` is one."""
        config = self.then_config()
        return config if isinstance(config, INLLM_CONFIGS) else None


@dataclasses.dataclass
class Temporal(ThenMixin, BudgetConfig):
    """Temporal: merge video tokens that repeat the previous frame, then optionally more.

    Merge each frame's tokens that repeat the previous frame (cosine > ``threshold``),
    then optionally apply ``then`` (a name or config): an image method to every frame, or an
    in-LLM method to the shortened sequence (more options in ``then_options``).

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_qwen2_vl
    >>> tiny = tiny_qwen2_vl(video=True)
    >>> options = {"threshold": -1.0, "then": "pool", "tokens": 4}  # -1: every token repeats
    >>> with lv.vlm.compress(tiny.model, "temporal", **options) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_before"], handle.stats["tokens_after"]  # 2 frames of 16
    ([32], [4])
    """

    threshold: float = 0.9
    then: str | MethodConfig | None = None
    then_options: dict[str, Any] | None = None

    def validate(self) -> None:
        super().validate()
        check_range("threshold", self.threshold, low=-1.0, high=1.0)
        self.then_config()  # raises for an unknown method or bad options

    def score_request(self, default_layer: int) -> ScoreRequest:
        then = self.image_then()
        return NO_REQUEST if then is None else then.score_request(default_layer)

    def check_model(self, model: Any, adapter: VLMAdapter) -> None:
        _check_video_model("temporal", model, adapter)
        then = self.then_config()
        if then is not None:
            then.check_model(model, adapter)

    def check_segment(self, segment: VisualSegment, model_name: str) -> None:
        """``tokens`` is ``then``'s budget: checked per frame by an image method (an in-LLM
        one checks its own at the forward)."""
        then = self.image_then()
        if then is not None:
            then.check_segment(segment, model_name)

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        then = self.image_then()
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
class ProgressivePool(ThenMixin, BudgetConfig):
    """Progressive pooling: every group-th video frame whole, the others pooled by stride.

    Keep every ``group``-th frame whole and average-pool the others by ``stride``;
    optionally followed by the in-LLM method ``then`` (``tokens``/``keep`` and
    ``then_options`` configure it).

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_qwen2_vl
    >>> tiny = tiny_qwen2_vl(video=True)
    >>> with lv.vlm.compress(tiny.model, "progressive_pool", stride=2, group=2) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_before"], handle.stats["tokens_after"]  # 16 + 16 / 4
    ([32], [20])
    """

    stride: int = 2
    group: int = 4
    then: str | MethodConfig | None = None
    then_options: dict[str, Any] | None = None

    def validate(self) -> None:
        super().validate()
        if self.then is None and (self.tokens is not None or self.keep is not None):
            raise ValueError(
                "progressive_pool sets its budget with stride= and group=, not tokens=/keep= "
                "(those configure then=)"
            )
        check_range("stride", self.stride, low=1)
        check_range("group", self.group, low=1)
        if self.then is not None and self.inllm_then() is None:
            raise ValueError(
                f"progressive_pool then={self.then!r}: allowed: an in-LLM method ({INLLM_THEN})"
            )

    def check_model(self, model: Any, adapter: VLMAdapter) -> None:
        _check_video_model("progressive_pool", model, adapter)
        if self.renumber and adapter.mrope:
            super().check_model(model, adapter)  # raises: renumber on M-RoPE
        then = self.then_config()
        if then is not None:
            then.check_model(model, adapter)

    def check_segment(self, segment: VisualSegment, model_name: str) -> None:
        """Nothing: ``tokens``/``keep`` belong to the in-LLM ``then``, which checks them."""

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        if segment.kind != "video" or not segment.frame_slices:
            return torch.arange(segment.num_tokens), segment.features

        def per_frame(unit: Unit, index: int) -> tuple[torch.Tensor, torch.Tensor]:
            if index % self.group == 0 or self.stride == 1 or unit.grid is None:
                return torch.arange(unit.size), unit.features
            return mergers.pool_stride(unit.features, unit.grid, self.stride)

        return compress_frames(segment, per_frame)


def install_video(
    model: Any, config: Temporal | ProgressivePool, handle: Any, adapter: Any
) -> None:
    """Install the video stage, then the in-LLM method of ``config.then`` (if any) on the
    same handle: it finds the visual tokens in the ids of the shortened sequence."""
    compressor = install_prefill(model, config, handle, adapter)
    inllm = config.inllm_then()
    if inllm is None:
        return
    entry = METHODS.entry(inllm)
    pruner = entry.apply(model, inllm, handle, adapter)
    pruner.ids_source = lambda: (
        None if compressor.last_prefill is None else compressor.last_prefill["input_ids"]
    )
    language_model = adapter.language_model(model)
    # registered after the pruner's own forward hook, so it runs after its stats are written
    handle.add_hook(language_model.register_forward_hook(_merge_stats(compressor, handle)))
    handle.stats["method"] = handle.method
    handle.stats["then"] = entry.name


def _merge_stats(compressor: PrefillCompressor, handle: Any):
    """After a composed prefill: the in-LLM stats, measured against the ORIGINAL prompt."""

    def hook(module: Any, args: tuple, output: Any) -> None:
        video = compressor.last_prefill  # None at decode steps and unpruned prefills
        stats = handle.stats
        if video is None or "tokens_per_layer" not in stats:
            return
        first = video["stats"]
        keys = ("tokens_before", "tokens_after", "sequence_length_before")
        stats["video_stage"] = {
            **{key: first[key] for key in keys},
            "sequence_length_after": first["sequence_length_after"],
            "prefill_flops_after": first["prefill_flops_after"],
        }
        stats.update(
            kept_positions=first["kept_positions"],
            tokens_before=[int(v) for v in video["visual_before"].tolist()],
            sequence_length_before=first["sequence_length_before"],
            prefill_flops_before=first["prefill_flops_before"],
            flops_ratio=stats["prefill_flops_after"] / first["prefill_flops_before"],
        )

    return hook


METHODS.register("temporal", Temporal)(install_video)
METHODS.register("progressive_pool", ProgressivePool)(install_video)

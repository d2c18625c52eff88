"""FastV and PyramidDrop: drop visual tokens inside the language model by the attention the
last instruction token (the prompt's last token) pays them.

Layer convention, shared by every in-LLM method: ``layer=K`` means the first ``K`` decoder
layers see the whole prompt and layers ``K ..`` see only the kept tokens. This is FastV's
``K`` (``K=2``: two full layers), ranked by the attention of layer ``K - 1``; PyramidDrop's
``layers=[8, 16, 24]`` split the 32 layers of LLaVA-1.5-7B into its four stages, each ranked
by the first layer of the new stage (layer ``K``: its input norm, ``q``/``k`` projections and
RoPE on the full hidden states entering it), as the authors' code does. Without ``layer(s)``
the paper's layers are scaled to the model's depth (:mod:`.budget`).

Budget, the same for every in-LLM method: ``keep`` (ratio) or ``tokens`` (count) is what is
left after the last stage; ``ratios`` sets each stage instead. Image separators
(LLaVA-NeXT/OneVision newlines) are never ranked, counted or dropped.

>>> n = torch.tensor([576])
>>> FastV(layer=2, keep=0.25).target(n, 0, 1).tolist()
[144]
>>> [PDrop(keep=0.125).target(n, stage, 3).item() for stage in range(3)]
[288, 144, 72]
>>> PDrop(layers=(2,), ratios=(0.3,)).target(torch.tensor([10]), 0, 1).tolist()  # int(10 * 0.3)
[3]
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from leanvision.core.config import MethodConfig, check_range
from leanvision.vlm.inllm.budget import (
    check_overall_budget,
    final_count,
    resolve_layers,
    warn_collapsed,
)
from leanvision.vlm.inllm.engine import InLLMPruner, Prefill, Selection, Tokens
from leanvision.vlm.inllm.selection import drop_count, drop_mask, received_attention
from leanvision.vlm.registry import METHODS


def check_layers(name: str, layers: Any) -> tuple[int, ...]:
    """``layers`` as a tuple of strictly increasing ints >= 1, else ``TypeError``/``ValueError``."""
    values = (layers,) if isinstance(layers, int) and not isinstance(layers, bool) else layers
    if not isinstance(values, (list, tuple)) or not values:
        raise TypeError(f"{name} must be a non-empty list of decoder layer indices, got {layers!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must hold ints, got {value!r}")
        check_range(name, value, low=1)
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name}={list(values)!r} must be strictly increasing")
    return tuple(values)


def check_ratios(name: str, ratios: Any, count: int | None) -> tuple[float, ...]:
    """Kept fractions in (0, 1], non-increasing stage after stage; ``count`` of them (any
    non-zero number when ``count`` is None)."""
    if not isinstance(ratios, (list, tuple)) or not ratios or count not in (None, len(ratios)):
        stages = "" if count is None else f" ({count})"
        raise ValueError(f"{name} must list one ratio per stage{stages}, got {ratios!r}")
    for value in ratios:
        check_range(name, value, low=0.0, high=1.0, low_inclusive=False)
    if any(b > a for a, b in zip(ratios, ratios[1:], strict=False)):
        raise ValueError(f"{name}={list(ratios)!r} must not increase from stage to stage")
    return tuple(float(r) for r in ratios)


def check_renumber(renumber: bool | None) -> None:
    """``TypeError`` unless ``renumber`` is a bool or None (None: the method's default)."""
    if renumber is not None and not isinstance(renumber, bool):
        raise TypeError(f"renumber must be a bool or None, got {renumber!r}")


def resolve_renumber(renumber: bool | None, default: bool, adapter: Any) -> bool:
    """``None`` -> ``default`` on 1-D RoPE models and ``False`` on M-RoPE (Qwen2-VL), whose
    3-D positions have no consecutive renumbering; ``True`` on M-RoPE raises."""
    check_renumber(renumber)
    if renumber is None:
        return default and not adapter.mrope
    if renumber and adapter.mrope:
        raise ValueError(
            f"renumber=True is not supported for {adapter.name} (M-RoPE 3-D positions); "
            "allowed: False or None"
        )
    return renumber


def attention_scale(module: nn.Module, query: torch.Tensor) -> float:
    scale = getattr(module, "scaling", None)
    return float(scale) if scale is not None else query.shape[-1] ** -0.5


class StagedBudget:
    """What every in-LLM config shares (fields declared by each dataclass: ``keep``,
    ``tokens``, ``renumber``, and ``layers``/``ratios`` where it has stages): stage layers
    resolved from the language model's depth, and per-stage targets from one budget."""

    name: ClassVar[str]
    paper_layers: ClassVar[tuple[int, ...]]
    default_keep: ClassVar[float]
    default_renumber: ClassVar[bool]
    keep: float | None
    tokens: int | None
    renumber: bool | None

    def explicit_layers(self) -> tuple[int, ...] | None:
        return getattr(self, "layers", None)

    def stage_layers(self, depth: int) -> tuple[int, ...]:
        """Decoder layers where the stages start on a ``depth``-layer language model."""
        layers = resolve_layers(self.name, self.explicit_layers(), self.paper_layers, depth)
        ratios = getattr(self, "ratios", None)
        if ratios is not None and len(ratios) != len(layers):
            raise ValueError(
                f"ratios={list(ratios)!r} lists {len(ratios)} stage(s), but this {depth}-layer "
                f"language model gets {len(layers)} by default (layers={list(layers)!r}); pass "
                "layers= with one decoder layer per ratio, or one budget with keep=/tokens="
            )
        return layers

    def check_model(self, model: nn.Module, adapter: Any) -> None:
        """``ValueError`` for layers past this model's depth or renumbering on M-RoPE."""
        self.stage_layers(len(adapter.decoder_layers(model)))
        resolve_renumber(self.renumber, self.default_renumber, adapter)

    def ratio_count(self, visual_before: torch.Tensor, ratio: float) -> torch.Tensor:
        """Tokens a stage keeps out of ``visual_before`` for an explicit ``ratio``."""
        return (visual_before.double() * ratio).round().long().clamp(min=1)

    def stage_count(
        self, visual_before: torch.Tensor, last: torch.Tensor, stage: int, stages: int
    ) -> torch.Tensor:
        """Tokens an earlier ``stage`` keeps, derived from the ``last`` stage's count."""
        return last

    def target(self, visual_before: torch.Tensor, stage: int, stages: int) -> torch.Tensor:
        """Visual tokens kept per row at ``stage`` of ``stages``, ``(B,)``, out of
        ``visual_before`` ``(B,)``; the last stage keeps the budget (``keep``/``tokens``)."""
        ratios = getattr(self, "ratios", None)
        if ratios is not None:
            return self.ratio_count(visual_before, ratios[stage])
        keep = self.default_keep if self.keep is None else self.keep
        last = final_count(visual_before, keep, self.tokens)
        if stage == stages - 1:
            return last
        derived = self.stage_count(visual_before, last, stage, stages)
        return derived.maximum(last).minimum(visual_before)


class LastTokenPolicy:
    """Rank visual tokens by the attention the last instruction token pays them (softmax over
    every key it sees, text included, averaged over heads; GQA key heads shared as in the
    model); stage ``s`` keeps ``config.target(visual_before, s, stages)`` of them per row.
    Ranked in the attention of the layer before the stage (FastV)."""

    rank_layer_offset = 1

    def __init__(self, config: Any, stages: int):
        self.config = config
        self.stages = stages

    def begin(self, prefill: Prefill, embeds: torch.Tensor | None) -> None:
        return None

    def score(
        self, stage: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor, tokens: Tokens
    ) -> torch.Tensor:
        rows = tokens.last.unsqueeze(-1)
        return received_attention(query, key, rows, attention_scale(module, query), tokens.padding)

    def select(
        self,
        stage: int,
        scored: torch.Tensor,
        tokens: Tokens,
        hidden: torch.Tensor,
        prefill: Prefill,
    ) -> Selection:
        visual = tokens.visual.to(scored.device)
        available = visual.sum(-1)
        target = self.config.target(prefill.visual_before.to(scored.device), stage, self.stages)
        drop = drop_count(available, torch.minimum(target, available))
        keep = drop_mask(scored, visual, drop).nonzero()[:, 1].view(visual.shape[0], -1)
        return Selection(keep=keep, visual=visual.gather(1, keep))


class StageLayerPolicy(LastTokenPolicy):
    """:class:`LastTokenPolicy` ranked by the first layer of the stage (PyramidDrop)."""

    rank_layer_offset = 0


@dataclasses.dataclass
class FastV(StagedBudget, MethodConfig):
    """FastV: after decoder layer K, keep the visual tokens the last prompt token attends to most.

    Chen et al., 2024. ``layer`` is K, the number of decoder layers that see every token;
    ranked by the attention of layer ``K - 1``. Default: the paper's ``K=2`` of 32 layers,
    scaled to the model's depth (2 on 7B models, 1 on the 2-layer test models).

    Budget over all visual tokens of a prompt: ``keep`` (ratio, default 0.25) or ``tokens``
    (absolute). ``renumber``: give kept tokens consecutive positions (1-D RoPE only); FastV
    keeps the original positions (default).

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "fastv", keep=0.25) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["stages"], handle.stats["tokens_before"], handle.stats["tokens_after"]
    ([1], [64], [16])
    """

    layer: int | None = None
    keep: float | None = None
    tokens: int | None = None
    renumber: bool = False

    name: ClassVar[str] = "fastv"
    paper_layers: ClassVar[tuple[int, ...]] = (2,)
    default_keep: ClassVar[float] = 0.25
    default_renumber: ClassVar[bool] = False

    def validate(self) -> None:
        if self.layer is not None:
            check_layers("layer", self.layer)
        check_overall_budget(self.keep, self.tokens, None)
        if not isinstance(self.renumber, bool):
            raise TypeError(f"renumber must be a bool, got {self.renumber!r}")

    def explicit_layers(self) -> tuple[int, ...] | None:
        return None if self.layer is None else (self.layer,)


@dataclasses.dataclass
class PDrop(StagedBudget, MethodConfig):
    """PyramidDrop: stages keeping fewer and fewer visual tokens, ranked by the last prompt token.

    Xing et al., 2024. ``layers``: where the stages start (decoder layers before each; default
    the paper's 8/16/24 of 32, scaled to the model's depth). Budget: ``keep`` (default 0.125)
    or ``tokens``, what the last stage keeps; earlier stages form a geometric pyramid,
    ``keep ** (s / S)`` at stage ``s`` of ``S`` (0.5, 0.25, 0.125 of 576: 288, 144, 72). Or
    ``ratios``, one per stage, each stage keeping ``int(n * ratios[i])`` of the prompt's ``n``
    visual tokens as the authors' code counts. Each stage ranks by its first layer
    ``layers[i]``: that layer's input norm, ``q``/``k`` projections and RoPE applied to the
    full hidden states entering it (the authors' ``pdrop_rank_drop``). ``renumber`` (default:
    True on 1-D RoPE, as the authors' code; False on M-RoPE) gives kept tokens consecutive
    positions.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "pdrop", layers=(1,), keep=0.25) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_after"]
    [16]
    """

    layers: tuple[int, ...] | None = None
    keep: float | None = None
    tokens: int | None = None
    ratios: tuple[float, ...] | None = None
    renumber: bool | None = None

    name: ClassVar[str] = "pdrop"
    paper_layers: ClassVar[tuple[int, ...]] = (8, 16, 24)
    default_keep: ClassVar[float] = 0.125
    default_renumber: ClassVar[bool] = True

    def validate(self) -> None:
        if self.layers is not None:
            self.layers = check_layers("layers", self.layers)
        check_overall_budget(self.keep, self.tokens, self.ratios)
        if self.ratios is not None:
            count = None if self.layers is None else len(self.layers)
            self.ratios = check_ratios("ratios", self.ratios, count)
        check_renumber(self.renumber)

    def ratio_count(self, visual_before: torch.Tensor, ratio: float) -> torch.Tensor:
        """``int(n * ratio)`` as the authors' code counts (at least 1), ``(B,)``."""
        return (visual_before.double() * ratio).floor().long().clamp(min=1)

    def stage_count(
        self, visual_before: torch.Tensor, last: torch.Tensor, stage: int, stages: int
    ) -> torch.Tensor:
        """``int(n * keep ** (s / S))``, ``keep = last / n`` (the geometric pyramid)."""
        n = visual_before.double()
        share = (last.double() / n) ** ((stage + 1) / stages)
        return (n * share + 1e-9).floor().long()


def install(model: nn.Module, config: Any, handle: Any, adapter: Any, policy: type) -> InLLMPruner:
    """Resolve the stages on this model, then install the pruner (every in-LLM method)."""
    config.check_model(model, adapter)
    depth = len(adapter.decoder_layers(model))
    stages = config.stage_layers(depth)
    if config.explicit_layers() is None:
        warn_collapsed(config.name, config.paper_layers, stages, depth)
    renumber = resolve_renumber(config.renumber, config.default_renumber, adapter)
    pruner = InLLMPruner(
        model, adapter, handle, list(stages), policy(config, len(stages)), renumber
    )
    pruner.install()
    handle.stats["stages"] = list(stages)
    handle.stats["renumber"] = renumber
    return pruner


@METHODS.register("fastv", FastV)
def apply_fastv(model: nn.Module, config: FastV, handle: Any, adapter: Any) -> InLLMPruner:
    return install(model, config, handle, adapter, LastTokenPolicy)


@METHODS.register("pdrop", PDrop)
def apply_pdrop(model: nn.Module, config: PDrop, handle: Any, adapter: Any) -> InLLMPruner:
    return install(model, config, handle, adapter, StageLayerPolicy)

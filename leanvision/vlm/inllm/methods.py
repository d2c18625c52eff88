"""FastV and PyramidDrop: drop visual tokens inside the language model by the attention the
last instruction token (the prompt's last token) pays them.

Layer convention, shared by every in-LLM method: ``layer=K`` means the first ``K`` decoder
layers see the whole prompt and layers ``K ..`` see only the kept tokens. This is FastV's
``K`` (``K=2``: two full layers), ranked by the attention of layer ``K - 1``; PyramidDrop's
``layers=[8, 16, 24]`` split the 32 layers of LLaVA-1.5-7B into its four stages, each ranked
by the first layer of the new stage (layer ``K``: its input norm, ``q``/``k`` projections and
RoPE on the full hidden states entering it), as the authors' code does.

Image separators (LLaVA-NeXT/OneVision newlines) are never ranked, counted or dropped.

>>> FastV(layer=2, keep=0.25).target(torch.tensor([576]), 0).tolist()
[144]
>>> PDrop(layers=(8, 16, 24)).target(torch.tensor([576]), 2).tolist()
[72]
>>> PDrop(layers=(2,), ratios=(0.3,)).target(torch.tensor([10]), 0).tolist()  # int(10 * 0.3)
[3]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from leanvision.core.config import MethodConfig, check_budget, check_range
from leanvision.vlm.inllm.engine import InLLMPruner, Prefill, Selection, Tokens
from leanvision.vlm.inllm.selection import drop_count, drop_mask, received_attention
from leanvision.vlm.registry import METHODS

DEFAULT_KEEP = 0.25


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


def check_ratios(name: str, ratios: Any, count: int) -> tuple[float, ...]:
    """``count`` kept fractions in (0, 1], non-increasing stage after stage."""
    if not isinstance(ratios, (list, tuple)) or len(ratios) != count:
        raise ValueError(f"{name} must list one ratio per stage ({count}), got {ratios!r}")
    for value in ratios:
        check_range(name, value, low=0.0, high=1.0, low_inclusive=False)
    if any(b > a for a, b in zip(ratios, ratios[1:], strict=False)):
        raise ValueError(f"{name}={list(ratios)!r} must not increase from stage to stage")
    return tuple(float(r) for r in ratios)


def check_depth(name: str, layers: tuple[int, ...], adapter: Any, model: nn.Module) -> None:
    """Every stage must leave at least one decoder layer to prune."""
    depth = len(adapter.decoder_layers(model))
    if layers[-1] > depth - 1:
        raise ValueError(
            f"{name}={list(layers) if len(layers) > 1 else layers[0]!r} is past the language "
            f"model's depth ({depth} decoder layers); allowed: 1..{depth - 1}"
        )


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


class LastTokenPolicy:
    """Rank visual tokens by the attention the last instruction token pays them (softmax over
    every key it sees, text included, averaged over heads; GQA key heads shared as in the
    model); stage ``s`` keeps ``config.target(visual_before, s)`` of them per row. Ranked in
    the attention of the layer before the stage (FastV)."""

    rank_layer_offset = 1

    def __init__(self, config: Any):
        self.config = config

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
        target = self.config.target(prefill.visual_before.to(scored.device), stage)
        drop = drop_count(available, torch.minimum(target, available))
        keep = drop_mask(scored, visual, drop).nonzero()[:, 1].view(visual.shape[0], -1)
        return Selection(keep=keep, visual=visual.gather(1, keep))


class StageLayerPolicy(LastTokenPolicy):
    """:class:`LastTokenPolicy` ranked by the first layer of the stage (PyramidDrop)."""

    rank_layer_offset = 0


@dataclasses.dataclass
class FastV(MethodConfig):
    """FastV (Chen et al., 2024): after layer ``layer`` (the number of decoder layers that
    see every token; FastV's K), keep the visual tokens that received the most attention from
    the last instruction token in layer ``layer - 1``.

    Budget over all visual tokens of a prompt: ``keep`` (ratio, default 0.25) or ``tokens``
    (absolute). ``renumber``: give kept tokens consecutive positions (1-D RoPE only); FastV
    keeps the original positions (default).
    """

    layer: int = 2
    keep: float | None = None
    tokens: int | None = None
    renumber: bool = False

    def validate(self) -> None:
        check_layers("layer", self.layer)
        check_budget(self.tokens, self.keep, self.renumber)

    def check_model(self, model: nn.Module, adapter: Any) -> None:
        check_depth("layer", (self.layer,), adapter, model)
        resolve_renumber(self.renumber, False, adapter)

    def target(self, visual_before: torch.Tensor, stage: int) -> torch.Tensor:
        """Visual tokens kept per row, ``(B,)``, out of ``visual_before`` ``(B,)``."""
        if self.tokens is not None:
            if bool((visual_before < self.tokens).any()):
                raise ValueError(
                    f"tokens={self.tokens} is more than the prompt's "
                    f"{int(visual_before.min())} visual tokens; allowed: 1..{int(visual_before.min())}"
                )
            return torch.full_like(visual_before, self.tokens)
        keep = DEFAULT_KEEP if self.keep is None else self.keep
        return (visual_before.double() * keep).round().long().clamp(min=1)


@dataclasses.dataclass
class PDrop(MethodConfig):
    """PyramidDrop (Xing et al., 2024): stages at ``layers`` (each the number of decoder
    layers before the stage starts); at each, keep ``int(n * ratios[i])`` of the prompt's
    ``n`` visual tokens (e.g. 288, 144, 72 of 576), the ones the last instruction token
    attends to most in the stage's first layer ``layers[i]``: that layer's input norm,
    ``q``/``k`` projections and RoPE applied to the full hidden states entering it (the
    authors' ``pdrop_rank_drop``, which reads ``self.layers[rank_layer]`` after layer
    ``rank_layer - 1`` ran). ``renumber`` (default: True on 1-D RoPE, as in the authors'
    code; False on M-RoPE) gives kept tokens consecutive positions.
    """

    layers: tuple[int, ...] = (8, 16, 24)
    ratios: tuple[float, ...] = (0.5, 0.25, 0.125)
    renumber: bool | None = None

    def validate(self) -> None:
        self.layers = check_layers("layers", self.layers)
        self.ratios = check_ratios("ratios", self.ratios, len(self.layers))
        check_renumber(self.renumber)

    def check_model(self, model: nn.Module, adapter: Any) -> None:
        check_depth("layers", self.layers, adapter, model)
        resolve_renumber(self.renumber, True, adapter)

    def target(self, visual_before: torch.Tensor, stage: int) -> torch.Tensor:
        """``int(n * ratio)`` as the authors' code counts (at least 1), ``(B,)``."""
        return (visual_before.double() * self.ratios[stage]).floor().long().clamp(min=1)


def install(model: nn.Module, config: Any, handle: Any, adapter: Any, stages, policy, renumber):
    """Check the model, then install the pruner (shared by every in-LLM method)."""
    config.check_model(model, adapter)
    pruner = InLLMPruner(model, adapter, handle, list(stages), policy, renumber)
    pruner.install()
    handle.stats["stages"] = list(stages)
    handle.stats["renumber"] = renumber
    return pruner


@METHODS.register("fastv", FastV)
def apply_fastv(model: nn.Module, config: FastV, handle: Any, adapter: Any) -> InLLMPruner:
    renumber = resolve_renumber(config.renumber, False, adapter)
    return install(
        model, config, handle, adapter, (config.layer,), LastTokenPolicy(config), renumber
    )


@METHODS.register("pdrop", PDrop)
def apply_pdrop(model: nn.Module, config: PDrop, handle: Any, adapter: Any) -> InLLMPruner:
    renumber = resolve_renumber(config.renumber, True, adapter)
    return install(
        model, config, handle, adapter, config.layers, StageLayerPolicy(config), renumber
    )

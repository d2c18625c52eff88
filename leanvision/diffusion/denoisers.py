"""Which module of a diffusers pipeline is the denoiser, and how its blocks are laid out.

Architecture facts are data (rule 3): :data:`DENOISERS` maps a denoiser class name to a
:class:`DenoiserSpec`. Methods ask :func:`find_denoiser` for the denoiser and its spec and
walk the block structure through :func:`unet_layers` / :func:`transformer_blocks`; they never
test ``isinstance`` against diffusers classes.

>>> from leanvision.testing.tiny_diffusion import tiny_dit
>>> denoiser, pipe, spec = find_denoiser(tiny_dit().model)
>>> spec.kind, spec.block_lists
('dit', ('transformer_blocks',))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from leanvision.core.errors import UnsupportedModelError

# The family named in refusals, so a model of another library is pointed at its entry point.
FAMILY = "diffusion"

__all__ = [
    "DENOISERS",
    "DenoiserSpec",
    "UNetLayer",
    "find_denoiser",
    "transformer_blocks",
    "unet_layers",
]


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
    """Facts about one denoiser class.

    ``kind`` is ``"unet"`` (down/mid/up blocks with skip connections) or ``"dit"`` (a chain
    of transformer blocks). ``block_lists`` names the ``ModuleList`` attributes holding the
    transformer blocks, in execution order. ``output_indices`` gives, for blocks returning
    a tuple, the positions of (hidden_states, encoder_hidden_states) in it; ``None`` for
    blocks returning one tensor.
    """

    class_name: str
    family: str
    kind: str
    block_lists: tuple[str, ...] = ()
    output_indices: tuple[int, int] | None = None


DENOISERS: dict[str, DenoiserSpec] = {
    spec.class_name: spec
    for spec in (
        DenoiserSpec("UNet2DConditionModel", "SD 1.x/2.x, SDXL", "unet"),
        DenoiserSpec(
            "PixArtTransformer2DModel", "PixArt-alpha/sigma", "dit", ("transformer_blocks",)
        ),
        DenoiserSpec("DiTTransformer2DModel", "DiT", "dit", ("transformer_blocks",)),
        # Joint (MMDiT) blocks return (encoder_hidden_states, hidden_states).
        DenoiserSpec("SD3Transformer2DModel", "SD3", "dit", ("transformer_blocks",), (1, 0)),
        DenoiserSpec(
            "FluxTransformer2DModel",
            "FLUX",
            "dit",
            ("transformer_blocks", "single_transformer_blocks"),
            (1, 0),
        ),
    )
}

# Pipeline attributes that hold the denoiser, in the order they are looked up.
_DENOISER_ATTRIBUTES = ("unet", "transformer")


def _supported() -> list[str]:
    return [f"{spec.class_name} ({spec.family})" for spec in DENOISERS.values()]


def find_denoiser(obj: Any) -> tuple[torch.nn.Module, Any, DenoiserSpec]:
    """Return ``(denoiser, pipeline or None, spec)`` for a pipeline or a bare denoiser.

    Raises :class:`~leanvision.UnsupportedModelError` naming the supported classes when
    ``obj`` is neither a pipeline with a supported ``unet``/``transformer`` nor such a module.

    >>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline().model
    >>> denoiser, found_pipe, spec = find_denoiser(pipe)
    >>> denoiser is pipe.unet, found_pipe is pipe, spec.kind
    (True, True, 'unet')
    """
    if isinstance(obj, torch.nn.Module):
        spec = DENOISERS.get(type(obj).__name__)
        if spec is None:
            raise UnsupportedModelError(obj, _supported(), what="denoiser", family=FAMILY)
        return obj, None, spec
    for attribute in _DENOISER_ATTRIBUTES:
        denoiser = getattr(obj, attribute, None)
        if isinstance(denoiser, torch.nn.Module):
            spec = DENOISERS.get(type(denoiser).__name__)
            if spec is None:
                raise UnsupportedModelError(
                    denoiser, _supported(), what=f"pipe.{attribute}", family=FAMILY
                )
            return denoiser, obj, spec
    raise UnsupportedModelError(obj, _supported(), what="pipeline or denoiser", family=FAMILY)


@dataclasses.dataclass(frozen=True)
class UNetLayer:
    """One unit of a UNet's down or up path: a resnet, its attention (if any), or a
    down/upsampler. ``modules`` run in order; ``name`` is e.g. ``"down_blocks.0.layer1"``."""

    name: str
    modules: tuple[torch.nn.Module, ...]


def _block_layers(prefix: str, block: torch.nn.Module) -> tuple[list[UNetLayer], list[UNetLayer]]:
    """(resnet layers, sampler layers) of one down/up block."""
    resnets = getattr(block, "resnets", None)
    if resnets is None:
        raise UnsupportedModelError(block, ["blocks with .resnets"], what=f"UNet block {prefix}")
    attentions = getattr(block, "attentions", None) or [None] * len(resnets)
    layers = []
    for index, (resnet, attention) in enumerate(zip(resnets, attentions, strict=True)):
        modules = (resnet,) if attention is None else (resnet, attention)
        layers.append(UNetLayer(f"{prefix}.layer{index}", modules))
    samplers = []
    for attribute in ("downsamplers", "upsamplers"):
        for index, sampler in enumerate(getattr(block, attribute, None) or []):
            samplers.append(UNetLayer(f"{prefix}.{attribute}.{index}", (sampler,)))
    return layers, samplers


def unet_layers(unet: torch.nn.Module) -> tuple[list[UNetLayer], UNetLayer, list[UNetLayer]]:
    """The UNet as ``(down_layers, mid, up_layers)`` in execution order.

    ``down_layers[i]`` produces skip sample ``i + 1`` (sample 0 is ``conv_in``'s output) and
    ``up_layers`` are listed so that the resnet layer consuming skip sample ``s`` can be found
    with :func:`consumer_of`. Samplers are included as layers of their own.

    >>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
    >>> down, mid, up = unet_layers(tiny_sd_pipeline().model.unet)
    >>> [layer.name for layer in down]
    ['down_blocks.0.layer0', 'down_blocks.0.layer1', 'down_blocks.0.downsamplers.0', \
'down_blocks.1.layer0', 'down_blocks.1.layer1']
    """
    down: list[UNetLayer] = []
    for index, block in enumerate(unet.down_blocks):
        layers, samplers = _block_layers(f"down_blocks.{index}", block)
        down += layers + samplers
    up: list[UNetLayer] = []
    for index, block in enumerate(unet.up_blocks):
        layers, samplers = _block_layers(f"up_blocks.{index}", block)
        up += layers + samplers
    up_resnet_layers = [layer for layer in up if ".layer" in layer.name]
    if len(up_resnet_layers) != len(down) + 1:
        raise UnsupportedModelError(
            unet, ["UNets whose up path consumes every skip sample once"], what="UNet layout"
        )
    mid = UNetLayer("mid_block", (unet.mid_block,))
    return down, mid, up


def consumer_of(up_layers: list[UNetLayer], skip_index: int) -> int:
    """Index in ``up_layers`` of the resnet layer consuming skip sample ``skip_index``.

    The up path pops skip samples from the end, so the last resnet layer consumes sample 0.
    """
    resnet_positions = [i for i, layer in enumerate(up_layers) if ".layer" in layer.name]
    return resnet_positions[len(resnet_positions) - 1 - skip_index]


def transformer_blocks(denoiser: torch.nn.Module, spec: DenoiserSpec) -> list[torch.nn.Module]:
    """The transformer blocks of a DiT-like denoiser, in execution order.

    >>> from leanvision.testing.tiny_diffusion import tiny_flux
    >>> denoiser, _, spec = find_denoiser(tiny_flux().model)
    >>> len(transformer_blocks(denoiser, spec))
    2
    """
    if spec.kind != "dit":
        raise UnsupportedModelError(denoiser, ["transformer (DiT-like) denoisers"])
    blocks: list[torch.nn.Module] = []
    for name in spec.block_lists:
        blocks += list(getattr(denoiser, name))
    return blocks

"""``tome``: token merging for Stable Diffusion (Bolya & Hoffman, 2023).

Before the self-attention of every transformer block whose token grid is at most
``max_downsample`` times coarser than the latent, a fraction ``ratio`` of the tokens is
merged into similar ones by bipartite soft matching (destinations: one random token per
``sy x sx`` cell); attention (and optionally cross-attention and the MLP) runs on the fewer
tokens, and the result is unmerged back to the full grid before the residual add.

Patched through forward hooks on the denoiser instance, its transformer blocks and their
``attn1`` / ``attn2`` / ``ff`` children, all recorded in the :class:`~leanvision.core.Handle`,
so ``remove()`` restores the model bit for bit. Works on UNets (SD 1.x/2.x, SDXL) and on
PixArt / DiT transformers, whose blocks are diffusers ``BasicTransformerBlock`` s.

>>> import leanvision as lv
>>> from leanvision.testing import tiny_sd_pipeline
>>> pipe = tiny_sd_pipeline().model
>>> with lv.diffusion.accelerate(pipe, "tome", ratio=0.5) as handle:
...     image = pipe("a red fox in snow", num_inference_steps=2, height=32, width=32).images[0]
>>> handle.stats["tome_merged_tokens"]  # in the last denoiser call: 5 blocks x CFG batch 2
1280
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from leanvision.core.config import MethodConfig, check_choice, check_range
from leanvision.core.handle import Handle
from leanvision.diffusion.registry import METHODS
from leanvision.diffusion.tome.matching import (
    TokenMerge,
    bipartite_soft_matching_2d,
    destination_choices,
    grid_partition,
)
from leanvision.diffusion.tome.patch import find_blocks, install

__all__ = [
    "ToMe",
    "TokenMerge",
    "apply_tome",
    "bipartite_soft_matching_2d",
    "destination_choices",
    "grid_partition",
]

DOWNSAMPLE_LEVELS = (1, 2, 4, 8)


@dataclasses.dataclass
class ToMe(MethodConfig):
    """ToMe: merge similar tokens before attention, unmerge after (fewer attention FLOPs).

    Defaults follow the paper's recommended SD setting.

    ``ratio``: fraction of a block's tokens merged away (0 = no-op; at most
    ``1 - 1/(sx*sy)``, since only sources can merge). ``max_downsample``: merge in blocks
    whose grid is at most this many times coarser than the latent grid (1 = the highest
    resolution only; one of 1, 2, 4, 8). ``sx``/``sy``: destination stride (one destination
    per ``sy x sx`` cell). ``use_rand``: pick each cell's destination at random (a hash of
    ``seed``, the timestep and the block, so repeated calls are identical) instead of the
    top-left token. ``merge_attn`` / ``merge_crossattn`` / ``merge_mlp``: which sub-layers
    run on merged tokens.

    >>> ToMe(ratio=0.5).max_downsample
    1
    >>> ToMe(ratio=0.9)
    Traceback (most recent call last):
    ...
    ValueError: ratio=0.9 is out of range; allowed: [0, 0.75]
    """

    ratio: float = 0.5
    max_downsample: int = 1
    sx: int = 2
    sy: int = 2
    use_rand: bool = True
    seed: int = 0
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False

    def validate(self) -> None:
        for name in ("sx", "sy", "seed", "max_downsample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        check_range("sx", self.sx, 1)
        check_range("sy", self.sy, 1)
        if self.sx * self.sy < 2:
            raise ValueError(f"sx*sy must be at least 2 (got sx={self.sx}, sy={self.sy})")
        check_range("ratio", self.ratio, 0, 1 - 1 / (self.sx * self.sy))
        check_choice("max_downsample", self.max_downsample, DOWNSAMPLE_LEVELS)
        for name in ("use_rand", "merge_attn", "merge_crossattn", "merge_mlp"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not (self.merge_attn or self.merge_crossattn or self.merge_mlp):
            raise ValueError("at least one of merge_attn, merge_crossattn, merge_mlp must be True")


@METHODS.register("tome", ToMe)
def apply_tome(
    denoiser: torch.nn.Module, config: ToMe, handle: Handle, pipe: Any | None = None
) -> None:
    """Install token merging on ``denoiser`` (a UNet or a PixArt/DiT transformer) via ``handle``.

    Raises :class:`~leanvision.UnsupportedModelError` when ``denoiser`` has no
    ``BasicTransformerBlock`` (SD3, Flux: their joint blocks are not supported). ``pipe`` is
    unused; the denoiser's own forward tells the latent size and the timestep.

    >>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
    >>> unet = tiny_sd_pipeline().model.unet
    >>> with Handle.build(unet, "diffusion", "tome", ToMe(ratio=0.5)) as h:
    ...     apply_tome(unet, ToMe(ratio=0.5), h)
    >>> h.stats["tome_blocks"]  # every BasicTransformerBlock; levels are chosen per call
    6
    >>> h.remove()
    """
    blocks = find_blocks(denoiser, config)
    install(denoiser, blocks, config, handle)

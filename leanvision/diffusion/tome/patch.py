"""Forward hooks that run ToMe inside diffusers transformer blocks, on one model instance.

Per denoiser call, a pre-hook on the denoiser records the latent grid and a hash key from the
timestep. Per block call, a pre-hook on the block matches its input tokens (the paper's
metric) when the block's grid is fine enough, and pre/post hooks on ``attn1`` / ``attn2`` /
``ff`` merge their input and unmerge their output. No diffusers class or forward is touched.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from leanvision.core.errors import UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.core.warn import warn_user
from leanvision.diffusion.tome.matching import (
    _MASK31,
    TokenMerge,
    bipartite_soft_matching_2d,
    destination_choices,
)

if TYPE_CHECKING:
    from leanvision.diffusion.tome import ToMe


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Child attribute names of one transformer-block class: self-attention, cross-attention,
    MLP. Architecture facts as data: supporting a new block is one more entry."""

    self_attn: str
    cross_attn: str
    mlp: str


# Block class name -> layout. BasicTransformerBlock is the block of SD 1.x/2.x and SDXL UNets
# (inside Transformer2DModel), PixArt-alpha/sigma and DiT.
BLOCK_LAYOUTS: dict[str, BlockLayout] = {
    "BasicTransformerBlock": BlockLayout(self_attn="attn1", cross_attn="attn2", mlp="ff"),
}
SUPPORTED = ("SD 1.x/2.x UNet", "SDXL UNet", "PixArt-alpha/sigma", "DiT")


def find_blocks(
    denoiser: torch.nn.Module, config: ToMe
) -> list[tuple[torch.nn.Module, BlockLayout]]:
    """The denoiser's transformer blocks ToMe can patch, in module order; raises before any
    change when there are none or when a block's MLP runs in chunks (``merge_mlp``)."""
    if not isinstance(denoiser, torch.nn.Module):
        raise TypeError(f"denoiser must be a torch.nn.Module, got {type(denoiser).__name__}")
    blocks = []
    for module in denoiser.modules():
        layout = BLOCK_LAYOUTS.get(type(module).__name__)
        if layout is None:
            continue
        if config.merge_mlp and getattr(module, "_chunk_size", None) is not None:
            raise ValueError(
                "merge_mlp=True cannot merge a feed-forward that runs in chunks; call "
                "disable_forward_chunking() on the model or use merge_mlp=False"
            )
        blocks.append((module, layout))
    if not blocks:
        raise UnsupportedModelError(denoiser, SUPPORTED, what="denoiser for tome")
    return blocks


def _first_tensor(args: tuple, kwargs: dict, *names: str) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for name in names:
        if isinstance(kwargs.get(name), torch.Tensor):
            return kwargs[name]
    return None


class ToMeRuntime:
    """State shared by the hooks of one patched denoiser."""

    def __init__(self, config: ToMe, patch_size: int, stats: dict[str, Any]):
        self.config = config
        self.patch_size = patch_size
        self.stats = stats
        self.grid: tuple[int, int] | None = None  # the latent grid in tokens
        self.step_key: torch.Tensor | int = 0
        self.plans: dict[int, TokenMerge | None] = {}
        self.merging: set[tuple[int, str]] = set()  # sub-layers whose input was merged
        self.blocks_run = 0
        self.warned_grid = False
        self.warned_idle = False

    # ---------------------------------------------------------------- denoiser

    def on_denoiser(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = _first_tensor(args, kwargs, "sample", "hidden_states")
        self.grid = None
        if sample is not None and sample.ndim == 4:
            height, width = sample.shape[-2:]
            self.grid = (math.ceil(height / self.patch_size), math.ceil(width / self.patch_size))
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        self.step_key = self._timestep_key(timestep)
        self.stats["tome_merged_tokens"] = 0
        self.stats["tome_merged_blocks"] = 0
        self.blocks_run = 0

    def after_denoiser(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        # A setting that cannot help says so (once) rather than silently doing nothing: e.g.
        # SDXL has no transformer block at full resolution, so max_downsample=1 merges nothing.
        # Blocks skipped by a step cache composed with tome do not count.
        idle = self.blocks_run > 0 and self.stats["tome_merged_blocks"] == 0
        if idle and self.config.ratio > 0 and not self.warned_idle:
            self.warned_idle = True
            warn_user(
                f"tome merged no tokens in this call: no transformer block runs at a grid at "
                f"most max_downsample={self.config.max_downsample} times coarser than the "
                f"latent; try max_downsample=2 (SDXL's first attention level)"
            )

    def _timestep_key(self, timestep: Any) -> torch.Tensor | int:
        # The same timestep gives the same destinations, so separate cond/uncond passes and
        # repeated pipeline calls agree; the key stays on the timestep's device (no sync).
        seed = self.config.seed & _MASK31
        if timestep is None:
            return seed
        t = torch.as_tensor(timestep).reshape(-1)[:1].float()
        return ((t * 16).round().long() & _MASK31) * 1000003 + seed

    # ---------------------------------------------------------------- block

    def plan(self, index: int, tokens: torch.Tensor) -> TokenMerge | None:
        """Match ``tokens`` (B, N, C) of block ``index``, or None when it is not merged."""
        if self.grid is None or tokens.ndim != 3 or self.config.ratio == 0:
            return None
        height, width = self.grid
        count = tokens.shape[1]
        downsample = math.ceil(math.sqrt(max(1, (height * width) // count)))
        if downsample > self.config.max_downsample:
            return None
        rows, cols = math.ceil(height / downsample), math.ceil(width / downsample)
        if rows * cols != count:
            if not self.warned_grid:
                warn_user(
                    f"tome: a block has {count} tokens, not a {rows}x{cols} grid of the "
                    f"{height}x{width} latent; such blocks run unmerged"
                )
                self.warned_grid = True
            return None
        config = self.config
        choices = None
        if config.use_rand:
            key = self.step_key + index * 7919
            choices = destination_choices(
                rows // config.sy, cols // config.sx, config.sx * config.sy, key, tokens.device
            )
        plan = bipartite_soft_matching_2d(
            tokens, rows, cols, config.sx, config.sy, int(count * config.ratio), choices
        )
        if plan is not None:
            self.stats["tome_merged_tokens"] += plan.merged_count * tokens.shape[0]
            self.stats["tome_merged_blocks"] += 1
        return plan

    def block_pre(self, index: int, args: tuple, kwargs: dict) -> None:
        tokens = _first_tensor(args, kwargs, "hidden_states")
        self.blocks_run += 1
        self.plans[index] = None if tokens is None else self.plan(index, tokens)

    def block_post(self, index: int) -> None:
        self.plans.pop(index, None)  # free the indices as soon as the block is done

    # ---------------------------------------------------------------- sub-layers

    def layer_pre(self, index: int, name: str, args: tuple, kwargs: dict) -> Any:
        plan = self.plans.get(index)
        if plan is None:
            return None
        if name == "self_attn" and kwargs.get("attention_mask") is not None:
            raise ValueError(
                "tome cannot merge tokens of a self-attention that has an attention_mask; "
                "remove the handle or call the model without attention_mask"
            )
        self.merging.add((index, name))
        if args and isinstance(args[0], torch.Tensor):
            return (plan.merge(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs, hidden_states=plan.merge(kwargs["hidden_states"]))
        return args, kwargs

    def layer_post(self, index: int, name: str, output: Any) -> Any:
        if (index, name) not in self.merging:
            return None
        self.merging.discard((index, name))
        return self.plans[index].unmerge(output)


def install(
    denoiser: torch.nn.Module,
    blocks: list[tuple[torch.nn.Module, BlockLayout]],
    config: ToMe,
    handle: Handle,
) -> ToMeRuntime:
    """Register every hook through ``handle`` and return the shared runtime state."""
    patch_size = getattr(getattr(denoiser, "config", None), "patch_size", None) or 1
    runtime = ToMeRuntime(config, int(patch_size), handle.stats)
    handle.stats["tome_blocks"] = len(blocks)
    handle.add_hook(denoiser.register_forward_pre_hook(runtime.on_denoiser, with_kwargs=True))
    handle.add_hook(denoiser.register_forward_hook(runtime.after_denoiser))
    wanted = {"self_attn": config.merge_attn, "cross_attn": config.merge_crossattn}
    wanted["mlp"] = config.merge_mlp
    for index, (block, layout) in enumerate(blocks):
        handle.add_hook(
            block.register_forward_pre_hook(
                lambda _m, args, kwargs, i=index: runtime.block_pre(i, args, kwargs),
                with_kwargs=True,
            )
        )
        handle.add_hook(
            block.register_forward_hook(lambda _m, _a, _o, i=index: runtime.block_post(i))
        )
        for name, enabled in wanted.items():
            layer = getattr(block, getattr(layout, name), None)
            if not enabled or not isinstance(layer, torch.nn.Module):
                continue
            handle.add_hook(
                layer.register_forward_pre_hook(
                    lambda _m, args, kwargs, i=index, n=name: runtime.layer_pre(i, n, args, kwargs),
                    with_kwargs=True,
                )
            )
            handle.add_hook(
                layer.register_forward_hook(
                    lambda _m, _a, output, i=index, n=name: runtime.layer_post(i, n, output)
                )
            )
    return runtime

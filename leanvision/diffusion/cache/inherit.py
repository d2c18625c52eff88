"""Feature inheritance (A-SDM, "Adaptively Skipping Denoising"-style): on chosen steps,
chosen parts of the denoiser are not run and pass on their output from the previous step.

``granularity`` picks what a part is:

* ``"block"``: UNet down / mid / up blocks; DiT transformer blocks.
* ``"layer"``: UNet (resnet [+ attention]) layers, samplers and the mid block; for a DiT,
  the attention modules of one block together.
* ``"unit"``: single resnets, attentions and samplers (UNet); single attention and
  feed-forward modules (DiT).

``targets`` indexes the parts at that granularity in execution order (default: the middle
third, i.e. the deepest UNet parts). ``steps`` picks the inheriting steps: ``"uniform"``
(every step not a multiple of ``interval``), ``"early"`` or ``"late"`` (a ``fraction`` of the
steps after step 0, at the start or the end of the run). Step 0 never inherits.

>>> import leanvision as lv
>>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
>>> tiny = tiny_sd_pipeline()
>>> with lv.diffusion.accelerate(tiny.model, "inherit", granularity="layer") as handle:
...     _ = tiny.model(**{**tiny.inputs, "num_inference_steps": 6})
>>> handle.stats["last_run"]
'FCFCFC'
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from leanvision.core.config import MethodConfig, check_choice, check_range
from leanvision.core.handle import Handle
from leanvision.diffusion.cache._reuse import ReusePlan
from leanvision.diffusion.denoisers import (
    DenoiserSpec,
    find_denoiser,
    transformer_blocks,
    unet_layers,
)
from leanvision.diffusion.registry import METHODS
from leanvision.diffusion.runtime import DenoiserRuntime, get_runtime

__all__ = ["GRANULARITIES", "STEP_MODES", "Inherit", "inheritable_parts"]

GRANULARITIES = ("block", "layer", "unit")
STEP_MODES = ("uniform", "early", "late")


@dataclasses.dataclass
class Inherit(MethodConfig):
    """Feature inheritance (A-SDM): reuse a block's output from the previous step on some steps.

    See the module docstring for the meaning of each option.

    >>> Inherit(interval=3).granularity
    'block'
    """

    granularity: str = "block"
    targets: tuple[int, ...] | None = None
    steps: str = "uniform"
    interval: int = 2
    fraction: float = 0.5

    def validate(self) -> None:
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("steps", self.steps, STEP_MODES)
        if not isinstance(self.interval, int) or isinstance(self.interval, bool):
            raise TypeError(f"interval must be an int, got {self.interval!r}")
        check_range("interval", self.interval, 2)
        check_range("fraction", self.fraction, 0.0, 1.0, low_inclusive=False)
        targets = self.targets
        valid = targets is None or (
            len(targets) > 0
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in targets)
        )
        if not valid:
            raise ValueError(f"targets must be non-empty non-negative ints, got {targets!r}")


def _unet_parts(unet: torch.nn.Module, granularity: str) -> list[list[torch.nn.Module]]:
    if granularity == "block":
        return [[block] for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks)]
    down, mid, up = unet_layers(unet)
    layers = [*down, mid, *up]
    if granularity == "layer":
        return [list(layer.modules) for layer in layers]
    parts = []
    for layer in layers:
        if layer is mid:  # the mid block's own resnets and attentions, in execution order
            block = mid.modules[0]
            resnets = list(block.resnets)
            attentions = list(getattr(block, "attentions", None) or [None] * (len(resnets) - 1))
            pairs = zip(attentions, resnets[1:], strict=True)
            children = resnets[:1] + [module for pair in pairs for module in pair]
            parts += [[child] for child in children if child is not None]
        else:
            parts += [[module] for module in layer.modules]
    return parts


def _dit_parts(denoiser: torch.nn.Module, spec: DenoiserSpec, granularity: str) -> list[list[Any]]:
    blocks = transformer_blocks(denoiser, spec)
    if granularity == "block":
        return [[block] for block in blocks]
    parts: list[list[Any]] = []
    for block in blocks:
        children = [
            module
            for name, module in block.named_children()
            if name.startswith("attn") or (granularity == "unit" and name.startswith("ff"))
        ]
        if granularity == "layer":
            parts.append(list(children))
        else:
            parts += [[module] for module in children]
    return [part for part in parts if part]


def inheritable_parts(denoiser: torch.nn.Module, granularity: str) -> list[list[torch.nn.Module]]:
    """The parts ``Inherit`` can target at ``granularity``, in execution order.

    >>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
    >>> len(inheritable_parts(tiny_sd_pipeline().model.unet, "block"))
    5
    """
    check_choice("granularity", granularity, GRANULARITIES)
    _, _, spec = find_denoiser(denoiser)
    if spec.kind == "unet":
        return _unet_parts(denoiser, granularity)
    return _dit_parts(denoiser, spec, granularity)


def _inherits(config: Inherit, runtime: DenoiserRuntime) -> bool:
    step = runtime.step_index
    if step <= 0:
        return False
    if config.steps == "uniform":
        return step % config.interval != 0
    num_steps = runtime.require_num_steps(f"inherit's steps={config.steps!r}")
    count = math.floor(config.fraction * (num_steps - 1))
    if config.steps == "early":
        return step <= count
    return step >= num_steps - count


@METHODS.register("inherit", Inherit)
def apply_inherit(
    denoiser: torch.nn.Module, config: Inherit, handle: Handle, pipe: Any = None
) -> None:
    """Hook the targeted parts of ``denoiser`` for feature inheritance."""
    parts = inheritable_parts(denoiser, config.granularity)
    if config.targets is None:
        start, stop = len(parts) // 3, max(2 * len(parts) // 3, len(parts) // 3 + 1)
        targets = tuple(range(start, stop))
    else:
        targets = config.targets
        if max(targets) >= len(parts):
            raise ValueError(
                f"targets={targets} is out of range: this denoiser has {len(parts)} parts at "
                f"granularity={config.granularity!r}; allowed: 0..{len(parts) - 1}"
            )
    runtime = get_runtime(handle, denoiser, pipe)
    plan = ReusePlan(handle, runtime, "leanvision_inherit")
    plan.add_targets([module for index in sorted(set(targets)) for module in parts[index]])
    runtime.on_call(lambda: plan.set_reuse(_inherits(config, runtime)))

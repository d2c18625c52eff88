"""DeepCache (Ma et al., 2023): reuse a UNet's deep features, recompute its shallow branch.

On a full step the whole UNet runs and every *deep* layer's output is kept; on the steps in
between, the deep layers return their kept output without running and only the shallow skip
branch is recomputed: ``conv_in``, the down layers before ``branch`` (none for branch 0), and
the up layers from the one that consumes skip sample ``branch`` to the end.

Branch numbering, and the default. Our ``branch`` counts skip samples (0 = ``conv_in``'s
output), as the ``cache_branch_id`` of the published ``DeepCacheSDHelper`` does (equal at
every branch, ``tests/diffusion/test_cache_oracles.py``). The authors' original SD code
names the same point by ``cache_layer_id``/``cache_block_id`` (down block, layer in it). The
paper's SD 1.5 numbers were run with ``cache_layer_id=0, cache_block_id=0``: a cached step
also recomputes the first layer of down block 0 and the last two up layers, which is our
``branch=1``, the default here. ``DeepCacheSDHelper``'s default ``cache_branch_id=0`` is our
``branch=0`` (``conv_in``, the last up layer and ``conv_out`` only): cheaper, more reuse.
Layers are hooked one by one (diffusers ``ModelHook``s), so
no UNet forward is copied.

ControlNet rule: the ControlNet still runs every step. Its residuals are added by the UNet
to the skip samples, so the shallow branch gets the current step's residuals; the deep
features (and with them the deep ControlNet residuals) come from the last full step. The mid
residual is added after the mid block, so at the deepest branch (only the mid block kept) the
current step's mid residual meets the kept mid output, as in the published
``DeepCacheSDHelper`` (both checked in ``tests/diffusion/test_cache_oracles.py``).

torch.compile: compile the UNet in place, ``pipe.unet.compile()`` (before or after applying);
``pipe.unet = torch.compile(pipe.unet)`` replaces it with an ``OptimizedModule``, which is
refused with :class:`~leanvision.UnsupportedModelError`. The step bookkeeping runs eagerly
(one graph break per UNet call), and the reuse hooks compile into two variants (full and
cached step), so later calls do not recompile. ``remove()`` drops the hooks, not the
compilation (tested in ``tests/diffusion/test_delegated_and_compile.py``).

>>> import leanvision as lv
>>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
>>> tiny = tiny_sd_pipeline()
>>> with lv.diffusion.accelerate(tiny.model, "deepcache", interval=3) as handle:
...     _ = tiny.model(**{**tiny.inputs, "num_inference_steps": 7})
>>> handle.stats["last_run"]
'FCCFCCF'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from leanvision.core.config import MethodConfig, check_choice, check_range
from leanvision.core.errors import UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.diffusion.cache._reuse import ReusePlan
from leanvision.diffusion.cache.schedules import nonuniform_full_steps, uniform_full_steps
from leanvision.diffusion.denoisers import consumer_of, find_denoiser, unet_layers
from leanvision.diffusion.registry import METHODS
from leanvision.diffusion.runtime import get_runtime

__all__ = ["DeepCache", "deep_modules"]

SCHEDULES = ("uniform", "nonuniform")


@dataclasses.dataclass
class DeepCache(MethodConfig):
    """DeepCache: reuse a UNet's deep features, recompute only its shallow skip branch.

    ``interval``: one full step every ``interval`` steps (1 = no caching).
    ``branch``: the skip branch kept fresh, 0 = shallowest (``conv_in`` to the last up
    layer: cheapest, most reuse); branch ``b`` also recomputes the first ``b`` down layers.
    Default 1: the paper's SD 1.5 setting (``cache_layer_id=0, cache_block_id=0`` in the
    authors' code; ``cache_branch_id=1`` in ``DeepCacheSDHelper``).
    ``schedule``: ``"uniform"`` or ``"nonuniform"`` (full steps dense around ``center``, a
    fraction of the run, spread with exponent ``power``; DeepCache's 1:N strategy).

    >>> full_step_schedule(DeepCache(interval=3), 7)  # True: the step runs in full
    [True, False, False, True, False, False, True]
    """

    interval: int = 3
    branch: int = 1
    schedule: str = "uniform"
    center: float = 0.3
    power: float = 1.4

    def validate(self) -> None:
        if not isinstance(self.interval, int) or isinstance(self.interval, bool):
            raise TypeError(f"interval must be an int, got {self.interval!r}")
        check_range("interval", self.interval, 1)
        if not isinstance(self.branch, int) or isinstance(self.branch, bool):
            raise TypeError(f"branch must be an int, got {self.branch!r}")
        check_range("branch", self.branch, 0)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("center", self.center, 0.0, 1.0)
        check_range("power", self.power, 1.0, 3.0)


def deep_modules(unet: torch.nn.Module, branch: int) -> list[torch.nn.Module]:
    """The UNet modules DeepCache reuses for skip branch ``branch``, in execution order:
    down layers ``branch..``, the mid block, and the up layers before the one consuming skip
    sample ``branch`` (sample 0 is ``conv_in``'s output).

    >>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
    >>> unet = tiny_sd_pipeline().model.unet
    >>> len(deep_modules(unet, 0)) > len(deep_modules(unet, 2))
    True
    """
    down, mid, up = unet_layers(unet)
    if branch > len(down):
        raise ValueError(f"branch={branch} is out of range for this UNet; allowed: 0..{len(down)}")
    first_shallow_up = consumer_of(up, branch)
    layers = down[branch:] + [mid] + up[:first_shallow_up]
    return [module for layer in layers for module in layer.modules]


def full_step_schedule(config: DeepCache, num_steps: int) -> list[bool]:
    """Which of ``num_steps`` steps run in full under ``config``."""
    if config.schedule == "uniform":
        return uniform_full_steps(num_steps, config.interval)
    return nonuniform_full_steps(num_steps, config.interval, config.center, config.power)


@METHODS.register("deepcache", DeepCache)
def apply_deepcache(
    denoiser: torch.nn.Module, config: DeepCache, handle: Handle, pipe: Any = None
) -> None:
    """Hook ``denoiser`` (a UNet) for DeepCache; undone by ``handle.remove()``."""
    _, _, spec = find_denoiser(denoiser)
    if spec.kind != "unet":
        raise UnsupportedModelError(denoiser, ["UNet2DConditionModel (SD 1.x/2.x, SDXL)"])
    modules = deep_modules(denoiser, config.branch)
    runtime = get_runtime(handle, denoiser, pipe)
    plan = ReusePlan(handle, runtime, "leanvision_deepcache")
    plan.add_targets(modules)
    schedule: dict[str, list[bool]] = {}

    def decide() -> None:
        if config.schedule == "uniform" and runtime.num_steps is None:
            plan.set_reuse(runtime.step_index % config.interval != 0)
            return
        num_steps = runtime.require_num_steps("deepcache's non-uniform schedule")
        if schedule.get("key") != (num_steps,):
            schedule["key"], schedule["full"] = (num_steps,), full_step_schedule(config, num_steps)
        full = schedule["full"]
        step = runtime.step_index
        plan.set_reuse(step < len(full) and not full[step])

    runtime.on_call(decide)

"""Adaptive residual caching for UNets and DiTs (TeaCache / first-block-cache family).

A *probe* (the first ``probe_blocks`` transformer blocks of a DiT, or the first
``probe_blocks`` down layers of a UNet) runs on every step. Its output is compared with its
value at the last full step by relative L1 distance, ``mean|p - p_full| / mean|p_full|``;
the distance grows as the steps drift away from that full step, and while it stays below
``threshold`` the rest of the network is not run:

* **DiT** (PixArt, DiT, SD3, Flux): the remaining blocks pass their input through and the
  last one adds the residual ``rest(x) - x`` kept at the last full step (both streams of
  joint blocks).
* **UNet** (SD 1.x/2.x, SDXL): the deep layers (all but the probe's skip branch) return
  their outputs from the last full step, as in DeepCache, and the shallow branch is
  recomputed; the decision is adaptive instead of a fixed interval. ControlNet follows the
  DeepCache rule (shallow residuals fresh, deep ones from the last full step).

``warmup`` first steps and ``cooldown`` last steps always run in full, and at most
``max_consecutive_skips`` steps in a row are skipped. :func:`calibrate` runs a pipeline once
and writes the decisions as a static per-model mask (JSON) that ``mask=PATH`` replays.

>>> import leanvision as lv
>>> from leanvision.testing.tiny_diffusion import tiny_dit
>>> tiny = tiny_dit()
>>> with lv.diffusion.accelerate(tiny.model, "residual", threshold=10.0) as handle:
...     _ = tiny.model(**{**tiny.inputs, "num_inference_steps": 6})
>>> handle.stats["last_run"]
'FCCCFC'
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch

from leanvision.compat.diffusers import ModelHook
from leanvision.core.config import MethodConfig, check_range
from leanvision.core.handle import Handle
from leanvision.core.warn import warn_user
from leanvision.diffusion._hooks import register_hook
from leanvision.diffusion.cache._reuse import ReusePlan
from leanvision.diffusion.cache.deepcache import deep_modules
from leanvision.diffusion.denoisers import (
    DenoiserSpec,
    find_denoiser,
    transformer_blocks,
    unet_layers,
)
from leanvision.diffusion.registry import METHODS
from leanvision.diffusion.runtime import DenoiserRuntime, get_runtime

__all__ = ["Residual", "calibrate", "load_mask"]

HOOK = "leanvision_residual"
MASK_FORMAT = "leanvision.residual-mask/1"


@dataclasses.dataclass
class Residual(MethodConfig):
    """Adaptive residual caching: reuse the rest of the denoiser while a probe barely changes.

    ``threshold``: relative L1 drift of the probe below which the rest is reused.
    ``warmup`` / ``cooldown``: first / last steps always run in full.
    ``max_consecutive_skips``: at most this many reused steps in a row.
    ``probe_blocks``: blocks (DiT) or down layers (UNet) in the probe.
    ``mask``: path of a JSON written by :func:`calibrate`; replaces the adaptive rule.

    >>> Residual(threshold=0.2).max_consecutive_skips
    3
    """

    threshold: float = 0.1
    warmup: int = 1
    cooldown: int = 0
    max_consecutive_skips: int = 3
    probe_blocks: int = 1
    mask: str | None = None

    def validate(self) -> None:
        check_range("threshold", self.threshold, 0.0, low_inclusive=False)
        for name in ("warmup", "cooldown", "max_consecutive_skips", "probe_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
        check_range("warmup", self.warmup, 1)
        check_range("cooldown", self.cooldown, 0)
        check_range("max_consecutive_skips", self.max_consecutive_skips, 1)
        check_range("probe_blocks", self.probe_blocks, 1)
        if self.mask is not None and not isinstance(self.mask, (str, os.PathLike)):
            raise TypeError(f"mask must be a path to a calibrated JSON, got {self.mask!r}")


def load_mask(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a mask written by :func:`calibrate`."""
    try:
        with open(path) as file:
            data = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"mask={str(path)!r} is not a readable residual mask: {error}") from error
    full = data.get("full_steps") if isinstance(data, dict) else None
    if data.get("format") != MASK_FORMAT or not isinstance(full, list):
        raise ValueError(f"mask={str(path)!r} is not a {MASK_FORMAT} file from calibrate()")
    return data


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


def _relative_l1(current: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().mean().clamp_min(1e-12)
    return float((current - reference).abs().mean() / scale)


class _Decider:
    """The adaptive (or masked) full/reuse decision of one handle, per CFG branch."""

    def __init__(self, config: Residual, runtime: DenoiserRuntime, handle: Handle, model: str):
        self.config = config
        self.runtime = runtime
        self.handle = handle
        self.mask = load_mask(config.mask) if config.mask is not None else None
        if self.mask is not None and self.mask.get("model") != model:
            warn_user(
                f"mask {config.mask!r} was calibrated on {self.mask.get('model')!r}, not {model!r}"
            )
        self.reference: dict[int, torch.Tensor] = {}
        self.skips: dict[int, int] = {}
        runtime.on_run_start(self._reset)

    def _reset(self) -> None:
        self.reference.clear()
        self.skips.clear()
        self.handle.stats["full_steps"] = []

    def decide(self, probe: torch.Tensor, ready: bool) -> bool:
        """True to reuse the cached rest on this call; records the probe on full calls."""
        runtime, config = self.runtime, self.config
        branch, step = runtime.branch, runtime.step_index
        reference = self.reference.get(branch)
        forced = (
            not ready
            or not runtime.caching_allowed
            or reference is None
            or reference.shape != probe.shape
            or step < config.warmup
            or self.skips.get(branch, 0) >= config.max_consecutive_skips
        )
        if config.cooldown and not forced:
            num_steps = runtime.require_num_steps("residual's cooldown")
            forced = step >= num_steps - config.cooldown
        if forced:
            reuse = False
        elif self.mask is not None and self._mask_fits():
            full = self.mask["full_steps"]
            reuse = step < len(full) and not full[step]
        else:
            reuse = _relative_l1(probe, reference) < config.threshold
        if reuse:
            self.skips[branch] = self.skips.get(branch, 0) + 1
        else:
            self.skips[branch] = 0
            self.reference[branch] = probe.detach()
        if branch == 0:
            self.handle.stats.setdefault("full_steps", []).append(not reuse)
        return reuse

    def _mask_fits(self) -> bool:
        if self.runtime.num_steps == len(self.mask["full_steps"]):
            return True
        warn_user(
            f"mask {self.config.mask!r} has {len(self.mask['full_steps'])} steps but this run "
            f"has {self.runtime.num_steps}; using the adaptive rule"
        )
        return False


class _UNetProbeHook(ModelHook):
    def __init__(self, decider: _Decider, plan: ReusePlan):
        super().__init__()
        self.decider, self.plan = decider, plan

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        reuse = self.decider.decide(_first_tensor(output), self.plan.can_reuse())
        self.plan.set_reuse(reuse)
        return output


def _apply_unet(denoiser: torch.nn.Module, config: Residual, handle: Handle, pipe: Any) -> None:
    down, _, _ = unet_layers(denoiser)
    if config.probe_blocks > len(down):
        raise ValueError(
            f"probe_blocks={config.probe_blocks} is out of range for this UNet; "
            f"allowed: 1..{len(down)}"
        )
    runtime = get_runtime(handle, denoiser, pipe)
    decider = _Decider(config, runtime, handle, type(denoiser).__name__)
    plan = ReusePlan(handle, runtime, HOOK)
    plan.add_targets(deep_modules(denoiser, config.probe_blocks))  # probe stays fresh
    probe = down[config.probe_blocks - 1].modules[-1]
    register_hook(handle, probe, _UNetProbeHook(decider, plan), HOOK + "_probe")


class _DiTState:
    def __init__(self) -> None:
        self.skip = False
        self.rest_input: dict[int, tuple[Any, Any]] = {}
        self.residual: dict[int, tuple[Any, Any]] = {}


class _DiTBlockHook(ModelHook):
    """Probe blocks decide (last probe), rest blocks pass through or run and record."""

    def __init__(self, role: str, state: _DiTState, decider: _Decider, spec: DenoiserSpec):
        super().__init__()
        self.role, self.state, self.decider, self.spec = role, state, decider, spec

    def _inputs(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        encoder = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        return hidden, encoder

    def _split(self, output: Any) -> tuple[Any, Any]:
        if self.spec.output_indices is None:
            return output, None
        hidden_index, encoder_index = self.spec.output_indices
        return output[hidden_index], output[encoder_index]

    def _join(self, hidden: Any, encoder: Any) -> Any:
        if self.spec.output_indices is None:
            return hidden
        joined: list[Any] = [None, None]
        hidden_index, encoder_index = self.spec.output_indices
        joined[hidden_index], joined[encoder_index] = hidden, encoder
        return tuple(joined)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state, branch = self.state, self.decider.runtime.branch
        if self.role == "probe":
            output = self.fn_ref.original_forward(*args, **kwargs)
            hidden, _ = self._split(output)
            state.skip = self.decider.decide(hidden, branch in state.residual)
            if state.skip:
                self.decider.runtime.mark_reused()
            return output
        hidden, encoder = self._inputs(args, kwargs)
        if state.skip:
            if "last" in self.role:
                residual_hidden, residual_encoder = state.residual[branch]
                hidden = hidden + residual_hidden
                if encoder is not None and residual_encoder is not None:
                    encoder = encoder + residual_encoder
                elif residual_encoder is None:
                    encoder = None  # SD3's last joint block drops the text stream
            return self._join(hidden, encoder)
        if "first" in self.role:
            state.rest_input[branch] = (hidden, encoder)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if "last" in self.role:
            out_hidden, out_encoder = self._split(output)
            in_hidden, in_encoder = state.rest_input[branch]
            residual_encoder = None
            if out_encoder is not None and in_encoder is not None:
                residual_encoder = out_encoder - in_encoder
            state.residual[branch] = (out_hidden - in_hidden, residual_encoder)
        return output


def _apply_dit(
    denoiser: torch.nn.Module, config: Residual, handle: Handle, pipe: Any, spec: DenoiserSpec
) -> None:
    blocks = transformer_blocks(denoiser, spec)
    if config.probe_blocks >= len(blocks):
        raise ValueError(
            f"probe_blocks={config.probe_blocks} leaves nothing to cache in this "
            f"{len(blocks)}-block model; allowed: 1..{len(blocks) - 1}"
        )
    runtime = get_runtime(handle, denoiser, pipe)
    decider = _Decider(config, runtime, handle, type(denoiser).__name__)
    state = _DiTState()

    def reset() -> None:
        state.rest_input.clear()
        state.residual.clear()
        state.skip = False

    runtime.on_run_start(reset)
    rest = blocks[config.probe_blocks :]
    register_hook(
        handle, blocks[config.probe_blocks - 1], _DiTBlockHook("probe", state, decider, spec), HOOK
    )
    for index, block in enumerate(rest):
        role = (
            "rest" + (" first" if index == 0 else "") + (" last" if index == len(rest) - 1 else "")
        )
        register_hook(handle, block, _DiTBlockHook(role, state, decider, spec), HOOK)


@METHODS.register("residual", Residual)
def apply_residual(
    denoiser: torch.nn.Module, config: Residual, handle: Handle, pipe: Any = None
) -> None:
    """Hook ``denoiser`` (UNet or DiT) for adaptive residual caching."""
    _, _, spec = find_denoiser(denoiser)
    if spec.kind == "unet":
        _apply_unet(denoiser, config, handle, pipe)
    else:
        _apply_dit(denoiser, config, handle, pipe, spec)


def calibrate(
    pipe: Any, inputs: dict[str, Any], path: str | os.PathLike, **options: Any
) -> dict[str, Any]:
    """Run ``pipe(**inputs)`` once with ``residual(**options)`` and write its per-step
    full/reuse decisions to ``path`` as JSON; ``accelerate(pipe, "residual", mask=path)``
    replays them without measuring the probe drift.

    >>> import tempfile, os
    >>> from leanvision.testing.tiny_diffusion import tiny_dit
    >>> tiny = tiny_dit()
    >>> path = os.path.join(tempfile.mkdtemp(), "mask.json")
    >>> calibrate(tiny.model, {**tiny.inputs, "num_inference_steps": 6}, path, threshold=10.0)["full_steps"]
    [True, False, False, False, True, False]
    """
    from leanvision.diffusion.api import accelerate

    if "mask" in options:
        raise TypeError("calibrate() writes a mask; do not pass mask=")
    config = Residual(**options)
    with accelerate(pipe, config) as handle:
        pipe(**inputs)
        full_steps = list(handle.stats.get("full_steps", []))
    denoiser, _, _ = find_denoiser(pipe)
    data = {
        "format": MASK_FORMAT,
        "model": type(denoiser).__name__,
        "num_steps": len(full_steps),
        "full_steps": full_steps,
        "options": dataclasses.asdict(config),
    }
    with open(path, "w") as file:
        json.dump(data, file, indent=1)
    return data

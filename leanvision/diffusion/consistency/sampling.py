"""``few_step``: turn a diffusers pipeline into a 1-8 step LCM / TCD sampler, reversibly.

Three instance-level changes, all undone by the returned :class:`~leanvision.Handle`:

1. ``pipe.scheduler`` becomes an ``LCMScheduler`` / ``TCDScheduler`` built from the pipeline's
   own scheduler config (same noise schedule, ``timestep_spacing="trailing"``);
2. the pipeline instance gets a same-named dynamic subclass whose ``__call__`` fills in
   ``num_inference_steps``, ``guidance_scale`` (and ``eta`` for TCD) when the caller leaves
   them out, so ``pipe(prompt)`` samples in ``steps`` steps while explicit arguments still win;
3. optionally a local LCM / TCD / Hyper-SD LoRA is loaded as its own adapter and unloaded on
   remove.

No diffusers class is edited; the subclass lives only on this instance.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import os
from typing import Any

from leanvision.core.config import MethodConfig, check_choice, check_range
from leanvision.core.errors import MissingDependencyError, UnsupportedModelError
from leanvision.core.handle import Handle
from leanvision.core.warn import warn_user
from leanvision.diffusion.registry import METHODS

__all__ = ["LCM", "TCD", "FewStepConfig", "apply_few_step", "few_step"]

# Its own family: a sampler swaps the scheduler, so it composes with one ``accelerate`` cache.
FAMILY = "diffusion-sampler"
SAMPLERS = ("lcm", "tcd")
MAX_STEPS = 50
# LCM / TCD are distilled for 1-8 steps; past that they gain nothing over the usual schedulers.
FEW_STEPS = 8
# diffusers' LatentConsistencyModelPipeline default: a guidance-embedded LCM UNet was trained
# with w = guidance_scale - 1 in [w_min, w_max] = [3, 15], and 8.5 sits inside that range.
W_EMBEDDING_GUIDANCE = 8.5
# A LoRA-distilled (or plain) LCM bakes guidance into the weights: classifier-free guidance
# must be off, which SD pipelines do for guidance_scale <= 1.
LORA_GUIDANCE = 1.0
ADAPTER_PREFIX = "leanvision_few_step"
SUPPORTED = (
    "pipelines with a `unet` or `transformer` and a DDPM-style scheduler (SD 1.x/2.x, "
    "SDXL, PixArt, DiT)"
)


@dataclasses.dataclass
class FewStepConfig(MethodConfig):
    """Few-step sampling: an LCM or TCD scheduler (``method``) in ``steps`` (1-8) steps.

    The settings of :func:`few_step` (see there); ``lv.diffusion.accelerate`` takes this
    config too, or its per-method forms :class:`LCM` / :class:`TCD`.

    >>> FewStepConfig(method="tcd", steps=2).eta
    0.3
    """

    method: str = "lcm"
    steps: int = 4
    guidance_scale: float | None = None
    eta: float = 0.3
    lora: str | os.PathLike | None = None

    def validate(self) -> None:
        check_choice("method", self.method, SAMPLERS)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise TypeError(f"steps must be an int in [1, {MAX_STEPS}], got {self.steps!r}")
        check_range("steps", self.steps, 1, MAX_STEPS)
        if self.guidance_scale is not None:
            check_range("guidance_scale", self.guidance_scale, 0.0)
        check_range("eta", self.eta, 0.0, 1.0)
        if self.lora is not None:
            if not isinstance(self.lora, (str, os.PathLike)):
                raise TypeError(f"lora must be a local path, got {type(self.lora).__name__}")
            if not os.path.exists(self.lora):
                raise ValueError(
                    f"lora={os.fspath(self.lora)!r} does not exist; give a local LoRA file "
                    "(.safetensors) or a directory holding pytorch_lora_weights.safetensors"
                )


@dataclasses.dataclass
class LCM(FewStepConfig):
    """LCM: sample in 1-8 steps with a Latent Consistency Model scheduler (LCM LoRA or UNet).

    ``accelerate(pipe, "lcm", steps=4)`` builds this config; options as in :func:`few_step`.

    >>> LCM(steps=2).method
    'lcm'
    """

    method: str = dataclasses.field(default="lcm", init=False)


@dataclasses.dataclass
class TCD(FewStepConfig):
    """TCD: sample in 1-8 steps with a Trajectory Consistency Distillation scheduler.

    ``accelerate(pipe, "tcd", steps=4, eta=0.3)`` builds this config; ``eta`` is TCD's
    stochasticity gamma in [0, 1]; options as in :func:`few_step`.

    >>> TCD(steps=2, eta=0.5).method
    'tcd'
    """

    method: str = dataclasses.field(default="tcd", init=False)


def _scheduler_class(method: str) -> type:
    import diffusers

    return {"lcm": diffusers.LCMScheduler, "tcd": diffusers.TCDScheduler}[method]


def _denoiser(pipe: Any) -> Any:
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    # lcm/tcd swap the pipeline's scheduler, so a bare denoiser is not enough.
    supported = [f"{SUPPORTED}, passed whole (not their unet/transformer)"]
    raise UnsupportedModelError(pipe, supported, what="pipeline", family="diffusion")


def _check_scheduler(pipe: Any) -> None:
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None or not hasattr(scheduler, "config"):
        raise UnsupportedModelError(pipe, [SUPPORTED], what="pipeline without a scheduler")
    # LCM/TCD step on the discrete alphas_cumprod schedule; flow-matching schedulers (Flux,
    # SD3) have no such table and a consistency sampler built from them would be wrong.
    if not hasattr(scheduler, "alphas_cumprod"):
        raise UnsupportedModelError(
            scheduler, [SUPPORTED], what="scheduler (flow-matching schedulers cannot use lcm/tcd)"
        )


def _default_guidance(denoiser: Any, config: FewStepConfig) -> float:
    if config.guidance_scale is not None:
        return float(config.guidance_scale)
    if getattr(denoiser.config, "time_cond_proj_dim", None) is not None:
        return W_EMBEDDING_GUIDANCE
    return LORA_GUIDANCE


def _install_call_defaults(handle: Handle, pipe: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """Swap ``pipe.__class__`` for a subclass whose ``__call__`` fills missing ``defaults``.

    Only the keyword arguments the pipeline's ``__call__`` accepts are injected (returned).
    Positional and keyword arguments given by the caller are detected with
    ``inspect.signature(...).bind_partial`` and always win.
    """
    original = type(pipe)
    signature = inspect.signature(original.__call__)
    accepted = {name: value for name, value in defaults.items() if name in signature.parameters}

    @functools.wraps(original.__call__)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        given = signature.bind_partial(self, *args, **kwargs).arguments
        for name, value in accepted.items():
            if name not in given:
                kwargs[name] = value
        return original.__call__(self, *args, **kwargs)

    namespace = {"__call__": __call__, "__module__": original.__module__}
    namespace["__qualname__"] = original.__qualname__
    namespace["_leanvision_call_defaults"] = dict(accepted)
    patched = type(original.__name__, (original,), namespace)
    object.__setattr__(pipe, "__class__", patched)

    def restore() -> None:
        if type(pipe) is patched:
            object.__setattr__(pipe, "__class__", original)
        else:  # someone subclassed the instance after us: do not drop their class
            warn_user(
                f"pipeline class changed after few_step was applied ({type(pipe).__name__}); "
                "its call defaults were left in place",
                RuntimeWarning,
            )

    handle.on_remove(restore)
    return accepted


def _load_lora(handle: Handle, pipe: Any, path: str | os.PathLike) -> str:
    if importlib.util.find_spec("peft") is None:
        raise MissingDependencyError("peft", "train", "loading a LoRA with few_step")
    if not hasattr(pipe, "load_lora_weights"):
        raise UnsupportedModelError(pipe, [SUPPORTED], what="pipeline without LoRA support")
    existing = pipe.get_list_adapters() if hasattr(pipe, "get_list_adapters") else {}
    names = {name for adapters in existing.values() for name in adapters}
    previously_active = list(pipe.get_active_adapters()) if names else []
    adapter = ADAPTER_PREFIX
    index = 1
    while adapter in names:
        index += 1
        adapter = f"{ADAPTER_PREFIX}_{index}"
    pipe.load_lora_weights(os.fspath(path), adapter_name=adapter)

    def unload() -> None:
        if not names:
            # We brought the only adapter: unwrap the peft layers completely, so the modules
            # (and their state_dict keys) are the ones the pipeline had before.
            pipe.unload_lora_weights()
            return
        pipe.delete_adapters(adapter)
        if previously_active:
            pipe.set_adapters(previously_active)

    handle.on_remove(unload)
    # diffusers activates only the newly loaded adapter; keep the user's ones active too.
    if previously_active:
        pipe.set_adapters([*previously_active, adapter])
    return adapter


def few_step(
    pipe: Any,
    method: str = "lcm",
    steps: int = 4,
    guidance_scale: float | None = None,
    eta: float = 0.3,
    lora: str | os.PathLike | None = None,
) -> Handle:
    """Sample ``pipe`` in ``steps`` LCM / TCD steps until the returned handle is removed.

    The same as ``lv.diffusion.accelerate(pipe, method, steps=..., ...)``. ``steps`` is the
    number of denoising steps (denoiser calls per image, times 2 with classifier-free
    guidance): 1-8 is what these samplers are for; more than 8 warns, more than 50 raises.
    ``method`` is ``"lcm"`` (LCMScheduler) or ``"tcd"`` (TCDScheduler, ``eta`` is its
    stochasticity gamma in [0, 1]). ``guidance_scale`` defaults to 1.0 (no classifier-free
    guidance: LoRA-distilled and plain LCMs bake it in) or 8.5 when the denoiser has a
    guidance embedding (``time_cond_proj_dim``, e.g. a full LCM UNet or ``distill(...,
    student="unet")``). ``lora`` is a local LCM / TCD / Hyper-SD LoRA file or folder, loaded
    as its own adapter (needs ``peft``: ``pip install 'leanvision[train]'``). Arguments given
    to ``pipe(...)`` always win over these defaults.

    Raises ``ValueError`` for a bad setting, ``UnsupportedModelError`` for a pipeline without
    a UNet/transformer or with a flow-matching scheduler, ``AlreadyPatchedError`` if a
    sampler is already applied. ``handle.stats``: ``scheduler`` (class name), ``steps``,
    ``call_defaults`` (the ``pipe(...)`` keywords filled in) and ``lora_adapter`` (or None).

    >>> from leanvision.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline().model
    >>> with few_step(pipe, "lcm", steps=2) as handle:
    ...     image = pipe("a red fox", height=32, width=32, output_type="np").images
    >>> type(pipe.scheduler).__name__, handle.stats["steps"]
    ('DDIMScheduler', 2)
    """
    config = FewStepConfig(
        method=method, steps=steps, guidance_scale=guidance_scale, eta=eta, lora=lora
    )
    return apply_few_step(pipe, config)


def apply_few_step(pipe: Any, config: FewStepConfig) -> Handle:
    """:func:`few_step` with its settings in a config (``lv.diffusion.accelerate``'s
    ``"lcm"`` / ``"tcd"`` path). Warns when ``config.steps`` is more than 8.

    >>> from leanvision.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline().model
    >>> handle = apply_few_step(pipe, TCD(steps=2))
    >>> handle.method, handle.stats["scheduler"]
    ('tcd', 'TCDScheduler')
    >>> handle.remove()
    """
    denoiser = _denoiser(pipe)
    _check_scheduler(pipe)
    if config.steps > FEW_STEPS:
        warn_user(
            f"{config.method} with steps={config.steps}: few-step samplers are meant for "
            f"1-{FEW_STEPS} steps and gain nothing past that. For many steps keep the "
            "pipeline's own scheduler (do not apply lcm/tcd) and speed it up with a step cache, "
            'e.g. lv.diffusion.accelerate(pipe, "deepcache")'
        )
    scheduler_class = _scheduler_class(config.method)
    new_scheduler = scheduler_class.from_config(pipe.scheduler.config, timestep_spacing="trailing")

    with Handle.build(denoiser, FAMILY, config.method, config) as handle:
        adapter = _load_lora(handle, pipe, config.lora) if config.lora is not None else None
        handle.set_attr(pipe, "scheduler", new_scheduler)
        defaults: dict[str, Any] = {
            "num_inference_steps": config.steps,
            "guidance_scale": _default_guidance(denoiser, config),
        }
        if config.method == "tcd":
            defaults["eta"] = config.eta
        injected = _install_call_defaults(handle, pipe, defaults)
        handle.stats.update(
            scheduler=scheduler_class.__name__,
            steps=config.steps,
            call_defaults=injected,
            lora_adapter=adapter,
        )
    return handle


METHODS.register("lcm", LCM)(apply_few_step)
METHODS.register("tcd", TCD)(apply_few_step)

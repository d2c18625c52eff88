"""Where the denoising loop is: step index, CFG branch and run boundaries.

Every caching method asks one :class:`DenoiserRuntime` (one per :class:`~leanvision.Handle`)
which step and which classifier-free-guidance branch the current denoiser call belongs to.

How steps are tracked (the choice, and why):

* **Given a pipeline** (``accelerate(pipe, ...)``): the instance's ``scheduler.set_timesteps``
  and ``scheduler.step`` are wrapped through the handle (``Handle.set_attr``, undone on
  remove). ``set_timesteps`` starts a new run, so all caches reset at the start of every
  pipeline call; each ``scheduler.step`` ends one step. The step index therefore counts loop
  iterations, never timestep values: Heun (repeated timesteps), DPM++ multistep and img2img
  (timesteps sliced after ``set_timesteps``) all give indices 0, 1, 2, ... The branch is the
  number of denoiser calls since the last ``scheduler.step``: batched CFG is one call (the
  cached tensors hold both halves of the batch, so each half keeps its own features), and
  separate cond/uncond passes (e.g. Flux ``true_cfg_scale``) are branches 0 and 1 with one
  cache each. Replacing ``pipe.scheduler`` after applying raises at the next call.
* **Given a bare denoiser** (``accelerate(pipe.unet, ...)``): there is no scheduler to
  watch, so every denoiser call is one step, except that a call whose diffusers cache-context
  name (``cache_context("uncond")``) was not seen yet in this step is another branch of the
  same step; a timestep larger than the previous call's starts a new run. The number of
  steps is unknown there, so schedules that need it (non-uniform, cool-down) ask for the pipe.

Runs with at most 4 steps warn (``UserWarning``) and run every step in full: caching cannot
pay off there.

>>> from leanvision.testing.tiny_diffusion import tiny_sd_pipeline
>>> from leanvision.core.handle import Handle
>>> tiny = tiny_sd_pipeline()
>>> with Handle.build(tiny.model.unet, "diffusion", "demo") as handle:
...     runtime = get_runtime(handle, tiny.model.unet, tiny.model)
...     _ = tiny.model(**{**tiny.inputs, "num_inference_steps": 6})
>>> handle.stats["last_run"]
'FFFFFF'
>>> handle.remove()
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import torch

from leanvision.compat import diffusers as df_compat
from leanvision.compat.diffusers import BaseState, ModelHook, StateManager
from leanvision.core.handle import Handle
from leanvision.core.warn import warn_user
from leanvision.diffusion._hooks import register_hook

__all__ = ["MIN_CACHE_STEPS", "DenoiserRuntime", "get_runtime"]

# Caching needs at least this many steps to skip anything useful.
MIN_CACHE_STEPS = 5
RUNTIME_HOOK = "leanvision_runtime"

_RUNTIMES: weakref.WeakKeyDictionary[Handle, DenoiserRuntime] = weakref.WeakKeyDictionary()


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class _RuntimeHook(ModelHook):
    """Root hook on the denoiser: tells the runtime a call starts and ends.

    Stateful only so that diffusers' ``cache_context`` reaches its ``StateManager``: that is
    how the runtime learns the context name a pipeline set (``"cond"`` / ``"uncond"``).
    """

    _is_stateful = True

    def __init__(self, runtime: DenoiserRuntime):
        super().__init__()
        self.runtime = runtime
        self.state_manager = StateManager(_NoState)

    # torch.compile: the runtime's bookkeeping is plain Python (counters, stats, warnings).
    # Traced, every counter becomes a guard and each call recompiles until dynamo's
    # recompile limit; run eagerly instead (one graph break per denoiser call).
    @torch.compiler.disable
    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        self.runtime._begin_call(args, kwargs, df_compat.context_name(self.state_manager))
        return args, kwargs

    @torch.compiler.disable
    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.runtime._end_call()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.set_context(None)
        return module


class DenoiserRuntime:
    """Step index, CFG branch and run state of one denoiser, shared by a handle's methods.

    Read ``step_index`` (0-based loop iteration), ``branch`` (0 = first pass of the step),
    ``num_steps`` (loop iterations of this run, ``None`` when unknown), ``timestep`` (of the
    current call) and ``caching_allowed``. Methods call :meth:`mark_reused` when a call
    reused cached work, and register :meth:`on_run_start` / :meth:`on_call` callbacks.
    Build it with :func:`get_runtime`.

    >>> from leanvision.core.handle import Handle
    >>> from leanvision.testing import tiny_sd_pipeline
    >>> pipe = tiny_sd_pipeline().model
    >>> with Handle.build(pipe.unet, "diffusion", "demo") as handle:
    ...     runtime = get_runtime(handle, pipe.unet, pipe)
    ...     seen = []
    ...     runtime.on_call(lambda: seen.append((runtime.step_index, runtime.branch)))
    ...     _ = pipe("a fox", num_inference_steps=5, height=16, width=16, output_type="latent")
    >>> seen, runtime.num_steps
    ([(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)], 5)
    >>> handle.remove()
    """

    def __init__(self, handle: Handle, denoiser: torch.nn.Module, pipe: Any = None):
        self.handle = handle
        self.denoiser = denoiser
        self.pipe = pipe
        self.scheduler = getattr(pipe, "scheduler", None) if pipe is not None else None
        self.step_index = -1
        self.branch = 0
        self.num_steps: int | None = None
        self.timestep: float | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.caching_allowed = True
        self.provide_cache_context = False
        self._run_active = False
        self._calls_in_step = 0
        self._keys_in_step: list[str] = []
        self._reused = False
        self._context_set_by_us = False
        self._last_timestep: float | None = None
        self._first_call = True
        self._run_listeners: list[Callable[[], None]] = []
        self._call_listeners: list[Callable[[], None]] = []
        handle.stats.update(denoiser_calls=0, full_calls=0, cached_calls=0, runs=0, last_run="")
        if self.scheduler is not None:
            self._wrap_scheduler(self.scheduler)
        register_hook(handle, denoiser, _RuntimeHook(self), RUNTIME_HOOK)

    # ------------------------------------------------------------------ public

    def on_run_start(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when a new pipeline run starts (reset caches there)."""
        self._run_listeners.append(callback)

    def on_call(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at the start of every denoiser call, after step/branch are set."""
        self._call_listeners.append(callback)

    def mark_reused(self) -> None:
        """Record that the current denoiser call reused cached work (a "cached" call)."""
        self._reused = True

    def require_num_steps(self, what: str) -> int:
        """``num_steps``, or a clear error when it is unknown (bare denoiser)."""
        if self.num_steps is None:
            raise RuntimeError(
                f"{what} needs the number of denoising steps, which is only known when "
                "accelerate() is given the pipeline (not pipe.unet / pipe.transformer alone)"
            )
        return self.num_steps

    # ------------------------------------------------------------------ events

    def _wrap_scheduler(self, scheduler: Any) -> None:
        original_set_timesteps = scheduler.set_timesteps
        original_step = scheduler.step

        @functools.wraps(original_set_timesteps)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original_set_timesteps(*args, **kwargs)
            self._start_run()
            return result

        @functools.wraps(original_step)
        def step(*args: Any, **kwargs: Any) -> Any:
            result = original_step(*args, **kwargs)
            self._end_step()
            return result

        self.handle.set_attr(scheduler, "set_timesteps", set_timesteps)
        self.handle.set_attr(scheduler, "step", step)

    def _start_run(self) -> None:
        self._run_active = True
        self.step_index = 0
        self.num_steps = None
        self._calls_in_step = 0
        self._keys_in_step = []
        self._last_timestep = None
        self._first_call = True
        self.caching_allowed = True
        self.handle.stats["runs"] += 1
        self.handle.stats["last_run"] = ""
        registry = df_compat.registry(self.denoiser)
        if registry is not None:  # diffusers' own stateful caches start fresh too
            registry.reset_stateful_hooks(recurse=True)
        for callback in self._run_listeners:
            callback()

    def _end_step(self) -> None:
        if self._run_active:
            self.step_index += 1
            self._calls_in_step = 0
            self._keys_in_step = []

    def _begin_call(self, args: tuple, kwargs: dict, context: str | None) -> None:
        timestep = _timestep_of(args, kwargs)
        key = context if context is not None else "default"
        if self.scheduler is not None:
            if self.pipe.scheduler is not self.scheduler:
                raise RuntimeError(
                    "pipe.scheduler was replaced after lv.diffusion.accelerate(); remove the "
                    "handle and apply it again so steps are tracked on the new scheduler"
                )
            if not self._run_active:
                self._start_run()
        else:
            new_run = not self._run_active or (
                timestep is not None
                and self._last_timestep is not None
                and timestep > self._last_timestep + 1e-6
            )
            if new_run:
                self._start_run()
            elif key in self._keys_in_step:
                self._end_step()
        self._keys_in_step.append(key)
        in_pipe = self.scheduler is not None
        self.branch = self._calls_in_step if in_pipe else len(self._keys_in_step) - 1
        self._calls_in_step += 1
        self.timestep = timestep
        self.input_shape = _input_shape(args, kwargs)
        self._last_timestep = timestep
        if self._first_call:
            self._first_call = False
            self.num_steps = self._count_steps(timestep)
            if self.num_steps is not None and self.num_steps < MIN_CACHE_STEPS:
                self.caching_allowed = False
                warn_user(
                    f"this run has {self.num_steps} denoising steps; step caching needs at "
                    f"least {MIN_CACHE_STEPS}, so every step runs in full (pass "
                    f"num_inference_steps >= {MIN_CACHE_STEPS} to pipe(...) to cache)"
                )
        self._reused = False
        self._context_set_by_us = False
        if self.provide_cache_context and context is None:
            # Pipelines without cache_context (SD3, PixArt, DiT) would make diffusers' stateful
            # hooks raise "No cache context is set": name the branch for them.
            df_compat.set_cache_context(self.denoiser, f"branch{self.branch}", self.step_index)
            self._context_set_by_us = True
        for callback in self._call_listeners:
            callback()

    def _end_call(self) -> None:
        if self._context_set_by_us:
            df_compat.set_cache_context(self.denoiser, None, self.step_index)
            self._context_set_by_us = False
        stats = self.handle.stats
        stats["denoiser_calls"] += 1
        kind = "cached_calls" if self._reused else "full_calls"
        stats[kind] += 1
        stats["last_run"] += "C" if self._reused else "F"

    def _count_steps(self, timestep: float | None) -> int | None:
        """Loop iterations left in this run, read from the scheduler (pipe mode only)."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timesteps is None:
            return None
        total = len(timesteps)
        begin = getattr(self.scheduler, "begin_index", None)
        if begin is None and timestep is not None:
            # img2img with schedulers lacking begin_index (DDIM) slices the timesteps
            # itself: find where the first call's timestep sits.
            values = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
            matches = torch.nonzero((values - timestep).abs() < 1e-3).flatten()
            begin = int(matches[0]) if len(matches) else 0
        return total - (begin or 0)


def _timestep_of(args: tuple, kwargs: dict) -> float | None:
    value = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if isinstance(value, torch.Tensor):
        return float(value.flatten()[0]) if value.numel() else None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _input_shape(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    for value in (kwargs.get("sample"), kwargs.get("hidden_states"), *args[:1]):
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
    return None


def get_runtime(handle: Handle, denoiser: torch.nn.Module, pipe: Any = None) -> DenoiserRuntime:
    """The handle's runtime, installed on first use (one per handle, shared by its methods).

    The runtime's hooks and scheduler wrappers are recorded in ``handle`` and undone by
    ``handle.remove()``. ``pipe`` (optional) lets it count steps through the scheduler.

    >>> from leanvision.core.handle import Handle
    >>> from leanvision.testing import tiny_dit
    >>> pipe = tiny_dit().model
    >>> with Handle.build(pipe.transformer, "diffusion", "demo") as handle:
    ...     runtime = get_runtime(handle, pipe.transformer, pipe)
    >>> get_runtime(handle, pipe.transformer, pipe) is runtime
    True
    >>> handle.remove()
    """
    runtime = _RUNTIMES.get(handle)
    if runtime is None:
        runtime = DenoiserRuntime(handle, denoiser, pipe)
        _RUNTIMES[handle] = runtime
        handle.on_remove(lambda: _RUNTIMES.pop(handle, None))
    return runtime

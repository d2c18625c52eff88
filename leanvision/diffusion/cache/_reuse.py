"""Reuse a module's output from an earlier step: the engine of deepcache, inherit and the
UNet variant of residual.

A :class:`ReusePlan` owns one diffusers hook per target module. On a call where the plan
reuses, every target returns the output it produced at the branch's last computed call
without running; otherwise it runs and records its output. Outputs are kept per CFG branch
(see :mod:`leanvision.diffusion.runtime`) and dropped at the start of every run.
"""

from __future__ import annotations

from typing import Any

import torch

from leanvision.compat.diffusers import ModelHook
from leanvision.core.handle import Handle
from leanvision.diffusion._hooks import register_hook
from leanvision.diffusion.runtime import DenoiserRuntime

__all__ = ["ReusePlan"]


class _ReuseHook(ModelHook):
    def __init__(self, plan: ReusePlan, unit: int):
        super().__init__()
        self.plan = plan
        self.unit = unit

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        plan = self.plan
        store = plan.stores.setdefault(plan.runtime.branch, {})
        if plan.reuse_now:
            return store[self.unit]
        output = self.fn_ref.original_forward(*args, **kwargs)
        store[self.unit] = output
        return output


class ReusePlan:
    """Targets whose outputs are reused on the calls :meth:`set_reuse` allows.

    ``reuse_now`` is reset to ``False`` at the start of every denoiser call; a method sets it
    through :meth:`set_reuse`, which refuses (keeps computing) when the branch has no
    complete record yet or the denoiser input changed shape since it was recorded.
    """

    def __init__(self, handle: Handle, runtime: DenoiserRuntime, name: str):
        self.runtime = runtime
        self.name = name
        self.reuse_now = False
        self.stores: dict[int, dict[int, Any]] = {}
        self.shapes: dict[int, Any] = {}
        self.units = 0
        self._handle = handle
        runtime.on_run_start(self.stores.clear)
        runtime.on_call(self._begin_call)

    def add_targets(self, modules: list[torch.nn.Module]) -> None:
        for module in modules:
            register_hook(self._handle, module, _ReuseHook(self, self.units), self.name)
            self.units += 1

    def _begin_call(self) -> None:
        self.reuse_now = False
        branch = self.runtime.branch
        store = self.stores.get(branch, {})
        if self.shapes.get(branch) != self.runtime.input_shape:
            store.clear()  # batch or resolution changed: what was recorded does not fit
            self.shapes[branch] = self.runtime.input_shape

    def can_reuse(self) -> bool:
        """Whether the current branch has a complete record that fits this call."""
        store = self.stores.get(self.runtime.branch, {})
        return self.runtime.caching_allowed and len(store) == self.units and self.units > 0

    def set_reuse(self, reuse: bool) -> bool:
        """Reuse on this call if ``reuse`` and :meth:`can_reuse`; return the decision."""
        self.reuse_now = bool(reuse) and self.can_reuse()
        if self.reuse_now:
            self.runtime.mark_reused()
        return self.reuse_now

"""Register diffusers ``ModelHook``s through a :class:`~leanvision.Handle`, removably.

Removing a diffusers hook leaves an empty ``_diffusers_hook`` registry and an instance
``forward`` attribute behind; :func:`register_hook` records an undo step that also deletes
those when leanvision created them, so ``handle.remove()`` restores the module exactly.
"""

from __future__ import annotations

import torch

from leanvision.compat import diffusers as df_compat
from leanvision.compat.diffusers import HookRegistry, ModelHook, forget_child_registries
from leanvision.core.handle import Handle

__all__ = ["register_hook", "untrack_new_registries"]


def register_hook(handle: Handle, module: torch.nn.Module, hook: ModelHook, name: str) -> None:
    """``HookRegistry.register_hook(hook, name)`` on ``module``, undone by ``handle.remove()``."""
    had_registry = df_compat.registry(module) is not None
    had_forward = "forward" in module.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, name)

    def undo() -> None:
        registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            if not had_registry and df_compat.own_registry(module) is registry:
                df_compat.drop_registry(module)
            if not had_forward and "forward" in module.__dict__:
                del module.forward  # back to the class's forward
        forget_child_registries(module)

    handle.on_remove(undo)
    forget_child_registries(module)


def untrack_new_registries(handle: Handle, root: torch.nn.Module) -> None:
    """Record an undo step deleting the registries (and instance ``forward``s) that appear
    under ``root`` after this call and are empty at removal: for hooks applied by diffusers'
    own ``apply_*`` functions, which create registries we did not register ourselves."""
    before = {
        id(module): (df_compat.own_registry(module) is not None, "forward" in module.__dict__)
        for module in root.modules()
    }

    def undo() -> None:
        for module in root.modules():
            registry = df_compat.own_registry(module)
            had_registry, had_forward = before.get(id(module), (False, False))
            if registry is None or registry.hooks:
                continue
            if not had_registry:
                df_compat.drop_registry(module)
            if not had_forward and "forward" in module.__dict__:
                del module.forward
        for module in root.modules():
            forget_child_registries(module)

    handle.on_remove(undo)

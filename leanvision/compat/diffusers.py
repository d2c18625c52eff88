"""Everything leanvision reads from diffusers that is not a documented public API.

The hook machinery (``ModelHook``, ``HookRegistry``, ``StateManager``), the attribute a module
keeps its registry in, the registry's cached child list, the cache context a pipeline sets
(``cache_context``) and the ``apply_*`` functions behind diffusers' own caches. When diffusers
renames one of them, the fix is here; a missing one raises an
:class:`~leanvision.UpstreamVersionError` naming the versions involved.

>>> REGISTRY_ATTR
'_diffusers_hook'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import hooks as _hooks
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from leanvision.compat.versions import upstream_error

__all__ = [
    "CACHE_CONFIG_ATTR",
    "REGISTRY_ATTR",
    "BaseState",
    "HookRegistry",
    "ModelHook",
    "StateManager",
    "cache_apply_function",
    "cache_config_class",
    "context_name",
    "drop_registry",
    "forget_child_registries",
    "own_registry",
    "registry",
    "set_cache_context",
]

# where a module keeps its HookRegistry (set by HookRegistry.check_if_exists_or_initialize)
REGISTRY_ATTR = "_diffusers_hook"
# what CacheMixin.enable_cache checks to refuse a second cache
CACHE_CONFIG_ATTR = "_cache_config"


def registry(module: torch.nn.Module) -> HookRegistry | None:
    """The hook registry of ``module`` (``None`` when it has none)."""
    return getattr(module, REGISTRY_ATTR, None)


def own_registry(module: torch.nn.Module) -> HookRegistry | None:
    """The registry stored on ``module`` itself (not found through its class)."""
    return module.__dict__.get(REGISTRY_ATTR)


def drop_registry(module: torch.nn.Module) -> None:
    """Delete the registry stored on ``module``."""
    del module.__dict__[REGISTRY_ATTR]


def forget_child_registries(module: torch.nn.Module) -> None:
    """Drop the cached list of child registries ``cache_context`` walks; adding or removing
    hooks below ``module`` makes it stale."""
    found = registry(module)
    if found is not None:
        found._child_registries_cache = None


def context_name(state_manager: StateManager) -> str | None:
    """The cache-context name (``"cond"``/``"uncond"``...) a pipeline set, or ``None``."""
    context = state_manager._context
    return None if context is None else context.name


def set_cache_context(denoiser: torch.nn.Module, name: str | None, step_index: int) -> None:
    """Set (``name``) or clear (``None``) the cache context of every stateful hook under
    ``denoiser``, as ``denoiser.cache_context(name)`` does for models that have it."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    context = None if name is None else CacheContext(name, step_index=step_index)
    _set_cache_context(denoiser, context)


def _hooks_attribute(name: str) -> Any:
    found = getattr(_hooks, name, None)
    if found is None:
        raise upstream_error("diffusers", f"diffusers.hooks has no {name}")
    return found


def cache_config_class(name: str) -> type:
    """A cache config class of ``diffusers.hooks`` (``"FasterCacheConfig"``...)."""
    return _hooks_attribute(name)


def cache_apply_function(name: str) -> Callable[[torch.nn.Module, Any], None]:
    """An ``apply_*`` function of ``diffusers.hooks`` (``"apply_faster_cache"``...)."""
    return _hooks_attribute(name)

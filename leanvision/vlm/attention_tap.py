"""Read the post-RoPE queries and keys of chosen attention modules, with any backend.

An :class:`AttentionTap` is one function registered under its own name in transformers'
``AttentionInterface`` (and ``AttentionMaskInterface``). A handle points a config at that
name (restored on remove); the function hands every call on to the implementation the config
used before ("sdpa", "eager", "flash_attention_2"...), after giving ``q``/``k`` to the listener
armed for that attention module, if any. The mask function delegates the same way, so padding
and causal masks are exactly what the unpatched model builds (a name unknown to the mask
interface would silently get *no* mask). Nothing materialises an attention matrix.

>>> tap = AttentionTap("leanvision_example")
>>> tap.name
'leanvision_example'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from leanvision.compat import transformers as tf_compat

# listener(module, query, key, attention_mask, kwargs of the attention call)
Listener = Callable[[nn.Module, torch.Tensor, torch.Tensor, Any, dict[str, Any]], None]


def delegate_attention(module: nn.Module, implementation: str) -> Callable[..., Any]:
    """The attention function ``implementation`` names, for ``module``'s model."""
    if implementation == "eager":
        return tf_compat.eager_attention(module)
    return tf_compat.attention_functions()[implementation]


class AttentionTap:
    """The registered function ``name``, the implementations it delegates to (per config) and
    the listeners it calls (per attention module)."""

    def __init__(self, name: str):
        self.name = name
        self.original: dict[int, str] = {}  # id(config) -> implementation before the switch
        self.listeners: dict[int, Listener] = {}  # id(attention module) -> listener
        self._registered = False

    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        **kwargs: Any,
    ) -> Any:
        listener = self.listeners.get(id(module))
        if listener is not None:
            listener(module, query, key, attention_mask, kwargs)
        implementation = self.original.get(id(module.config), "sdpa")
        return delegate_attention(module, implementation)(
            module, query, key, value, attention_mask, **kwargs
        )

    def mask(self, *args: Any, config: Any = None, **kwargs: Any) -> Any:
        implementation = self.original.get(id(config), "sdpa")
        return tf_compat.mask_functions()[implementation](*args, config=config, **kwargs)

    def install(self, handle: Any, config: Any, original: str) -> None:
        """Point ``config`` at this tap, delegating to ``original``, until ``handle`` is removed;
        removal restores the exact previous implementation."""
        if not self._registered:
            tf_compat.register_attention(self.name, self, self.mask)
            self._registered = True
        self.original[id(config)] = original
        handle.on_remove(lambda: self.original.pop(id(config), None))
        tf_compat.select_attention(handle, config, self.name)

    def listen(self, module: nn.Module, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every attention call of ``module``; returns the undo."""
        self.listeners[id(module)] = listener
        return lambda: self.listeners.pop(id(module), None)

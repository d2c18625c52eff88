"""See the post-RoPE queries and keys of a language-model attention layer, with any backend.

The in-LLM methods rank visual tokens by the attention a decoder layer pays them. Rather than
switching to eager attention (which materialises every attention matrix), leanvision registers
one function, ``"leanvision_inllm"``, in transformers' ``AttentionInterface`` and points the
text config at it while a handle is active. The function hands every call on to the
implementation configured before ("sdpa", "eager", "flash_attention_2"...), and first gives
``q``/``k`` to a listener when one is armed for that attention module. The same name is
registered in ``AttentionMaskInterface``, delegating to the original implementation's mask
builder, so padding and causal masks are exactly what the unpatched model builds (a custom
name unknown to the mask interface would silently get *no* mask).

>>> from leanvision.vlm.inllm.attention import INLLM_IMPLEMENTATION
>>> INLLM_IMPLEMENTATION
'leanvision_inllm'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from leanvision.vlm.capture import delegate_attention

INLLM_IMPLEMENTATION = "leanvision_inllm"

# id(config) -> the implementation that config used before leanvision switched it
_ORIGINAL: dict[int, str] = {}
# id(attention module) -> listener(module, query, key, attention_mask)
_LISTENERS: dict[int, Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], None]] = {}
_REGISTERED = False


def _inllm_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    **kwargs: Any,
) -> Any:
    listener = _LISTENERS.get(id(module))
    if listener is not None:
        listener(module, query, key, attention_mask)
    implementation = _ORIGINAL.get(id(module.config), "sdpa")
    return delegate_attention(module, implementation)(
        module, query, key, value, attention_mask, **kwargs
    )


def _inllm_mask(*args: Any, config: Any = None, **kwargs: Any) -> Any:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    implementation = _ORIGINAL.get(id(config), "sdpa")
    return ALL_MASK_ATTENTION_FUNCTIONS[implementation](*args, config=config, **kwargs)


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(INLLM_IMPLEMENTATION, _inllm_attention)
        AttentionMaskInterface.register(INLLM_IMPLEMENTATION, _inllm_mask)
        _REGISTERED = True


def check_implementation(config: Any) -> str:
    """The text config's attention implementation, or ``ValueError`` if it cannot be wrapped."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = config._attn_implementation or "eager"
    if original == INLLM_IMPLEMENTATION:
        raise ValueError("the language model is already routed through leanvision's attention")
    known = original == "eager" or original in ALL_ATTENTION_FUNCTIONS
    if not known or original not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"language-model attn_implementation={original!r} cannot be wrapped to read "
            "attention scores; use one of ['eager', 'sdpa', 'flash_attention_2', 'flex_attention']"
        )
    return original


def install_attention(handle: Any, config: Any) -> None:
    """Route every attention layer that uses ``config`` through leanvision until ``handle`` is
    removed; removal restores the exact previous implementation."""
    original = check_implementation(config)
    _register()
    _ORIGINAL[id(config)] = original
    handle.on_remove(lambda: _ORIGINAL.pop(id(config), None))
    handle.set_attr(config, "_attn_implementation_internal", INLLM_IMPLEMENTATION)


def listen(
    handle: Any,
    module: nn.Module,
    listener: Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], None],
) -> None:
    """Call ``listener(module, query, key, attention_mask)`` on every attention call of
    ``module`` (post-RoPE ``q`` ``(B, H, Lq, d)``, ``k`` ``(B, H_kv, Lk, d)`` after the cache
    update) until ``handle`` is removed. The listener decides itself when to act."""
    _LISTENERS[id(module)] = listener
    handle.on_remove(lambda: _LISTENERS.pop(id(module), None))


def attention_module(layer: nn.Module) -> nn.Module:
    """The self-attention module of a decoder layer (``self_attn`` in every supported LM)."""
    found = getattr(layer, "self_attn", None)
    if isinstance(found, nn.Module):
        return found
    for module in layer.modules():
        if module is not layer and hasattr(module, "layer_idx") and hasattr(module, "config"):
            return module
    raise ValueError(f"no self-attention module found in decoder layer {type(layer).__name__}")

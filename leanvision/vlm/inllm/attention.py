"""See the post-RoPE queries and keys of a language-model attention layer, with any backend.

The in-LLM methods rank visual tokens by the attention a decoder layer pays them. Rather than
switching to eager attention (which materialises every attention matrix), a handle points the
text config at the :class:`~leanvision.vlm.attention_tap.AttentionTap` ``"leanvision_inllm"``,
which delegates to the implementation configured before (its mask builder too) and first
gives ``q``/``k`` to the listener armed for that attention module.

>>> from leanvision.vlm.inllm.attention import INLLM_IMPLEMENTATION
>>> INLLM_IMPLEMENTATION
'leanvision_inllm'
"""

from __future__ import annotations

from typing import Any

from torch import nn

from leanvision.compat import transformers as tf_compat
from leanvision.vlm.attention_tap import AttentionTap, Listener

LM_TAP = AttentionTap("leanvision_inllm")
INLLM_IMPLEMENTATION = LM_TAP.name


def check_implementation(config: Any) -> str:
    """The text config's attention implementation, or ``ValueError`` if it cannot be wrapped."""
    original = tf_compat.attn_implementation(config)
    if original == INLLM_IMPLEMENTATION:
        raise ValueError("the language model is already routed through leanvision's attention")
    known = original == "eager" or original in tf_compat.attention_functions()
    if not known or original not in tf_compat.mask_functions():
        raise ValueError(
            f"language-model attn_implementation={original!r} cannot be wrapped to read "
            "attention scores; use one of ['eager', 'sdpa', 'flash_attention_2', 'flex_attention']"
        )
    return original


def install_attention(handle: Any, config: Any) -> None:
    """Route every attention layer that uses ``config`` through leanvision until ``handle`` is
    removed; removal restores the exact previous implementation."""
    LM_TAP.install(handle, config, check_implementation(config))


def listen(handle: Any, module: nn.Module, listener: Listener) -> None:
    """Call ``listener(module, query, key, attention_mask, kwargs)`` on every attention call of
    ``module`` (post-RoPE ``q`` ``(B, H, Lq, d)``, ``k`` ``(B, H_kv, Lk, d)`` after the cache
    update) until ``handle`` is removed. The listener decides itself when to act."""
    handle.on_remove(LM_TAP.listen(module, listener))


def attention_module(layer: nn.Module) -> nn.Module:
    """The self-attention module of a decoder layer (``self_attn`` in every supported LM)."""
    found = getattr(layer, "self_attn", None)
    if isinstance(found, nn.Module):
        return found
    for module in layer.modules():
        if module is not layer and hasattr(module, "layer_idx") and hasattr(module, "config"):
            return module
    raise ValueError(f"no self-attention module found in decoder layer {type(layer).__name__}")

"""See the post-RoPE queries and keys of a language-model attention layer, with any backend.

The in-LLM methods rank visual tokens by the attention a decoder layer pays them. Rather than
switching to eager attention (which materialises every attention matrix), a handle points the
text config at the :class:`~leanvision.vlm.attention_tap.AttentionTap` ``"leanvision_inllm"``,
which delegates to the implementation configured before (its mask builder too) and first
gives ``q``/``k`` to the listener armed for that attention module. :func:`stage_query_key`
uses the same tap to read the ``q``/``k`` a layer *would* compute from given hidden states
(PyramidDrop ranks with the first layer of a stage, before that layer runs).

>>> from leanvision.vlm.inllm.attention import INLLM_IMPLEMENTATION
>>> INLLM_IMPLEMENTATION
'leanvision_inllm'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leanvision.compat import transformers as tf_compat
from leanvision.vlm.attention_tap import AttentionTap, Listener

LM_TAP = AttentionTap("leanvision_inllm")
INLLM_IMPLEMENTATION = LM_TAP.name
# the pre-attention norm of a decoder layer in every supported language model (Llama, Qwen2,
# Qwen2-VL / 2.5-VL text, Idefics3 / SmolVLM text)
INPUT_NORM = "input_layernorm"


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


class _Projected(Exception):
    """Carries ``q``/``k`` out of an attention module stopped before the attention itself."""

    def __init__(self, query: torch.Tensor, key: torch.Tensor):
        super().__init__("projected")
        self.query, self.key = query, key


def stage_query_key(
    layer: nn.Module, hidden: torch.Tensor, position_embeddings: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The post-RoPE ``q`` ``(B, H, L, d)`` and ``k`` ``(B, H_kv, L, d)`` decoder ``layer``
    computes from its input ``hidden`` ``(B, L, D)`` and ``position_embeddings`` (the RoPE
    ``(cos, sin)`` the decoder passes it, 1-D or M-RoPE alike).

    The layer's own input norm and attention module do the work (projections, biases, q/k
    norms, RoPE exactly as the model applies them); the attention module is stopped when it
    hands ``q``/``k`` to leanvision's attention function, before any attention is computed and
    without a cache, so nothing of the model's state changes. Needs :func:`install_attention`.
    """
    norm = getattr(layer, INPUT_NORM, None)
    if not isinstance(norm, nn.Module):
        raise ValueError(
            f"decoder layer {type(layer).__name__} has no {INPUT_NORM!r}; PyramidDrop ranks "
            "with the pre-attention norm of the first layer of each stage"
        )
    if position_embeddings is None:
        raise ValueError(
            f"decoder layer {type(layer).__name__} received no position_embeddings; "
            "in-LLM ranking needs the (cos, sin) the language model passes its layers"
        )
    module = attention_module(layer)

    def stop(module: nn.Module, query: torch.Tensor, key: torch.Tensor, *_: Any) -> None:
        raise _Projected(query, key)

    previous = LM_TAP.listeners.get(id(module))
    LM_TAP.listeners[id(module)] = stop
    try:
        module(
            hidden_states=norm(hidden), position_embeddings=position_embeddings, attention_mask=None
        )
    except _Projected as projected:
        return projected.query, projected.key
    finally:
        if previous is None:
            LM_TAP.listeners.pop(id(module), None)
        else:
            LM_TAP.listeners[id(module)] = previous
    raise RuntimeError(
        f"{type(module).__name__} did not call leanvision's attention function; is the language "
        "model routed through it (install_attention)?"
    )

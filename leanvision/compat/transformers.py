"""Everything leanvision reads from transformers that is not a documented public API.

Keyword names the decoder passes, the KV-cache object, the attention and mask registries, the
attribute that selects a config's attention implementation, the eager attention function
beside each model, and Qwen2.5-VL's window index. When transformers renames one of them, the
fix is here; until then :func:`kv_cache` and :func:`cache_keyword` raise an
:class:`~leanvision.UpstreamVersionError` that names the versions involved.

>>> kv_cache({"cache": None, "input_ids": None}) is None
True
>>> CACHE_KEYWORDS
('cache', 'past_key_values')
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from leanvision.compat.versions import upstream_error

# The decoder's KV-cache keyword: transformers 5.24 renamed ``past_key_values`` to ``cache``
# (the old name is deprecated until 5.40); older releases pass only the old one.
CACHE_KEYWORDS = ("cache", "past_key_values")
# (cos, sin) each decoder layer receives from the language model's rotary embedding
POSITION_EMBEDDINGS = "position_embeddings"
# cumulative query lengths flash attention receives for packed sequences
PACKED_QUERY_BOUNDS = "cu_seq_lens_q"
# VLM forward keyword for vision features computed ahead of prefill by ``generate`` (>= 5.2x),
# and the model attribute that makes ``generate`` do so
MM_ENCODER_OUTPUTS = "mm_encoder_outputs"
MM_ENCODER_OUTPUTS_FLAG = "_supports_mm_encoder_outputs"
# the config attribute behind ``config._attn_implementation``
ATTN_IMPLEMENTATION_ATTR = "_attn_implementation_internal"


def _is_cache(value: Any) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(value, Cache)


def kv_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a decoder forward received (``None`` when there is none).

    Raises :class:`~leanvision.UpstreamVersionError` when a cache object arrives under a keyword
    leanvision does not know: reading ``None`` there would take every decode step for a
    prefill.
    """
    for name in CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    stray = [name for name, value in kwargs.items() if _is_cache(value)]
    if stray:
        raise upstream_error(
            "transformers",
            f"the decoder received its KV cache as {stray[0]!r}, a keyword leanvision does not "
            f"read (it knows {list(CACHE_KEYWORDS)})",
        )
    return None


def cached_length(cache: Any) -> int:
    """Tokens already in ``cache`` (0 for ``None``)."""
    return 0 if cache is None else int(cache.get_seq_length())


def is_static_cache(cache: Any) -> bool:
    """Whether ``cache`` has a fixed length (static / compiled), which pruning cannot shorten."""
    return bool(getattr(cache, "is_compileable", False))


def output_cache(output: Any) -> Any:
    """The KV cache a model output carries (``cache`` since 5.24, ``past_key_values`` before)."""
    for name in CACHE_KEYWORDS:  # a ModelOutput's keys are its fields that are set
        if name in output:
            return output[name]
    return None


def cache_keyword(module: nn.Module) -> str:
    """The KV-cache keyword ``module.forward`` takes (``"cache"`` since transformers 5.24,
    ``"past_key_values"`` before), to pass a cache by hand.

    Raises :class:`~leanvision.UpstreamVersionError` when it takes none that leanvision knows;
    every patch checks this before it changes anything, since such a cache would be invisible
    to leanvision's hooks.
    """
    parameters = inspect.signature(module.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    raise upstream_error(
        "transformers",
        f"{type(module).__name__}.forward takes none of the KV-cache keywords leanvision "
        f"reads ({list(CACHE_KEYWORDS)})",
    )


def attention_functions() -> Any:
    """transformers' registry of attention functions (``AttentionInterface``'s global mapping)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS


def mask_functions() -> Any:
    """transformers' registry of mask builders, keyed like :func:`attention_functions`."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS


def register_attention(name: str, attention: Callable[..., Any], mask: Callable[..., Any]) -> None:
    """Register ``attention`` and its ``mask`` builder under ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)


def eager_attention(module: nn.Module) -> Callable[..., Any] | None:
    """The eager attention function transformers keeps beside ``module``'s class (or None)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)


def attn_implementation(config: Any) -> str:
    """The attention implementation ``config`` selects ("eager" when unset)."""
    return config._attn_implementation or "eager"


def select_attention(handle: Any, config: Any, name: str) -> None:
    """Point ``config`` at the registered attention ``name`` until ``handle`` is removed."""
    handle.set_attr(config, ATTN_IMPLEMENTATION_ATTR, name)


def vision_window_index(grid_thw: Any, tower: nn.Module) -> Any:
    """Qwen2.5-VL's window order of the merged patches, from transformers' own function."""
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(
        grid_thw,
        spatial_merge_size=tower.spatial_merge_size,
        window_size=tower.window_size,
        patch_size=tower.patch_size,
    )
    return window_index

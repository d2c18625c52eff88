"""Estimated prefill FLOPs of a decoder-only language model, from its config.

Per token: ``2 x`` (parameters of the decoder layers + LM head); plus attention scores and
the weighted sum, ``2 x 2 x L x d_head x heads`` per layer and token, with a causal mask
halving it: ``2 x layers x L^2 x heads x d_head`` in total. Embedding lookups are free.

>>> from types import SimpleNamespace
>>> c = SimpleNamespace(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
...                     num_attention_heads=2, num_key_value_heads=2, vocab_size=10)
>>> prefill_flops(c, 4)
11392
"""

from __future__ import annotations

from typing import Any


def decoder_parameters(config: Any) -> int:
    """Weights multiplied per token: attention + gated MLP of every layer, and the LM head."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * config.intermediate_size
    return config.num_hidden_layers * (attention + mlp) + hidden * config.vocab_size


def prefill_flops(config: Any, tokens: int) -> int:
    """FLOPs of one prefill of ``tokens`` tokens through the language model (one sequence).

    ``config`` is the language model's config (``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``vocab_size``; optional
    ``num_key_value_heads``, ``head_dim``). An estimate, in FLOPs (multiply-adds count 2).

    >>> from types import SimpleNamespace
    >>> c = SimpleNamespace(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
    ...                     num_attention_heads=2, vocab_size=10)
    >>> prefill_flops(c, 4), prefill_flops(c, 8) > 2 * prefill_flops(c, 4)  # attention: L^2
    (11392, True)
    """
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    linear = 2 * decoder_parameters(config) * tokens
    attention = 2 * config.num_hidden_layers * tokens * tokens * heads * head_dim
    return int(linear + attention)

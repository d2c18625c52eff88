"""Statistics of an in-LLM pruned prefill: tokens per layer and estimated prefill FLOPs.

The FLOPs model is :mod:`leanvision.vlm.flops` (``2 x`` weights per token, plus causal
attention ``2 x L^2 x heads x d_head`` per layer), applied layer by layer to the number of
tokens each layer actually sees, so pre-LLM and in-LLM budgets compare on one scale.

>>> from types import SimpleNamespace
>>> c = SimpleNamespace(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
...                     num_attention_heads=2, num_key_value_heads=2, vocab_size=10)
>>> layered_prefill_flops(c, [4, 4]) == prefill_flops(c, 4)
True
"""

from __future__ import annotations

from typing import Any

from leanvision.vlm.flops import decoder_parameters, prefill_flops

__all__ = ["layered_prefill_flops", "prefill_flops", "record"]


def layered_prefill_flops(config: Any, tokens_per_layer: list[int]) -> int:
    """FLOPs of one prefill (one sequence) when decoder layer ``i`` sees
    ``tokens_per_layer[i]`` tokens; the LM head runs on the last layer's tokens."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    head = config.hidden_size * config.vocab_size
    per_layer = (decoder_parameters(config) - head) // config.num_hidden_layers
    total = 2 * head * tokens_per_layer[-1]
    for tokens in tokens_per_layer:
        total += 2 * per_layer * tokens + 2 * tokens * tokens * heads * head_dim
    return int(total)


def record(pruner: Any, prefill: Any) -> None:
    """Fill ``pruner.handle.stats`` from a finished prefill (all rows are equally long)."""
    depth = len(pruner.layers)
    batch = int(prefill.visual_before.shape[0])
    sets = prefill.sets
    per_layer_set = [pruner.stage_of(layer) for layer in range(depth)]
    tokens_per_layer = [sets[s].length for s in per_layer_set]
    visual_counts = [s.visual.sum(-1).float() for s in sets]  # (B,) per set
    visual_per_layer = [float(visual_counts[s].mean()) for s in per_layer_set]
    config = pruner.text_config
    before = layered_prefill_flops(config, [prefill.length] * depth) * batch
    after = layered_prefill_flops(config, tokens_per_layer) * batch
    pruner.handle.stats.update(
        tokens_before=[int(v) for v in prefill.visual_before.tolist()],
        tokens_after=[int(v) for v in visual_counts[-1].tolist()],
        sequence_length_before=prefill.length,
        sequence_length_after=sets[-1].length,
        tokens_per_layer=tokens_per_layer,
        visual_tokens_per_layer=visual_per_layer,
        avg_tokens_per_layer=sum(tokens_per_layer) / depth,
        avg_visual_tokens_per_layer=sum(visual_per_layer) / depth,
        kept_index=[s.index.detach().cpu() for s in sets[1:]],
        # where each token of a stage's set sat in the previous set, and the positions of the
        # tokens the stage inserted (SparseVLM's recycled tokens; they repeat, in kept_index,
        # the original position of the token they follow)
        kept_source=[s.source.detach().cpu() for s in sets[1:]],
        inserted_index=[
            None if s.inserted is None else s.inserted.detach().cpu() for s in sets[1:]
        ],
        separators=[0] * batch
        if sets[0].separator is None
        else [int(v) for v in sets[0].separator.sum(-1).tolist()],
        prefill_flops_before=before,
        prefill_flops_after=after,
        flops_ratio=after / before,
    )

"""Reference decoding for in-LLM pruning, built by hand from the UNPATCHED language model.

The test drives the model's own decoder layers one by one: layer ``i`` sees the token set of
its stage (the original prompt positions the library reports as kept), with a boolean
causal + padding mask written here, positions gathered from the original prompt (or
renumbered over the kept real tokens), and a ``DynamicCache``; greedy decoding then appends
one token per step to every layer's set. Nothing of leanvision runs in here.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from leanvision.compat import transformers as tf_compat
from leanvision.testing.common import TinyModel
from leanvision.vlm.adapters import get_adapter


def _stage_of(layer: int, stages: list[int]) -> int:
    return sum(1 for start in stages if start <= layer)


def _prompt_mask(index: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool: query q sees key k when k is real and not after q (diagonal always,
    so padding rows stay finite)."""
    later = index[:, None, :] > index[:, :, None]
    allowed = ~later & real[:, None, :]
    allowed |= torch.eye(index.shape[1], dtype=torch.bool).unsqueeze(0)
    return allowed.unsqueeze(1)


@torch.no_grad()
def reference_inllm_decode(
    tiny: TinyModel,
    prefill_embeds: torch.Tensor,
    positions: torch.Tensor,
    kept_sets: list[torch.Tensor],
    stages: list[int],
    steps: int,
    renumber: bool = False,
) -> torch.Tensor:
    """Greedy tokens ``(B, steps)`` of the unpatched model when layers from ``stages[s]`` on
    see only the prompt positions ``kept_sets[s]`` ``(B, L_s)``.

    ``positions``: ``(B, L)`` or M-RoPE ``(3, B, L)`` positions of the original prompt; decode
    step ``t`` sits at the row's largest real position + 1 + t (or, with ``renumber``, at the
    number of real tokens the layer kept + t).
    """
    model = tiny.model
    adapter = get_adapter(model)
    language = adapter.language_model(model)
    layers = adapter.decoder_layers(model)
    mask2d = tiny.inputs["attention_mask"].bool()
    batch, length = mask2d.shape
    mrope = positions.dim() == 3
    full = torch.arange(length).unsqueeze(0).expand(batch, -1)
    sets = [full] + [s.cpu() for s in kept_sets]
    cache = DynamicCache(config=language.config)
    eos, pad_id = tiny.info["eos_token_id"], tiny.info["pad_token_id"]

    def gather_positions(index: torch.Tensor) -> torch.Tensor:
        if renumber:
            real = mask2d.gather(1, index)
            return (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
        if mrope:
            return positions.gather(2, index.unsqueeze(0).expand(positions.shape[0], -1, -1))
        return positions.gather(1, index)

    if mrope:
        valid = mask2d.unsqueeze(0)
        last_position = positions.masked_fill(~valid, -1).amax(dim=(0, 2))
    else:
        last_position = positions.masked_fill(~mask2d, -1).amax(dim=1)

    # prefill
    hidden = prefill_embeds
    previous = 0
    for number, layer in enumerate(layers):
        stage = _stage_of(number, stages)
        index = sets[stage]
        if stage != previous:  # rows of the new set inside the previous one
            where = torch.searchsorted(sets[previous].contiguous(), index)
            hidden = hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            previous = stage
        layer_positions = gather_positions(index)
        embeddings = language.rotary_emb(hidden, layer_positions)
        mask = _prompt_mask(index, mask2d.gather(1, index))
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=embeddings,
            position_ids=layer_positions if not mrope else None,
            **{tf_compat.cache_keyword(layer): cache},
            use_cache=True,
        )
    logits = adapter.lm_head(model)(language.norm(hidden))

    tokens, done = [], torch.zeros(batch, dtype=torch.bool)
    for step in range(steps):
        token = logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        done |= token == eos
        hidden = adapter.embed_tokens(model)(token[:, None])
        for number, layer in enumerate(layers):
            index = sets[_stage_of(number, stages)]
            real = mask2d.gather(1, index)
            if renumber:
                step_position = (real.sum(-1) + step).view(batch, 1)
            else:
                step_position = (last_position + 1 + step).view(batch, 1)
            if mrope:
                step_position = step_position.unsqueeze(0).expand(3, -1, -1)
            embeddings = language.rotary_emb(hidden, step_position)
            seen = torch.cat([real, torch.ones(batch, step + 1, dtype=torch.bool)], dim=1)
            hidden = layer(
                hidden,
                attention_mask=seen[:, None, None, :],
                position_embeddings=embeddings,
                position_ids=step_position if not mrope else None,
                **{tf_compat.cache_keyword(layer): cache},
                use_cache=True,
            )
        logits = adapter.lm_head(model)(language.norm(hidden))
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def reference_stage_attention(
    tiny: TinyModel, sets: list[torch.Tensor], stages: list[int], renumber: bool
) -> torch.Tensor:
    """Eager attention weights ``(B, H, L_s, L_s)`` of layer ``stages[-1] - 1`` when layer
    ``i`` sees ``sets[stage of i]`` (the model's layers run by hand, as above)."""
    model = tiny.model
    adapter = get_adapter(model)
    language = adapter.language_model(model)
    mask2d = tiny.inputs["attention_mask"].bool()
    captured: list[torch.Tensor] = []
    target = stages[-1] - 1
    hook = adapter.decoder_layers(model)[target].self_attn.register_forward_hook(
        lambda module, args, output: captured.append(output[1])
    )
    try:
        with torch.no_grad():
            embeds = tiny.model.model(**tiny.inputs, output_hidden_states=True)
        hidden = embeds.hidden_states[0]
        previous = 0
        for number, layer in enumerate(adapter.decoder_layers(model)[: target + 1]):
            stage = _stage_of(number, stages[:-1])
            index = sets[stage]
            if stage != previous:
                where = torch.searchsorted(sets[previous].contiguous(), index)
                hidden = hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
                previous = stage
            real = mask2d.gather(1, index)
            if renumber:
                positions = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
            else:
                positions = ((mask2d.long().cumsum(-1) - 1).masked_fill(~mask2d, 1)).gather(
                    1, index
                )
            allowed = _prompt_mask(index, real)  # eager attention adds the mask: make it float
            additive = torch.zeros(allowed.shape).masked_fill(
                ~allowed, torch.finfo(torch.float32).min
            )
            hidden = layer(
                hidden,
                attention_mask=additive,
                position_embeddings=language.rotary_emb(hidden, positions),
                position_ids=positions,
            )
    finally:
        hook.remove()
    return captured[-1]

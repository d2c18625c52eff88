"""Reference decoding for in-LLM pruning, built by hand from the UNPATCHED language model.

The test drives the model's own decoder layers one by one: layer ``i`` sees the token set of
its stage (the original prompt positions the library reports as kept, in sequence order),
with a boolean causal (in sequence order) + padding mask written here, positions gathered
from the original prompt (or renumbered over the kept real tokens), and a ``DynamicCache``;
greedy decoding then appends one token per step to every layer's set. A stage may insert
tokens (SparseVLM's recycled ones): the test passes where each token of a set came from in
the previous one and the hidden states written at the inserted positions. Nothing of
leanvision runs in here.
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
    """(B, 1, L, L) bool: query q sees key k when k is real and not after q in the set's
    sequence order (diagonal always, so padding rows stay finite)."""
    length = index.shape[1]
    earlier = torch.ones(length, length, dtype=torch.bool).tril().unsqueeze(0)
    allowed = earlier & real[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool).unsqueeze(0)
    return allowed.unsqueeze(1)


def _next_hidden(
    hidden: torch.Tensor,
    previous: torch.Tensor,
    index: torch.Tensor,
    source: torch.Tensor | None,
    inserted: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Rows of the new set: from ``source`` (positions in the previous set) or, when None,
    found by original position; inserted rows overwritten by the given values."""
    where = torch.searchsorted(previous.contiguous(), index) if source is None else source
    hidden = hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    if inserted is not None:
        slots, values = inserted
        hidden = hidden.scatter(1, slots.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]), values)
    return hidden


@torch.no_grad()
def reference_inllm_decode(
    tiny: TinyModel,
    prefill_embeds: torch.Tensor,
    positions: torch.Tensor,
    kept_sets: list[torch.Tensor],
    stages: list[int],
    steps: int,
    renumber: bool = False,
    sources: list[torch.Tensor | None] | None = None,
    inserted: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
) -> torch.Tensor:
    """Greedy tokens ``(B, steps)`` of the unpatched model when layers from ``stages[s]`` on
    see only the prompt positions ``kept_sets[s]`` ``(B, L_s)``.

    ``sources[s]``: where each token of ``kept_sets[s]`` sat in the previous set (needed when
    positions repeat); ``inserted[s]``: ``(slots (B, R), values (B, R, D))`` hidden states of
    the tokens stage ``s`` inserted.

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
            source = None if sources is None else sources[stage - 1]
            extra = None if inserted is None else inserted[stage - 1]
            hidden = _next_hidden(hidden, sets[previous], index, source, extra)
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


def set_positions(tiny: TinyModel, index: torch.Tensor, renumber: bool) -> torch.Tensor:
    """``(B, L_s)`` 1-D positions of the set ``index``: renumbered over its real tokens, or
    the original prompt's (``cumsum - 1`` of the mask, padding at 1)."""
    mask2d = tiny.inputs["attention_mask"].bool()
    real = mask2d.gather(1, index)
    if renumber:
        return (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
    return ((mask2d.long().cumsum(-1) - 1).masked_fill(~mask2d, 1)).gather(1, index)


@torch.no_grad()
def _run_stages(
    tiny: TinyModel, sets: list[torch.Tensor], starts: list[int], layers: int, renumber: bool
) -> torch.Tensor:
    """Run decoder layers ``0 .. layers - 1`` by hand on 1-D RoPE positions, layer ``i``
    seeing ``sets[stage of i in starts]``; returns their output (over that last set)."""
    model = tiny.model
    adapter = get_adapter(model)
    language = adapter.language_model(model)
    mask2d = tiny.inputs["attention_mask"].bool()
    hidden = model.model(**tiny.inputs, output_hidden_states=True).hidden_states[0]
    previous = 0
    for number, layer in enumerate(adapter.decoder_layers(model)[:layers]):
        stage = _stage_of(number, starts)
        index = sets[stage]
        if stage != previous:
            where = torch.searchsorted(sets[previous].contiguous(), index)
            hidden = hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            previous = stage
        positions = set_positions(tiny, index, renumber)
        allowed = _prompt_mask(index, mask2d.gather(1, index))
        # eager attention adds the mask: make it float
        additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        hidden = layer(
            hidden,
            attention_mask=additive,
            position_embeddings=language.rotary_emb(hidden, positions),
            position_ids=positions,
        )
    return hidden


@torch.no_grad()
def reference_stage_input(
    tiny: TinyModel, sets: list[torch.Tensor], stages: list[int], renumber: bool
) -> torch.Tensor:
    """The hidden states ``(B, L_s, D)`` entering layer ``stages[-1]`` (over ``sets[-1]``)
    when layer ``i`` sees ``sets[stage of i]`` (the model's layers run by hand, as above)."""
    return _run_stages(tiny, sets, stages[:-1], stages[-1], renumber)


@torch.no_grad()
def reference_stage_attention(
    tiny: TinyModel, sets: list[torch.Tensor], stages: list[int], renumber: bool
) -> torch.Tensor:
    """Eager attention weights ``(B, H, L_s, L_s)`` of layer ``stages[-1] - 1`` when layer
    ``i`` sees ``sets[stage of i]`` (the model's layers run by hand, as above)."""
    adapter = get_adapter(tiny.model)
    captured: list[torch.Tensor] = []
    target = stages[-1] - 1
    hook = adapter.decoder_layers(tiny.model)[target].self_attn.register_forward_hook(
        lambda module, args, output: captured.append(output[1])
    )
    try:
        _run_stages(tiny, sets, stages[:-1], target + 1, renumber)
    finally:
        hook.remove()
    return captured[-1]


class StageInputs:
    """The hidden states decoder layer ``index`` receives at the first call (the prefill),
    read by a pre-hook registered after the pruner's (so it sees what the pruner wrote,
    recycled tokens included)."""

    def __init__(self, model, index: int):
        self.prefill: torch.Tensor | None = None
        layer = get_adapter(model).decoder_layers(model)[index]
        self._hook = layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.prefill is None:
            self.prefill = hidden.detach().clone()

    def close(self) -> None:
        self._hook.remove()

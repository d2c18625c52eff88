"""Shared helpers of the vlm tests: cached tiny models, method settings, reference decoding."""

from __future__ import annotations

import functools
from typing import Any

import torch

from leanvision import testing
from leanvision.compat import transformers as tf_compat
from leanvision.testing.common import TinyModel
from leanvision.vlm.adapters import get_adapter

# name -> (factory, kwargs)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llava": ("tiny_llava", {}),
    "llava_next": ("tiny_llava_next", {}),
    "llava_onevision": ("tiny_llava_onevision", {}),
    "llava_onevision_video": ("tiny_llava_onevision", {"video": True}),
    "qwen2_vl": ("tiny_qwen2_vl", {}),
    "qwen2_vl_video": ("tiny_qwen2_vl", {"video": True}),
    "qwen2_5_vl": ("tiny_qwen2_5_vl", {}),
    "qwen2_5_vl_video": ("tiny_qwen2_5_vl", {"video": True}),
    "idefics3": ("tiny_idefics3", {}),
}
VIDEO_FAMILIES = [name for name in FAMILIES if name.endswith("_video")]
IMAGE_FAMILIES = [name for name in FAMILIES if not name.endswith("_video")]

# method -> options that prune, and options that keep everything
IMAGE_METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "visionzip": ({"keep": 0.3}, {"keep": 1.0}),
    "prumerge+": ({"keep": 0.3}, {"keep": 1.0}),
    "bipartite-merge": ({"keep": 0.3}, {"keep": 1.0}),
    "divprune": ({"keep": 0.3}, {"keep": 1.0}),
    "random": ({"keep": 0.3}, {"keep": 1.0}),
    "pool": ({"keep": 0.3}, {"keep": 1.0}),
}
VIDEO_METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "temporal": ({"threshold": 0.0, "then": "visionzip", "keep": 0.5}, {"threshold": 1.0}),
    "progressive_pool": ({"stride": 2, "group": 2}, {"stride": 1}),
}


@functools.cache
def build(name: str, batch: int = 1, attn: str = "sdpa") -> TinyModel:
    """A cached tiny model (tests must leave it unpatched: use ``with compress(...)``)."""
    factory, options = FAMILIES[name]
    return getattr(testing, factory)(batch=batch, attn_implementation=attn, **options)


@torch.no_grad()
def logits(tiny: TinyModel) -> torch.Tensor:
    return tiny.model(**tiny.inputs).logits


class LLMInputs:
    """Records what the language model receives (prefill and decode calls)."""

    def __init__(self, model: Any):
        self.calls: list[dict[str, Any]] = []
        language_model = get_adapter(model).language_model(model)
        self._hook = language_model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        self.calls.append(dict(kwargs))

    def close(self) -> None:
        self._hook.remove()

    def __enter__(self) -> LLMInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def prefill(self) -> dict[str, Any]:
        return self.calls[0]


def visual_mask(tiny: TinyModel) -> torch.Tensor:
    adapter = get_adapter(tiny.model)
    return adapter.visual_token_mask(tiny.model, tiny.inputs["input_ids"])


def original_positions(tiny: TinyModel) -> torch.Tensor:
    """Prompt positions as transformers computes them for ``generate``: ``cumsum - 1`` on the
    mask, or Qwen's ``get_rope_index`` (3, B, L) on the original ids."""
    inputs, model = tiny.inputs, tiny.model
    mask = inputs["attention_mask"]
    if "mm_token_type_ids" in inputs:
        grids = {k: inputs[k] for k in ("image_grid_thw", "video_grid_thw") if k in inputs}
        positions, _ = model.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            attention_mask=mask,
            **grids,
        )
        return positions
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


@torch.no_grad()
def reference_decode(
    tiny: TinyModel,
    prefill_embeds: torch.Tensor,
    kept: list[list[int]],
    steps: int,
    renumber: bool = False,
) -> torch.Tensor:
    """Greedy decoding of the UNPATCHED model on a pruned prompt built here by hand.

    Row ``b`` keeps the original tokens at ``kept[b]`` (text embedded from the ids; visual
    features taken from ``prefill_embeds``, what the patched language model received), at
    their original positions; rows are left-padded to equal length. Decode step ``t`` sits at
    position ``max(original positions of the row) + 1 + t``, on all M-RoPE axes. With
    ``renumber`` the kept tokens get ``0, 1, ...`` over the attended ones (padding 1) and step
    ``t`` sits at ``(attended kept tokens) + t``, as the VisionZip/PruMerge+/DivPrune
    references rebuild the prompt.
    """
    model, ids, mask = tiny.model, tiny.inputs["input_ids"], tiny.inputs["attention_mask"]
    embed = get_adapter(model).embed_tokens(model)
    visual = visual_mask(tiny)
    positions = original_positions(tiny)
    mrope = positions.dim() == 3
    length = max(len(row) for row in kept)
    batch = ids.shape[0]
    rows_embeds, rows_mask, rows_pos = [], [], []
    for b in range(batch):
        index = torch.tensor(kept[b])
        pad = length - index.numel()
        row = embed(ids[b, index]).clone()
        slots = torch.arange(pad, length)  # where row b sits in the patched prefill
        row[visual[b, index]] = prefill_embeds[b, slots][visual[b, index]]
        rows_embeds.append(torch.cat([torch.zeros(pad, row.shape[-1]), row]))
        rows_mask.append(torch.cat([torch.zeros(pad, dtype=torch.long), mask[b, index]]))
        pos = positions[:, b, index] if mrope else positions[b, index]
        if renumber:  # 1-D RoPE only
            real = mask[b, index]
            pos = (real.cumsum(-1) - 1).masked_fill(real == 0, 1)
        fill = torch.ones(*pos.shape[:-1], pad, dtype=pos.dtype)
        rows_pos.append(torch.cat([fill, pos], dim=-1))
    embeds = torch.stack(rows_embeds)
    attention = torch.stack(rows_mask)
    position_ids = torch.stack(rows_pos, dim=-2 if mrope else 0)
    valid = mask.bool()
    if mrope:
        last = positions.masked_fill(~valid.unsqueeze(0), -1).amax(dim=(0, 2))
    elif renumber:
        last = torch.tensor([int(mask[b, torch.tensor(kept[b])].sum()) - 1 for b in range(batch)])
    else:
        last = positions.masked_fill(~valid, -1).amax(dim=1)
    eos, pad_id = tiny.info["eos_token_id"], tiny.info["pad_token_id"]
    out = model(
        inputs_embeds=embeds, attention_mask=attention, position_ids=position_ids, use_cache=True
    )
    cache, tokens, done = tf_compat.output_cache(out), [], torch.zeros(batch, dtype=torch.bool)
    for step in range(steps):
        token = out.logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        done |= token == eos
        attention = torch.cat([attention, torch.ones(batch, 1, dtype=attention.dtype)], dim=1)
        step_pos = (last + 1 + step).view(batch, 1)
        if mrope:
            step_pos = step_pos.unsqueeze(0).expand(3, -1, -1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=step_pos,
            **{tf_compat.cache_keyword(model): cache},
            use_cache=True,
        )
        cache = tf_compat.output_cache(out)
    return torch.stack(tokens, dim=1)

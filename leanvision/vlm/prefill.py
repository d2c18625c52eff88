"""The shared pre-LLM hook: prune/merge visual tokens once, at prefill, then keep decoding
consistent with the shorter KV cache.

A forward pre-hook (with kwargs) on ``model.model`` — the module that receives ``input_ids``
and ``pixel_values`` — does, at prefill (empty cache):

1. ``adapter.encode``: run the vision tower + projector itself (scores/keys captured at one
   ViT block when the method asks), one :class:`VisualSegment` per image/crop/video;
2. ``config.compress_segment``: pick/merge each segment's tokens;
3. ``splice``: build ``inputs_embeds`` with only the kept tokens, and gather the attention mask
   and the ORIGINAL position ids (1-D, or M-RoPE ``(3|4, B, L)`` computed on the original ids),
   so the model's "image tokens == features" check never runs and positions are exact; or,
   when the method renumbers (``config.resolve_renumber``: its paper's setting by default),
   consecutive positions over the kept tokens, which then come in the method's own order
   (``handle.stats["kept_positions"]`` lists the prompt slots the LLM's tokens occupy: with a
   reordering method, the image's first placeholders rather than the tokens' sources).

At decode steps it rewrites the attention mask ``generate`` grows from the original prompt
into one that matches the shorter cache, and supplies positions when none are given:
original positions continue where the unpruned prompt ended (``rope_deltas`` for M-RoPE),
or, with ``renumber=True``, shifted down by the tokens removed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from leanvision.compat import transformers as tf_compat
from leanvision.vlm.adapters.base import VLMAdapter, splice, text_position_ids
from leanvision.vlm.capture import install_capture
from leanvision.vlm.flops import prefill_flops


@dataclasses.dataclass
class DecodeState:
    """What decode steps need to know about the last pruned prefill."""

    original_length: int
    short_mask: torch.Tensor  # (B, L')
    offset: torch.Tensor | None  # (B, 1) positions removed by renumbering
    rope_deltas: torch.Tensor | None  # (B, 1) M-RoPE deltas of the original prompt


class PrefillCompressor:
    """Forward pre-hook of ``model.model`` that applies ``config`` at every prefill."""

    def __init__(self, model: nn.Module, config: Any, handle: Any, adapter: VLMAdapter):
        self.model = model
        self.config = config
        self.handle = handle
        self.adapter = adapter
        self.request = config.score_request(adapter.default_score_layer(model))
        resolve = getattr(config, "resolve_renumber", None)
        self.renumber = bool(config.renumber) if resolve is None else resolve(adapter)
        self.state: DecodeState | None = None
        # what a following in-LLM stage (video ``then=``) needs from the current prefill:
        # ``input_ids`` as the language model sees them (``-1`` for padding slots),
        # ``visual_before`` (B,) visual tokens per row of the original prompt; None otherwise
        self.last_prefill: dict[str, Any] | None = None

    # -- hook ----------------------------------------------------------------------------------
    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        if args:  # the outer models pass everything by keyword; accept input_ids positionally
            kwargs = {**kwargs, "input_ids": args[0]}
            args = ()
        self.last_prefill = None
        past = tf_compat.cached_length(tf_compat.kv_cache(kwargs))
        vision = any(kwargs.get(k) is not None for k in ("pixel_values", "pixel_values_videos"))
        if past == 0:
            self.state = None
            if not vision:
                return None
            with torch.no_grad():
                return args, self._prefill(kwargs)
        if vision:
            raise ValueError(
                "leanvision compresses visual tokens at prefill only; pixel_values arrived with "
                f"a non-empty cache ({past} tokens). Start a new prompt with an empty cache."
            )
        if self.state is None:
            return None
        return args, self._decode(kwargs, past)

    # -- prefill -------------------------------------------------------------------------------
    def _placeholder_masks(self, input_ids: torch.Tensor, kwargs: dict[str, Any]) -> dict:
        adapter, model = self.adapter, self.model
        masks = {"image": input_ids == adapter.image_token_id(model)}
        video_id = adapter.video_token_id(model)
        if video_id is not None:
            masks["video"] = input_ids == video_id
        for kind, key in (("image", "pixel_values"), ("video", "pixel_values_videos")):
            if kwargs.get(key) is not None and not bool(masks.get(kind, input_ids[:0]).any()):
                token = adapter.image_token_id(model) if kind == "image" else video_id
                raise ValueError(
                    f"{key} was passed but input_ids contain no {kind} placeholder token "
                    f"(id {token}); build the prompt with the model's processor"
                )
        return masks

    def _prefill(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        adapter, model = self.adapter, self.model
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            raise ValueError(
                "visual-token compression needs input_ids at prefill (to find the image "
                "placeholders); got inputs_embeds only"
            )
        if kwargs.get(tf_compat.MM_ENCODER_OUTPUTS):
            raise ValueError(
                "visual-token compression runs the vision tower itself; pass pixel_values, "
                f"not {tf_compat.MM_ENCODER_OUTPUTS}"
            )
        masks = self._placeholder_masks(input_ids, kwargs)
        segments = adapter.encode(model, kwargs, self.request)
        check = getattr(self.config, "check_segment", None)
        if check is not None:  # budgets above an image's tokens raise before anything changes
            for segment in segments:
                check(segment, adapter.name)
        for segment in segments:
            segment.reorder = self.renumber
        kept = [self.config.compress_segment(segment) for segment in segments]

        attention_mask = kwargs.get("attention_mask")
        positions = kwargs.get("position_ids")
        rope_deltas = None
        if positions is None:
            if adapter.mrope:
                extra = {k: v for k, v in kwargs.items() if k in adapter.vision_kwargs}
                positions, rope_deltas = adapter.prefill_position_ids(
                    model, input_ids, attention_mask, **extra
                )
            else:  # what the language model uses when given no positions
                positions = text_position_ids(input_ids, None)
        if adapter.mrope and rope_deltas is None:
            rope_deltas = getattr(adapter.inner(model), "rope_deltas", None)
        embeddings = adapter.embed_tokens(model)(input_ids)
        spliced = splice(embeddings, masks, segments, kept, attention_mask, positions)

        length, new_length = input_ids.shape[1], spliced.inputs_embeds.shape[1]
        dropped = new_length != length or bool(
            (spliced.kept_index != torch.arange(length, device=input_ids.device)).any()
        )
        new_positions, offset = spliced.position_ids, None
        if self.renumber and dropped:
            new_positions = text_position_ids(spliced.attention_mask, spliced.attention_mask)
            old_last = _last_valid(spliced.position_ids, spliced.attention_mask)
            offset = (old_last - _last_valid(new_positions, spliced.attention_mask)).unsqueeze(-1)
        self.state = DecodeState(length, spliced.attention_mask, offset, rope_deltas)
        self._record_stats(segments, kept, input_ids.shape[0], length, new_length)
        self.handle.stats["kept_positions"] = [row[row >= 0].tolist() for row in spliced.kept_index]
        valid = spliced.kept_index >= 0
        short_ids = input_ids.gather(1, spliced.kept_index.clamp(min=0)).masked_fill(~valid, -1)
        visual = torch.stack(list(masks.values())).any(dim=0)
        self.last_prefill = {
            "input_ids": short_ids,
            "visual_before": visual.sum(-1),
            "stats": dict(self.handle.stats),
        }

        new = {k: v for k, v in kwargs.items() if k not in adapter.vision_kwargs}
        new["input_ids"] = None
        new["inputs_embeds"] = spliced.inputs_embeds
        # an explicit mask whenever tokens were dropped: without one, transformers reads the
        # gaps in position ids as packed sequences
        new["attention_mask"] = spliced.attention_mask if dropped else attention_mask
        new["position_ids"] = new_positions
        return new

    def _record_stats(self, segments: list, kept: list, batch: int, length: int, new: int) -> None:
        text_config = self.adapter.text_config(self.model)
        before = prefill_flops(text_config, length) * batch
        after = prefill_flops(text_config, new) * batch
        tokens_after = [int(anchors.numel()) for anchors, _ in kept]
        self.handle.stats.update(
            tokens_before=[segment.num_tokens for segment in segments],
            tokens_after=tokens_after,
            sequence_length_before=length,
            sequence_length_after=new,
            # every decoder layer sees the shortened prompt: comparable with in-LLM methods
            avg_tokens_per_layer=float(new),
            avg_visual_tokens_per_layer=sum(tokens_after) / batch,
            prefill_flops_before=before,
            prefill_flops_after=after,
            flops_ratio=after / before,
        )

    # -- decode --------------------------------------------------------------------------------
    def _decode(self, kwargs: dict[str, Any], past: int) -> dict[str, Any]:
        state = self.state
        new = dict(kwargs)
        embeds = kwargs.get("inputs_embeds")
        current = (embeds if embeds is not None else kwargs["input_ids"]).shape[1]
        short_length = state.short_mask.shape[1]
        removed = state.original_length - short_length
        mask = kwargs.get("attention_mask")
        full_mask = None
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
                raise ValueError(
                    "visual-token compression needs a 2-D attention_mask at decode (a dynamic "
                    "cache); static/compiled caches are not supported"
                )
            if mask.shape[1] == past + current + removed:
                full_mask = mask
                grown = mask[:, state.original_length :]
                new["attention_mask"] = torch.cat([state.short_mask, grown], dim=1)
            elif mask.shape[1] != past + current:
                raise ValueError(
                    f"attention_mask has {mask.shape[1]} columns; expected {past + current} "
                    f"(pruned cache) or {past + current + removed} (original prompt + new tokens)"
                )
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = self._decode_positions(full_mask, past + removed, current, kwargs)
        elif state.offset is not None:
            positions = positions - state.offset.to(positions.device)
        new["position_ids"] = positions
        return new

    def _decode_positions(
        self, full_mask: torch.Tensor | None, past_original: int, current: int, kwargs: dict
    ) -> torch.Tensor:
        """Positions of the new tokens as the unpruned model would compute them."""
        state = self.state
        device = state.short_mask.device
        batch = state.short_mask.shape[0]
        if self.adapter.mrope and full_mask is not None:
            text = (full_mask.long().cumsum(-1) - 1).masked_fill(full_mask == 0, 0)[:, -current:]
        else:
            text = torch.arange(past_original, past_original + current, device=device)
            text = text.unsqueeze(0).expand(batch, -1)
        if state.offset is not None:
            text = text - state.offset.to(device)
        if not self.adapter.mrope:
            return text
        deltas = state.rope_deltas if state.rope_deltas is not None else torch.zeros(batch, 1)
        return (text + deltas.to(device)).unsqueeze(0).expand(3, -1, -1)


def _last_valid(positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` largest position among attended tokens (first row for M-RoPE)."""
    if positions.dim() == 3:
        positions = positions[0]
    return positions.masked_fill(mask == 0, -1).max(dim=-1).values


def _no_mm_encoder_outputs() -> bool:
    return False


def install_prefill(
    model: nn.Module, config: Any, handle: Any, adapter: VLMAdapter
) -> PrefillCompressor:
    """Install the prefill hook (and the attention capture when ``config`` needs scores);
    returns the hook, whose ``last_prefill`` a following in-LLM stage reads."""
    inner = adapter.inner(model)
    tf_compat.cache_keyword(inner)
    compressor = PrefillCompressor(model, config, handle, adapter)
    request = compressor.request
    if request.scores or request.keys:
        from leanvision.vlm.adapters.llava import resolve_layer

        layer = resolve_layer(request.layer, len(adapter.vision_layers(model)))
        install_capture(handle, adapter.vision_attention(model, layer))
    if hasattr(model, tf_compat.MM_ENCODER_OUTPUTS_FLAG):
        # transformers >= 5.2x `generate` runs the vision tower before prefill and passes only
        # its features; the hook needs the pixels (scores come from the tower's attention), so
        # this instance takes the plain path while patched.
        handle.set_attr(model, tf_compat.MM_ENCODER_OUTPUTS_FLAG, _no_mm_encoder_outputs)
    handle.add_hook(inner.register_forward_pre_hook(compressor, with_kwargs=True))
    handle.stats["method"] = handle.method
    handle.stats["renumber"] = compressor.renumber
    return compressor

"""The shared machinery of in-LLM visual-token pruning (FastV, PyramidDrop, SparseVLM).

A method is a list of *stages* plus a :class:`Policy`. Stage ``s`` starts at decoder layer
``stages[s]``: layers ``0 .. stages[0] - 1`` see the whole prompt, layers ``stages[s] ..`` see
only the tokens the stage kept. Which layer ranks the current set is the policy's choice
(``rank_layer_offset``): ``1``, the attention of the layer before the stage (FastV,
SparseVLM); ``0``, the first layer of the stage itself, its own norm, ``q``/``k`` projections
and RoPE applied to the full hidden states entering it (PyramidDrop). Pruning happens once,
at prefill:

- a forward pre-hook on ``model.model`` records ``input_ids`` (to find the visual tokens);
- a pre-hook on the language model starts a new prefill when the cache is empty, and marks
  image separators (:mod:`.separators`): never candidates, always kept;
- offset 1: a listener on the attention of layer ``stages[s] - 1`` (see :mod:`.attention`)
  scores keys with ``kernels.attention_scores`` (no attention matrix); offset 0: the
  pre-hook of layer ``stages[s]`` reads that layer's ``q``/``k`` (:func:`.stage_query_key`)
  and scores the same way;
- a pre-hook on every decoder layer from ``stages[0]`` on gathers, at the first layer of a
  stage, the kept rows of ``hidden_states`` (writing inserted, recycled tokens), and at every
  layer of the stage, the kept rows/columns of the 4-D mask, of ``position_embeddings``
  (cos, sin: 1-D or M-RoPE alike) and of ``position_ids`` (see :mod:`.tokens`).

The KV cache of a pruned layer then holds fewer tokens. At decode steps the same pre-hooks
take from the full-length mask the columns of the tokens that layer kept (plus the new
ones), so left padding and per-row masks stay exact; with ``renumber=True`` the positions of
pruned layers are recomputed as if the dropped tokens had never been there. Every row keeps
the same number of tokens (rows that have more visual tokens keep a few more), so batches
stay rectangular.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from leanvision.compat import transformers as tf_compat
from leanvision.vlm.inllm import stats as inllm_stats
from leanvision.vlm.inllm.attention import (
    attention_module,
    install_attention,
    listen,
    stage_query_key,
)
from leanvision.vlm.inllm.separators import separator_mask
from leanvision.vlm.inllm.tokens import (
    Selection,
    Tokens,
    causal_in_order,
    gather_mask,
    gather_positions,
    gather_rows,
    next_tokens,
)

__all__ = ["InLLMPruner", "Policy", "Prefill", "Selection", "Tokens"]


class Policy(Protocol):
    """How one method scores and selects. ``score`` gets the post-RoPE ``q``/``k`` of layer
    ``stages[s] - rank_layer_offset`` over the current set (offset 1: inside that layer's
    attention; offset 0: projected from the hidden states entering the stage); ``select``
    runs at the first layer of stage ``s``."""

    rank_layer_offset: int

    def begin(self, prefill: Prefill, embeds: torch.Tensor | None) -> None: ...

    def score(
        self, stage: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor, tokens: Tokens
    ) -> Any: ...

    def select(
        self, stage: int, scored: Any, tokens: Tokens, hidden: torch.Tensor, prefill: Prefill
    ) -> Selection: ...


@dataclasses.dataclass
class Prefill:
    """State of the last pruned prefill, kept for the decode steps that follow it."""

    length: int
    visual_before: torch.Tensor  # (B,) visual tokens (candidates, no separators) per row
    sets: list[Tokens]  # sets[0]: the prompt; sets[s + 1]: after stage s
    scored: dict[int, Any] = dataclasses.field(default_factory=dict)
    positions: list[torch.Tensor | None] = dataclasses.field(default_factory=list)
    shifts: list[int] = dataclasses.field(default_factory=list)


class InLLMPruner:
    """Installs the hooks of one in-LLM method on ``model`` through ``handle``."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Any,
        handle: Any,
        stages: list[int],
        policy: Policy,
        renumber: bool,
    ):
        self.model = model
        self.adapter = adapter
        self.handle = handle
        self.stages = list(stages)
        self.policy = policy
        self.renumber = renumber
        self.language_model = adapter.language_model(model)
        self.layers = adapter.decoder_layers(model)
        self.text_config = adapter.text_config(model)
        self.state: Prefill | None = None
        self.phase = "idle"
        self._pending_ids: torch.Tensor | None = None
        # set when a pre-LLM stage runs first (video ``then=``): it replaces ``input_ids`` by a
        # shorter ``inputs_embeds``, so the ids of the tokens the language model really sees
        # (to find the visual ones) come from it; returns None when it did not prune
        self.ids_source: Callable[[], torch.Tensor | None] | None = None
        self._cache: dict[int, dict[str, Any]] = {}

    # -- installation --------------------------------------------------------------------------
    def install(self) -> None:
        offset = getattr(self.policy, "rank_layer_offset", None)
        if offset not in (0, 1):
            raise ValueError(f"a policy's rank_layer_offset must be 0 or 1, got {offset!r}")
        handle = self.handle
        tf_compat.cache_keyword(self.language_model)
        install_attention(handle, attention_module(self.layers[0]).config)
        inner = self.adapter.inner(self.model)
        handle.add_hook(inner.register_forward_pre_hook(self._inner_hook, with_kwargs=True))
        lm = self.language_model
        handle.add_hook(lm.register_forward_pre_hook(self._lm_hook, with_kwargs=True))
        handle.add_hook(lm.register_forward_hook(self._lm_done))
        for stage, start in enumerate(self.stages):
            if self.policy.rank_layer_offset == 1:
                listen(handle, attention_module(self.layers[start - 1]), self._listener(stage))
        for layer_index in range(self.stages[0], len(self.layers)):
            hook = self._layer_hook(layer_index)
            handle.add_hook(
                self.layers[layer_index].register_forward_pre_hook(hook, with_kwargs=True)
            )
        handle.stats["method"] = handle.method

    def stage_of(self, layer_index: int) -> int:
        """0 for layers that see the whole prompt, ``s + 1`` for layers of stage ``s``."""
        return sum(1 for start in self.stages if start <= layer_index)

    # -- forward-level hooks -------------------------------------------------------------------
    def _inner_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None and self.ids_source is not None:
            ids = self.ids_source()
        self._pending_ids = ids if isinstance(ids, torch.Tensor) else None

    def _lm_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._cache = {}
        ids, self._pending_ids = self._pending_ids, None
        cache = tf_compat.kv_cache(kwargs)
        past = tf_compat.cached_length(cache)
        if past > 0:
            self.phase = "decode" if self.state is not None else "idle"
            return
        self.state, self.phase = None, "idle"
        embeds = kwargs.get("inputs_embeds")
        if ids is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            return
        length = ids.shape[1] if embeds is None else embeds.shape[1]
        if ids.shape[1] != length:
            return
        visual = self.adapter.visual_token_mask(self.model, ids)
        separator = separator_mask(self.model, self.adapter, embeds, visual)
        if separator is not None:
            visual = visual & ~separator.to(visual.device)
        if not bool(visual.any()):
            return
        if tf_compat.is_static_cache(cache):
            raise ValueError(
                "in-LLM pruning shortens the KV cache of later layers and needs a dynamic "
                "cache; generate with cache_implementation='dynamic' (the default)"
            )
        self.state = self._new_prefill(ids, visual, kwargs.get("attention_mask"))
        if separator is not None:
            self.state.sets[0].separator = separator.to(visual.device)
        self.phase = "prefill"
        if embeds is None:
            embeds = self.adapter.embed_tokens(self.model)(ids)
        with torch.no_grad():
            self.policy.begin(self.state, embeds)

    def _new_prefill(self, ids: torch.Tensor, visual: torch.Tensor, mask: Any) -> Prefill:
        batch, length = ids.shape
        device = ids.device
        padding = None
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.bool().all()):
            padding = ~mask.bool().to(device)
        positions = torch.arange(length, device=device)
        real = torch.ones_like(visual) if padding is None else ~padding
        last = (positions * real).argmax(dim=-1)
        index = positions.unsqueeze(0).expand(batch, -1).clone()
        tokens = Tokens(index=index, visual=visual, padding=padding, last=last)
        return Prefill(length=length, visual_before=visual.sum(-1), sets=[tokens])

    def _lm_done(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.phase == "prefill" and self.state is not None:
            if len(self.state.sets) == len(self.stages) + 1:
                inllm_stats.record(self, self.state)
            self.phase = "decode"

    # -- scoring -------------------------------------------------------------------------------
    def _listener(self, stage: int):
        def listener(
            module: nn.Module, query: torch.Tensor, key: torch.Tensor, mask: Any, _kwargs: dict
        ) -> None:
            state = self.state
            if self.phase != "prefill" or state is None or len(state.sets) != stage + 1:
                return
            tokens = state.sets[stage]
            if key.shape[2] != tokens.length or query.shape[2] != tokens.length:
                raise ValueError(
                    f"in-LLM pruning expected one prefill of {tokens.length} tokens at layer "
                    f"{self.stages[stage] - 1}, got queries {query.shape[2]} / keys "
                    f"{key.shape[2]}; chunked prefill is not supported"
                )
            with torch.no_grad():
                state.scored[stage] = self.policy.score(stage, module, query, key, tokens)

        return listener

    # -- layers --------------------------------------------------------------------------------
    def _layer_hook(self, layer_index: int):
        stage = self.stage_of(layer_index) - 1
        starts_stage = layer_index == self.stages[stage]

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
            state = self.state
            if state is None or self.phase not in ("prefill", "decode"):
                return None
            if self.phase == "prefill":
                if starts_stage:
                    args, kwargs = self._start_stage(stage, args, kwargs)
                updates = self._prefill_updates(stage, kwargs)
            else:
                updates = self._decode_updates(stage, kwargs)
            return args, {**kwargs, **updates}

        return hook

    def _start_stage(self, stage: int, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
        state = self.state
        hidden = args[0] if args else kwargs["hidden_states"]
        tokens = state.sets[stage]
        if len(state.sets) != stage + 1:
            raise RuntimeError(f"in-LLM pruning: stage {stage} started twice in one prefill")
        if hidden.shape[1] != tokens.length:
            raise RuntimeError(
                f"in-LLM pruning: expected {tokens.length} tokens entering layer "
                f"{self.stages[stage]}, got {hidden.shape[1]}"
            )
        if self.policy.rank_layer_offset == 0:
            self._score_stage_input(stage, hidden, kwargs)
        if stage not in state.scored:
            rank_layer = self.stages[stage] - self.policy.rank_layer_offset
            raise RuntimeError(
                f"in-LLM pruning: layer {rank_layer} did not report scores for stage {stage}; "
                "was the language model called layer by layer?"
            )
        with torch.no_grad():
            selection = self.policy.select(stage, state.scored.pop(stage), tokens, hidden, state)
        keep = selection.keep.to(hidden.device)
        new_hidden = gather_rows(hidden, keep)
        if selection.replace is not None and selection.replace.numel():
            index = (
                selection.replace.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            )
            new_hidden = new_hidden.scatter(1, index, selection.values.to(new_hidden.dtype))
        state.sets.append(next_tokens(tokens, selection))
        if args:
            return (new_hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new_hidden}

    def _score_stage_input(self, stage: int, hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
        """Score the current set with the first layer of the stage (``rank_layer_offset=0``):
        its ``q``/``k`` of the hidden states entering it, at the positions the layer before
        it used."""
        tokens = self.state.sets[stage]
        if stage == 0:
            embeddings = kwargs.get(tf_compat.POSITION_EMBEDDINGS)
        else:
            embeddings = self._prefill_updates(stage - 1, kwargs).get(tf_compat.POSITION_EMBEDDINGS)
        layer = self.layers[self.stages[stage]]
        with torch.no_grad():
            query, key = stage_query_key(layer, hidden, embeddings)
            module = attention_module(layer)
            self.state.scored[stage] = self.policy.score(stage, module, query, key, tokens)

    def _prefill_updates(self, stage: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        if stage in self._cache:
            return self._cache[stage]
        state = self.state
        tokens = state.sets[stage + 1]
        index, length = tokens.index, state.length
        updates: dict[str, Any] = {}
        if "attention_mask" in kwargs:
            mask = gather_mask(kwargs["attention_mask"], index, index)
            updates["attention_mask"] = causal_in_order(mask) if tokens.repeats else mask
        positions = gather_positions(kwargs.get("position_ids"), index, length)
        embeddings = kwargs.get(tf_compat.POSITION_EMBEDDINGS)
        if self.renumber:
            original = kwargs.get("position_ids")
            if not isinstance(original, torch.Tensor) or original.dim() != 2:
                raise ValueError("renumber=True needs 1-D position ids in the decoder layers")
            # every dropped token precedes the tokens after it, so a kept token moves down by
            # the number of tokens dropped before it (and up by those inserted before it: an
            # inserted token repeats the position of the one it follows, and gets the next)
            dropped_before = index - torch.arange(index.shape[1], device=index.device)
            positions = gather_positions(original, index, length) - dropped_before.to(
                original.device
            )
            while len(state.positions) <= stage:
                state.positions.append(None)
                state.shifts.append(0)
            state.positions[stage] = positions
            state.shifts[stage] = length - tokens.length
            if embeddings is not None:
                embeddings = self._rotary(embeddings, positions)
        elif embeddings is not None:
            embeddings = tuple(gather_rows(part, index) for part in embeddings)
        if "position_ids" in kwargs:
            updates["position_ids"] = positions
        if embeddings is not None:
            updates[tf_compat.POSITION_EMBEDDINGS] = embeddings
        self._cache[stage] = updates
        return updates

    def _decode_updates(self, stage: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        if stage in self._cache:
            return self._cache[stage]
        state = self.state
        kept = state.sets[stage + 1].index
        updates: dict[str, Any] = {}
        mask = kwargs.get("attention_mask")
        if mask is not None:
            total = mask.shape[-1]
            new = torch.arange(state.length, total, device=kept.device)
            columns = torch.cat([kept, new.unsqueeze(0).expand(kept.shape[0], -1)], dim=1)
            updates["attention_mask"] = gather_mask(mask, None, columns)
        if self.renumber:
            positions = kwargs.get("position_ids")
            if not isinstance(positions, torch.Tensor) or positions.dim() != 2:
                raise ValueError("renumber=True needs 1-D position ids in the decoder layers")
            positions = positions - state.shifts[stage]
            updates["position_ids"] = positions
            embeddings = kwargs.get(tf_compat.POSITION_EMBEDDINGS)
            if embeddings is not None:
                updates[tf_compat.POSITION_EMBEDDINGS] = self._rotary(embeddings, positions)
        self._cache[stage] = updates
        return updates

    def _rotary(self, embeddings: tuple, positions: torch.Tensor) -> tuple:
        rotary = getattr(self.language_model, "rotary_emb", None)
        if rotary is None:
            raise ValueError("renumber=True needs the language model's rotary_emb module")
        cos = embeddings[0]
        probe = cos.new_empty(positions.shape[0], positions.shape[1], 1)
        return rotary(probe, positions.to(cos.device))

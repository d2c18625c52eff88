"""See the post-RoPE queries and keys of one ViT attention module, without eager attention.

A handle points the vision config at the :class:`~leanvision.vlm.attention_tap.AttentionTap`
``"leanvision_capture"`` (restored on remove), which hands every call on to the implementation
configured before and, while :func:`listening` is active for a module, first gives that
module's ``q``/``k`` to a listener. Scores are then computed with
``leanvision.kernels.attention_scores``, which never materialises the attention matrix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from leanvision.compat import transformers as tf_compat
from leanvision.kernels import attention_scores
from leanvision.vlm.attention_tap import AttentionTap, Listener

VISION_TAP = AttentionTap("leanvision_capture")


def install_capture(handle: Any, attention: nn.Module) -> None:
    """Route ``attention``'s config through the capture function until ``handle`` is removed.

    Raises ``ValueError`` when the module's current implementation cannot be delegated to.
    """
    config = attention.config
    original = tf_compat.attn_implementation(config)
    registered = tf_compat.attention_functions()
    if original == VISION_TAP.name:
        return  # another capture on the same config (several modules share one config)
    if original == "eager":
        if tf_compat.eager_attention(attention) is None:
            raise ValueError(
                f"{type(attention).__name__} uses eager attention without an AttentionInterface "
                "function; set attn_implementation='sdpa' on the vision tower"
            )
    elif original not in registered:
        raise ValueError(
            f"vision attn_implementation={original!r} is not registered in transformers' "
            f"AttentionInterface; use one of {['eager', *registered.valid_keys()]}"
        )
    VISION_TAP.install(handle, config, original)


@contextlib.contextmanager
def listening(module: nn.Module, listener: Listener) -> Iterator[None]:
    """Call ``listener`` with the q/k of every attention call of ``module`` inside the block."""
    stop = VISION_TAP.listen(module, listener)
    try:
        yield
    finally:
        stop()


def key_padding_from_mask(attention_mask: Any, batch: int, length: int) -> torch.Tensor | None:
    """``(B, Lk)`` bool, True where a key is padding, from a 4-D additive or bool mask."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4:
        return None
    mask = attention_mask[..., -length:]
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    allowed = allowed.any(dim=(1, 2))  # a key is real if any query may attend to it
    if bool(allowed.all()):
        return None
    return (~allowed).expand(batch, length)


class ScoreRecorder:
    """Listener that turns each attention call into per-key scores and keys.

    ``records`` holds, per call and per sequence, ``(scores (N,), keys (N, d))`` (either may be
    ``None`` when not requested). Sequences packed with ``cu_seq_lens_q`` (flash attention)
    are split back into one record each. ``heads="mean"``: per-head softmaxes averaged, keys
    averaged over heads; ``heads="concat"``: one softmax over the logits of the concatenated
    heads (``q . k`` over ``heads * head_dim``, scaled by its ``-1/2`` power), keys
    concatenated over heads (``d = heads * head_dim``).
    """

    def __init__(self, query: str, want_scores: bool, want_keys: bool, heads: str = "mean"):
        if heads not in ("mean", "concat"):
            raise ValueError(f"heads={heads!r} is not allowed; choose one of mean, concat")
        self.query = query  # "cls" or "all"
        self.want_scores = want_scores
        self.want_keys = want_keys
        self.heads = heads
        self.records: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []

    def __call__(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: Any,
        kwargs: dict[str, Any],
    ) -> None:
        cu_seqlens = kwargs.get(tf_compat.PACKED_QUERY_BOUNDS)
        if cu_seqlens is not None and query.shape[0] == 1:
            bounds = cu_seqlens.tolist()
            for start, end in zip(bounds[:-1], bounds[1:], strict=True):
                self._record(module, query[:, :, start:end], key[:, :, start:end], None)
        else:
            self._record(module, query, key, attention_mask)

    @torch.no_grad()
    def _record(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, mask: Any) -> None:
        batch, _heads, length, _dim = key.shape
        if self.heads == "concat":
            if key.shape[1] != query.shape[1]:  # grouped keys: one per query head
                key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            query, key = _concat_heads(query), _concat_heads(key)  # (B, 1, L, H * d)
        scores = None
        if self.want_scores:
            padding = key_padding_from_mask(mask, batch, length)
            if self.heads == "concat":
                scores = _one_head_scores(query, key, self.query == "cls", padding)
            else:
                index = None
                if self.query == "cls":
                    index = torch.zeros(batch, 1, dtype=torch.long, device=query.device)
                scale = getattr(module, "scaling", None) or getattr(module, "scale", None)
                scores = attention_scores(
                    query, key, scale=scale, query_index=index, key_padding_mask=padding
                )
        keys = key.float().mean(1) if self.want_keys else None
        for row in range(batch):
            self.records.append(
                (None if scores is None else scores[row], None if keys is None else keys[row])
            )


def _concat_heads(states: torch.Tensor) -> torch.Tensor:
    """``(B, H, L, d)`` -> ``(B, 1, L, H * d)``: the projection's output before the head split."""
    batch, heads, length, dim = states.shape
    return states.transpose(1, 2).reshape(batch, 1, length, heads * dim)


def _one_head_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    cls_only: bool,
    padding: torch.Tensor | None,
    rows_per_chunk: int = 256,
) -> torch.Tensor:
    """``(B, L)`` softmax attention each key receives from one wide head ``(B, 1, L, C)``
    (scale ``C**-0.5``): the CLS row, or the mean over all rows, ``rows_per_chunk`` rows at a
    time (``attention_scores`` takes head widths up to 256; this is O(rows_per_chunk x L))."""
    query, key = query[:, 0].float(), key[:, 0].float()
    scale = query.shape[-1] ** -0.5
    rows = query[:, :1] if cls_only else query
    total = torch.zeros(key.shape[0], key.shape[1], device=key.device)
    for start in range(0, rows.shape[1], rows_per_chunk):
        logits = (rows[:, start : start + rows_per_chunk] @ key.transpose(1, 2)) * scale
        if padding is not None:
            logits = logits.masked_fill(padding[:, None, :], float("-inf"))
        total += torch.nan_to_num(logits.softmax(dim=-1)).sum(1)
    return total / rows.shape[1]

"""What leanvision needs to know about one VLM family, as data plus a small ``splice()``.

An adapter answers "where is X" for one transformers model family, so that methods never test
``isinstance`` against model classes (DESIGN rule 3). Every accessor takes the *outer* model
(``...ForConditionalGeneration``), the one users call ``generate`` on.

Accessors (stable API, used by pre-LLM methods here and by in-LLM methods in ``vlm.inllm``):

==============================  ============================================================
``inner(model)``                the module whose forward receives ``input_ids``/``pixel_values``
                                (``model.model``); pre-LLM methods hook its forward.
``language_model(model)``       the decoder stack (``LlamaModel``/``Qwen2VLTextModel``...).
``decoder_layers(model)``       its ``nn.ModuleList`` of decoder layers.
``lm_head(model)``              the output projection.
``embed_tokens(model)``         the input embedding.
``text_config(model)``          the language model's config (depth, width, heads).
``vision_tower(model)``         the vision encoder; ``vision_layers(model)`` its blocks and
                                ``vision_attention(model, i)`` block ``i``'s attention module.
``projector(model)``            the vision->text projector (merger / connector).
``image_token_id(model)``       placeholder id of image tokens.
``video_token_id(model)``       placeholder id of video tokens, ``None`` for image-only models.
``visual_token_mask(model, ids)`` bool ``(B, L)``: positions holding image or video tokens.
``mrope``                       ``True`` for Qwen2-VL/2.5-VL: positions are ``(3, B, L)``.
``has_cls(model)``              whether the ViT has a CLS token (CLIP yes, SigLIP no).
``global_vision_layers(model)`` ViT blocks with global attention (Qwen2.5: the
                                ``fullatt_block_indexes``; others: all blocks).
``prefill_position_ids(model, input_ids, attention_mask, **mm)``
                                the prompt's position ids as ``generate`` computes them:
                                ``(B, L)`` = ``cumsum(mask) - 1`` for 1-D RoPE, or ``(3, B, L)``
                                from ``model.model.get_rope_index`` for M-RoPE; returned with
                                ``rope_deltas`` ``(B, 1)`` (``None`` for 1-D RoPE). A decode
                                step at text position ``p`` (``cumsum(mask) - 1``) has M-RoPE
                                position ``p + rope_deltas`` on all three axes.
``encode(model, inputs, request)`` runs the vision path of one prefill and returns one
                                :class:`VisualSegment` per image/crop/video, in the order the
                                placeholders appear, with scores and keys when requested.
==============================  ============================================================

>>> from leanvision.testing import tiny_llava
>>> from leanvision.vlm import get_adapter
>>> adapter = get_adapter(tiny_llava().model)
>>> adapter.name, adapter.mrope
('llava', False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


@dataclasses.dataclass
class ScoreRequest:
    """What a method needs from the vision tower besides the projected features.

    ``layer``: ViT block whose attention is read (negative counts from the end).
    ``query``: ``"cls"`` (attention the CLS token gives each patch), ``"all"`` (attention each
    patch receives, averaged over all queries) or ``"auto"`` (CLS when the ViT has one).
    ``heads``: ``"mean"`` (one softmax per head, averaged; keys averaged over heads) or
    ``"concat"`` (ONE softmax over logits of the concatenated heads, ``q . k`` over
    ``heads * head_dim`` scaled by its ``-1/2`` power; keys concatenated over heads).
    ``scores``/``keys``: whether to compute them at all.
    ``vision``: the pre-projector features and the projector, so merges happen before it.
    ``cls``: the pre-projector CLS feature of a tower whose CLS the model drops.
    """

    layer: int = -2
    query: str = "auto"
    scores: bool = False
    keys: bool = False
    heads: str = "mean"
    vision: bool = False
    cls: bool = False


@dataclasses.dataclass
class VisualSegment:
    """One run of visual placeholders as the LLM sees it: an image, a crop or a video.

    ``features``: ``(n, D)`` projected features, in placeholder order.
    ``kind``: ``"image"`` or ``"video"`` (which placeholder id the run uses).
    ``grid``: ``(h, w)`` or ``(t, h, w)`` when the ``n`` tokens (less the ``fixed`` ones) are
    exactly that raster (row-major, frame-major), else ``None`` (e.g. LLaVA-NeXT's unpadded
    crops).
    ``scores``: ``(n,)`` float32 attention score per token (higher = more important), newline
    tokens get ``-inf``. ``keys``: ``(n, d)`` ViT keys (mean over heads, or concatenated) for
    similarity.
    ``frames``: number of frames for videos (tokens of frame ``f`` are
    ``frame_slices[f]``), else 1.
    ``fixed``: ``(n,)`` bool, True at tokens no method may drop or merge (image newlines);
    ``None`` when there are none.
    ``vision``: ``(n, Dv)`` pre-projector features with ``project`` (``(k, Dv) -> (k, D)``,
    token-wise) when the projector can be applied to merged tokens; ``None`` otherwise.
    ``cls``: ``(Dv,)`` pre-projector CLS feature the model dropped (``"default"`` feature
    strategy), when requested; ``(crops, Dv)`` with ``crops``.
    ``crops``: ``(n,)`` long, the anyres crop each token comes from (``-1`` for fixed
    tokens), for methods that budget per crop (VisionZip); ``None`` otherwise.
    ``reorder``: set by the prefill hook: positions are renumbered, so a method may emit its
    tokens in its own order (they fill the run's first placeholders).
    """

    features: torch.Tensor
    kind: str = "image"
    grid: tuple[int, ...] | None = None
    scores: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    frame_slices: list[slice] | None = None
    fixed: torch.Tensor | None = None
    vision: torch.Tensor | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None
    cls: torch.Tensor | None = None
    crops: torch.Tensor | None = None
    reorder: bool = False

    @property
    def num_tokens(self) -> int:
        return int(self.features.shape[0])


class VLMAdapter:
    """Facts about one VLM family. Subclasses set the class attributes and ``encode``.

    Methods read a model only through its adapter (:func:`leanvision.vlm.get_adapter`):
    where the vision tower, projector and decoder layers are, the placeholder token ids,
    positions (1-D or M-RoPE), and ``encode`` (pixels -> one :class:`VisualSegment` of
    ``(tokens, hidden)`` features per image, crop set or video).

    >>> from leanvision.testing import tiny_llava
    >>> from leanvision.vlm import get_adapter
    >>> tiny = tiny_llava()
    >>> adapter = get_adapter(tiny.model)
    >>> adapter.name, adapter.tokens_per_image(tiny.model), len(adapter.decoder_layers(tiny.model))
    ('llava', 64, 2)
    """

    name: str = ""
    model_types: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    mrope: bool = False
    supports_video: bool = False
    language_attr: str = "language_model"
    vision_attr: str = "vision_tower"
    projector_attr: str = "multi_modal_projector"
    # kwargs of the inner forward that belong to the vision path and must not reach it again
    # once a pre-LLM method has built ``inputs_embeds``
    vision_kwargs: tuple[str, ...] = ("pixel_values", "image_sizes")

    # -- where things are -------------------------------------------------------------------
    def inner(self, model: nn.Module) -> nn.Module:
        return model.model

    def language_model(self, model: nn.Module) -> nn.Module:
        return getattr(self.inner(model), self.language_attr)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layers

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.lm_head

    def embed_tokens(self, model: nn.Module) -> nn.Module:
        return self.inner(model).get_input_embeddings()

    def text_config(self, model: nn.Module) -> Any:
        return model.config.text_config

    def vision_config(self, model: nn.Module) -> Any:
        return model.config.vision_config

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return getattr(self.inner(model), self.vision_attr)

    def projector(self, model: nn.Module) -> nn.Module:
        return getattr(self.inner(model), self.projector_attr)

    def vision_layers(self, model: nn.Module) -> nn.ModuleList:
        tower = self.vision_tower(model)
        tower = getattr(tower, "vision_model", tower)
        return tower.encoder.layers

    def vision_attention(self, model: nn.Module, index: int) -> nn.Module:
        return self.vision_layers(model)[index].self_attn

    def has_cls(self, model: nn.Module) -> bool:
        return False

    def global_vision_layers(self, model: nn.Module) -> list[int]:
        return list(range(len(self.vision_layers(model))))

    def default_score_layer(self, model: nn.Module) -> int:
        """The late ViT block whose attention VisionZip reads by default (PruMerge+ reads the
        last block, ``layer=-1``)."""
        return self.global_vision_layers(model)[-1]

    def image_token_id(self, model: nn.Module) -> int:
        config = model.config
        value = getattr(config, "image_token_id", None)
        if value is None:
            value = config.image_token_index
        return int(value)

    def video_token_id(self, model: nn.Module) -> int | None:
        if not self.supports_video:
            return None
        config = model.config
        value = getattr(config, "video_token_id", None)
        if value is None:
            value = getattr(config, "video_token_index", None)
        return None if value is None else int(value)

    def tokens_per_image(self, model: nn.Module) -> int | None:
        """Nominal visual tokens per image (or per video frame), ``None`` when it varies."""
        return None

    def visual_token_mask(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids == self.image_token_id(model)
        video = self.video_token_id(model)
        if video is not None:
            mask |= input_ids == video
        return mask

    # -- positions ---------------------------------------------------------------------------
    def prefill_position_ids(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **mm_inputs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Position ids of the prompt as ``generate`` computes them, and M-RoPE deltas.

        1-D RoPE: ``(B, L)``, ``cumsum(mask) - 1`` (padding gets 1), deltas ``None``.
        """
        return text_position_ids(input_ids, attention_mask), None

    # -- vision path -------------------------------------------------------------------------
    def encode(
        self, model: nn.Module, inputs: dict[str, Any], request: ScoreRequest
    ) -> list[VisualSegment]:
        """Run the vision tower + projector for one prefill (``inputs`` = the inner forward's
        keyword arguments) and split the result into segments in placeholder order."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        """Raise ``UnsupportedModelError`` when the instance lacks the expected layout."""
        from leanvision.core.errors import UnsupportedModelError
        from leanvision.vlm.adapters import supported_families

        try:
            self.language_model(model)
            self.vision_layers(model)
            self.lm_head(model)
        except AttributeError as error:
            # e.g. the inner ``model.model``: name every family, and that the outer model is due
            families = [f"{line}, the outer model" for line in supported_families()]
            raise UnsupportedModelError(model, families, family="vlm") from error


def text_position_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(B, L)`` positions counting only attended tokens; padding gets 1 (as HF does).

    >>> text_position_ids(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, 1, 1, 1]]))
    tensor([[1, 0, 1, 2]])
    """
    batch, length = input_ids.shape[:2]
    if attention_mask is None:
        positions = torch.arange(length, device=input_ids.device)
        return positions.unsqueeze(0).expand(batch, -1).clone()
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


@dataclasses.dataclass
class Spliced:
    """A pruned prefill: what the language model receives instead of the original prompt.

    ``kept_index``: ``(B, L')`` original position of each kept token, ``-1`` for padding
    added because rows lost different numbers of tokens.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    kept_index: torch.Tensor


def splice(
    embeddings: torch.Tensor,
    placeholder_masks: dict[str, torch.Tensor],
    segments: list[VisualSegment],
    kept: list[tuple[torch.Tensor, torch.Tensor]],
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
) -> Spliced:
    """Write each segment's kept features over its placeholders and drop the others.

    ``embeddings``: ``(B, L, D)`` token embeddings of the original prompt.
    ``placeholder_masks``: ``{"image": (B, L) bool, "video": ...}``; segments of one kind fill
    that kind's placeholders in row-major order (as ``masked_scatter`` in transformers does).
    ``kept[i]``: ``(anchors, features)`` for segment ``i``: sorted indices into the segment's
    tokens that stay (each output token sits at its anchor's original position) and their
    ``(k, D)`` features. ``position_ids``: ``(B, L)`` or ``(R, B, L)`` positions to gather.
    Rows that lose different numbers of tokens are re-padded on the side the prompt was padded.

    >>> emb = torch.zeros(1, 4, 2); mask = torch.tensor([[False, True, True, False]])
    >>> seg = VisualSegment(features=torch.ones(2, 2))
    >>> out = splice(emb, {"image": mask}, [seg], [(torch.tensor([1]), torch.ones(1, 2))],
    ...              None, torch.arange(4)[None])
    >>> out.kept_index.tolist(), out.position_ids.tolist()
    ([[0, 2, 3]], [[0, 2, 3]])
    """
    batch, length, _ = embeddings.shape
    device = embeddings.device
    keep = torch.ones(batch, length, dtype=torch.bool, device=device)
    embeddings = embeddings.clone()
    cursor: dict[str, int] = {}
    for segment, (anchors, features) in zip(segments, kept, strict=True):
        where = placeholder_masks[segment.kind].nonzero()  # (n_total, 2) row-major
        start = cursor.get(segment.kind, 0)
        span = where[start : start + segment.num_tokens]
        cursor[segment.kind] = start + segment.num_tokens
        if span.shape[0] != segment.num_tokens or bool((span[:, 0] != span[0, 0]).any()):
            raise ValueError(
                f"{segment.kind} features ({segment.num_tokens} tokens) do not fit one run of "
                f"{segment.kind} placeholder tokens in input_ids; pass one placeholder per "
                "feature token, as the model's processor does"
            )
        row, columns = int(span[0, 0]), span[:, 1]
        keep[row, columns] = False
        anchors = anchors.to(device)
        keep[row, columns[anchors]] = True
        embeddings[row, columns[anchors]] = features.to(embeddings.dtype)
    for kind, mask in placeholder_masks.items():
        if cursor.get(kind, 0) != int(mask.sum()):
            raise ValueError(
                f"input_ids hold {int(mask.sum())} {kind} placeholder tokens but the "
                f"{kind} inputs produce {cursor.get(kind, 0)} features"
            )
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=device)
    counts = keep.sum(-1)
    new_length = int(counts.max())
    left_padded = bool((attention_mask[:, -1] == 1).all()) and bool(
        (attention_mask[:, 0] == 0).any()
    )
    kept_index = torch.full((batch, new_length), -1, dtype=torch.long, device=device)
    for row in range(batch):
        index = keep[row].nonzero().squeeze(-1)
        if left_padded:
            kept_index[row, new_length - index.numel() :] = index
        else:
            kept_index[row, : index.numel()] = index
    valid = kept_index >= 0
    safe = kept_index.clamp(min=0)
    new_embeds = torch.gather(
        embeddings, 1, safe.unsqueeze(-1).expand(-1, -1, embeddings.shape[-1])
    )
    new_embeds = new_embeds * valid.unsqueeze(-1).to(new_embeds.dtype)
    new_mask = torch.gather(attention_mask, 1, safe) * valid.to(attention_mask.dtype)
    if position_ids.dim() == 2:
        new_positions = torch.gather(position_ids, 1, safe).masked_fill(~valid, 1)
    else:
        index = safe.unsqueeze(0).expand(position_ids.shape[0], -1, -1)
        new_positions = torch.gather(position_ids, 2, index).masked_fill(~valid.unsqueeze(0), 1)
    return Spliced(new_embeds, new_mask, new_positions, kept_index)

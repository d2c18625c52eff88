"""``tome``: Token Merging inside the vision tower (Bolya et al., "Token Merging: Your ViT But
Faster", ICLR 2023), for the CLIP/SigLIP towers of LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision and
Idefics3/SmolVLM.

In every ViT block up to the one the features come from, between attention and MLP, ``r``
tokens are merged away by bipartite soft matching: the tokens are split alternately into A
(even positions) and B (odd), each A token is linked to the B token whose key (that block's
keys, mean over heads) is the most cosine-similar, and the ``r`` best-linked A tokens are
folded into their partners as size-weighted means. The CLS token is never merged. Every later
block adds ``log(size)`` to the attention logits of each key (proportional attention), passed
as an additive attention mask, so eager and SDPA attention both take it.

The blocks are patched with hooks on the instance (block, ``k_proj``, ``layer_norm2``,
``mlp``), never a copied forward: ``layer_norm2`` receives ``x + attn(...)`` and hands on the
merged tokens, and the block's output becomes ``merged + mlp(...)``. At the feature block's
output every original token takes its group's merged value again ("unmerge"), so the tower
keeps the layout the projector and the model's packing expect. A per-token projector's outputs
are then made exact copies within each group, and the prefill keeps, in each image segment,
the first token of every group (its first position in placeholder order). Where the LLM token
mixes several patches (Idefics3's pixel shuffle, OneVision's video pooling) no copy survives
to the prompt: the language model sees every token and only the ViT is cheaper.

>>> merge_schedule(577, protected=1, blocks=23, target=64)[:4]
[23, 23, 23, 23]
>>> Tome(r=8).schedule(577, protected=1, blocks=3)
[8, 8, 8]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import nn

from leanvision.compat import transformers as tf_compat
from leanvision.core.config import check_range
from leanvision.core.errors import UnsupportedModelError
from leanvision.vlm.adapters.base import ScoreRequest, VisualSegment, VLMAdapter
from leanvision.vlm.budget import BudgetConfig, too_many_tokens
from leanvision.vlm.capture import key_padding_from_mask
from leanvision.vlm.prefill import install_prefill
from leanvision.vlm.registry import METHODS
from leanvision.vlm.scorers import NO_REQUEST, Unit
from leanvision.vlm.tome_matching import (
    bipartite_plan,
    constant_schedule,
    first_of_group,
    merge_by_size,
    merge_schedule,
)

# Block layout of the CLIP / SigLIP / Idefics3 encoder layers the hooks rely on (pre-norm:
# ``layer_norm2`` receives ``x + attn(layer_norm1(x))``, the block returns that + ``mlp(...)``).
ATTENTION, KEYS, HEADS = "self_attn", "k_proj", "num_heads"
NORM_BEFORE_MLP, MLP = "layer_norm2", "mlp"
# attention implementations that add a float ``attention_mask`` to the logits
BIAS_ATTENTION = ("eager", "sdpa")
TOWERS = ("llava, llava_next (CLIP)", "llava_onevision, idefics3/smolvlm (SigLIP)")


@dataclasses.dataclass
class Tome(BudgetConfig):
    """ToMe: merge similar tokens inside every ViT block, with proportional attention.

    Merges tokens inside every ViT block up to the feature block, with proportional
    attention. ``r``: tokens merged away per block (ToMe's r; at most half the unprotected
    tokens, as in the paper). Or ``tokens``/``keep``: tokens left per ViT input (image or crop,
    CLS not counted) after the feature block, reached by an even per-block schedule. Neither:
    ``keep=0.25``. The language model sees one token per group where the projector is
    per-token (LLaVA, LLaVA-NeXT, OneVision images). ``handle.stats`` adds
    ``vit_tokens_per_block`` (tokens entering block 0, then after each merging block) and
    ``merge_schedule`` (tokens merged per block) of the last tower forward.

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "tome", keep=0.5) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["vit_tokens_per_block"], handle.stats["tokens_after"]  # CLS + 64 patches
    ([65, 33], [32])
    """

    r: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.r is not None:
            if isinstance(self.r, bool) or not isinstance(self.r, int):
                raise TypeError(f"r must be an int (tokens merged per ViT block), got {self.r!r}")
            check_range("r", self.r, low=0)
            if self.tokens is not None or self.keep is not None:
                raise ValueError(
                    "pass r= (tokens merged in each ViT block) or tokens=/keep= (tokens left "
                    f"per image), not both (got r={self.r}, tokens={self.tokens}, "
                    f"keep={self.keep})"
                )

    def schedule(self, tokens: int, protected: int, blocks: int) -> list[int]:
        """Tokens merged in each of ``blocks`` ViT blocks for an input of ``tokens`` tokens,
        ``protected`` of them (CLS) never merged. Raises ``ValueError`` when the budget cannot
        be reached (each block removes at most half of the unprotected tokens)."""
        if self.r is not None:
            return constant_schedule(tokens, protected, blocks, self.r)
        return merge_schedule(tokens, protected, blocks, self.budget(tokens - protected))

    def check_model(self, model: Any, adapter: VLMAdapter) -> None:
        layers, last = tower_blocks(model, adapter)
        config = getattr(layers[0], ATTENTION).config
        implementation = tf_compat.attn_implementation(config)
        if implementation not in BIAS_ATTENTION:
            raise ValueError(
                f"'tome' adds log(token size) to the vision tower's attention logits, which "
                f"needs vision attn_implementation in {list(BIAS_ATTENTION)}; this tower uses "
                f"{implementation!r}"
            )
        vision = adapter.vision_config(model)
        size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
        if not (isinstance(size, int) and isinstance(patch, int)):
            return  # no nominal size: the schedule is checked at the first forward
        protected = int(adapter.has_cls(model))
        patches = (size // patch) ** 2
        if self.tokens is not None and self.tokens > patches:
            raise too_many_tokens(self.tokens, patches, "ViT input", adapter.name)
        self.schedule(patches + protected, protected, last + 1)

    def compress_unit(self, unit: Unit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(
            "'tome' merges inside the vision tower and cannot compress another method's tokens "
            "(then=); apply it on its own"
        )


def tower_blocks(model: nn.Module, adapter: VLMAdapter) -> tuple[nn.ModuleList, int]:
    """The ViT blocks and the index of the block whose output the features are.

    Raises :class:`leanvision.UnsupportedModelError` for towers whose blocks are not batched
    pre-norm CLIP/SigLIP encoder layers (Qwen-VL packs all images into one windowed sequence),
    and ``ValueError`` for features concatenated from several blocks.
    """
    feature_layer = getattr(model.config, "vision_feature_layer", None)
    if isinstance(feature_layer, (list, tuple)) and len(set(feature_layer)) > 1:
        raise ValueError(
            f"'tome' needs features from one ViT block; vision_feature_layer={feature_layer} "
            "concatenates several, whose merged layouts differ"
        )
    layers = adapter.vision_layers(model)
    last = adapter.default_score_layer(model)
    for layer in layers[: last + 1]:
        attention = getattr(layer, ATTENTION, None)
        if not (
            isinstance(getattr(attention, KEYS, None), nn.Linear)
            and isinstance(getattr(attention, HEADS, None), int)
            and isinstance(getattr(layer, NORM_BEFORE_MLP, None), nn.Module)
            and isinstance(getattr(layer, MLP, None), nn.Module)
        ):
            raise UnsupportedModelError(
                adapter.vision_tower(model),
                TOWERS,
                what="vision tower for 'tome' (merging inside batched CLIP/SigLIP blocks)",
            )
    return layers, last


# -- one merge step ----------------------------------------------------------------------------
def keep_first_copies(
    features: torch.Tensor, group_values: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchors, features)``: ``features`` ``(n, D)`` without the later copies of any
    value in ``group_values`` (projected ToMe groups); other repeats (newlines) stay."""
    everything = torch.arange(features.shape[0], device=features.device)
    if not group_values:
        return everything, features
    classes, inverse, counts = torch.unique(
        features, dim=0, return_inverse=True, return_counts=True
    )
    repeated = (counts > 1).nonzero().squeeze(-1)
    if repeated.numel() == 0:
        return everything, features
    values = torch.cat(group_values).to(features.device, features.dtype)
    ids = torch.unique(torch.cat([values, classes[repeated]]), dim=0, return_inverse=True)[1]
    is_group = torch.isin(ids[values.shape[0] :], ids[: values.shape[0]])
    copies = torch.zeros(classes.shape[0], dtype=torch.bool, device=features.device)
    copies[repeated[is_group]] = True
    first = torch.full((classes.shape[0],), features.shape[0], device=features.device)
    first.scatter_reduce_(0, inverse, everything, reduce="amin")
    anchors = (~copies[inverse] | (first[inverse] == everything)).nonzero().squeeze(-1)
    return anchors, features[anchors]


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    return (value, *output[1:]) if isinstance(output, tuple) else value


# -- hooks -------------------------------------------------------------------------------------
class TowerMerge:
    """The hooks' state for one handle (one tower forward at a time), and what the prefill
    needs from a config (``score_request``, ``compress_segment``, ``resolve_renumber``)."""

    def __init__(self, config: Tome, last: int, protected: bool, handle: Any):
        self.config = config
        self.last = last
        self.protected = protected
        self.handle = handle
        self.group_values: list[torch.Tensor] = []  # projected groups since the prompt began
        self.groups: torch.Tensor | None = None  # (rows, N) of the last forward, unconsumed
        self._start(None)

    def _start(self, hidden: torch.Tensor | None) -> None:
        self.sizes: torch.Tensor | None = None  # (B, t) original tokens per current token
        self.group: torch.Tensor | None = None  # (B, N) current token of each original one
        self.metric: torch.Tensor | None = None
        self.pending: tuple[torch.Tensor, torch.Size] | None = None
        self.update: torch.Tensor | None = None
        self.counts: list[int] = []
        self.schedule: list[int] = []
        if hidden is not None:
            length = hidden.shape[1]
            self.schedule = self.config.schedule(length, int(self.protected), self.last + 1)
            self.counts = [length]

    # prefill protocol
    def score_request(self, default_layer: int) -> ScoreRequest:
        return NO_REQUEST

    def resolve_renumber(self, adapter: VLMAdapter) -> bool:
        return self.config.resolve_renumber(adapter)

    def compress_segment(self, segment: VisualSegment) -> tuple[torch.Tensor, torch.Tensor]:
        return keep_first_copies(segment.features, self.group_values)

    def new_prompt(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.group_values = []

    # ViT block hooks
    def before_block(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        if index == 0:
            if key_padding_from_mask(mask, hidden.shape[0], hidden.shape[1]) is not None:
                raise ValueError(
                    "'tome' needs every patch of a ViT input to be real; this input has padded "
                    "patches (pixel_attention_mask), which merging would mix into real ones"
                )
            self._start(hidden)
        if self.sizes is None:
            return None
        bias = self.sizes.log().to(hidden.dtype)[:, None, None, :]  # (B, 1, 1, t) per key
        if len(args) > 1:
            return (args[0], bias, *args[2:]), kwargs
        return args, {**kwargs, "attention_mask": bias}

    def keys(self, heads: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        batch, length, _ = output.shape
        self.metric = output.detach().view(batch, length, heads, -1).mean(2)

    def before_mlp(self, index: int, module: nn.Module, args: tuple) -> Any:
        hidden = args[0]
        step = bipartite_plan(self.metric, self.schedule[index], bool(self.protected))
        self.metric = None
        if step is None:
            self.counts.append(hidden.shape[1])
            return None
        plan, length = step
        merged, self.sizes = merge_by_size(hidden, self.sizes, plan, length)
        if self.group is None:
            self.group = plan
        else:
            self.group = plan.gather(1, self.group)
        self.pending = (merged, hidden.shape)
        self.counts.append(merged.shape[1])
        return (merged, *args[1:])

    def after_mlp(self, module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        if self.pending is None:
            return None
        merged, shape = self.pending
        self.pending = None
        self.update = merged + output
        # the block adds this to its unmerged residual; ``after_block`` discards that sum
        return output.new_zeros(()).expand(shape)

    def after_block(self, index: int, module: nn.Module, args: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if self.update is not None:
            hidden, self.update = self.update, None
        if index == self.last:
            self.handle.stats["vit_tokens_per_block"] = self.counts
            self.handle.stats["merge_schedule"] = self.schedule
            self.groups = self.group
            if self.group is not None:  # unmerge: each original token takes its group's value
                width = hidden.shape[-1]
                hidden = hidden.gather(1, self.group.unsqueeze(-1).expand(-1, -1, width))
            self._start(None)
        return _replace_first(output, hidden)

    def after_projector(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Make a per-token projector's outputs exact copies within each group and record
        each group's value once (what ``compress_segment`` keeps one of)."""
        groups, self.groups = self.groups, None
        inputs = args[0] if args else None
        if groups is None or not torch.is_tensor(inputs) or not torch.is_tensor(output):
            return None
        if output.dim() != 3 or output.shape[:2] != inputs.shape[:2]:
            return None  # not per-token (pixel shuffle): no LLM token copies one group
        if inputs.shape[0] != groups.shape[0]:
            return None
        dropped = groups.shape[1] - inputs.shape[1]
        if dropped == 1 and self.protected:
            groups = groups[:, 1:]  # the CLS token (its own group) is not a feature
        elif dropped != 0:
            return None
        first = first_of_group(groups)
        copies = output.gather(1, first.unsqueeze(-1).expand(-1, -1, output.shape[-1]))
        own = first == torch.arange(groups.shape[1], device=groups.device)
        self.group_values.append(copies[own].detach())
        return copies


def install_tome(model: nn.Module, config: Tome, handle: Any, adapter: VLMAdapter) -> TowerMerge:
    """Hook the ViT blocks up to the feature block, the projector and the prefill."""
    layers, last = tower_blocks(model, adapter)
    run = TowerMerge(config, last, adapter.has_cls(model), handle)
    for index, layer in enumerate(layers[: last + 1]):
        attention = getattr(layer, ATTENTION)
        hooks = (
            layer.register_forward_pre_hook(
                functools.partial(run.before_block, index), with_kwargs=True
            ),
            getattr(attention, KEYS).register_forward_hook(
                functools.partial(run.keys, getattr(attention, HEADS))
            ),
            getattr(layer, NORM_BEFORE_MLP).register_forward_pre_hook(
                functools.partial(run.before_mlp, index)
            ),
            getattr(layer, MLP).register_forward_hook(run.after_mlp),
            # first among the block's forward hooks: transformers records hidden states there
            layer.register_forward_hook(functools.partial(run.after_block, index), prepend=True),
        )
        for hook in hooks:
            handle.add_hook(hook)
    handle.add_hook(adapter.projector(model).register_forward_hook(run.after_projector))
    # before the prefill hook, so each prompt starts with no recorded groups
    handle.add_hook(
        adapter.inner(model).register_forward_pre_hook(run.new_prompt, with_kwargs=True)
    )
    install_prefill(model, run, handle, adapter)
    return run


METHODS.register("tome", Tome)(install_tome)

__all__ = [
    "Tome",
    "bipartite_plan",
    "constant_schedule",
    "install_tome",
    "keep_first_copies",
    "merge_by_size",
    "merge_schedule",
]

"""SparseVLM (Zhang et al., 2024, arXiv 2410.04417): text-guided visual-token pruning with
token recycling, inside the language model. Reference: github.com/Gumpest/SparseVLMs,
``llava/model/language_model/{modelling_sparse_llama,score,utils}.py`` at v1.0 (commit
91fb6d9) and at tag v1.5 (which only changed how many tokens a stage keeps).

1. *Raters.* Once per prompt, from the language model's input embeddings: the question
   tokens (text after the last image token) whose relevance to the image,
   ``mean_v softmax_t(E_v . E_t)``, is above the mean (the reference's ``t_token_idx``).
2. *Scores.* At each stage, the attention the raters pay each visual token in the layer
   before the stage (softmax over every key, averaged over raters and heads;
   ``kernels.attention_scores``, no attention matrix).
3. *How many.* One budget, ``keep`` (default 110/576, v1.5's 192-token setting for
   LLaVA-1.5) or ``tokens``: what the last stage keeps; earlier stages follow the shape of the
   reference's schedule, 300/200/110 of 576 (``sparse_token_dict`` in ``score.py``), scaled
   to end at the budget (:func:`.budget.schedule_ratios`). Or ``ratios``, one kept fraction
   per stage. Or ``adaptive=True``, v1.0's rank rule (``attn_postprocess_rank`` in
   ``score.py``, the paper's rank-based adaptive sparsification): keep ``min(int(rank(P) *
   scale + bias), n - 1)`` of the ``n`` visual tokens, ``P`` the raters x visual attention
   block, and prune nothing at a stage where ``P`` has full rank ``n``. v1.0 ran it with
   ``scale=13.5, bias=0`` after layers 2, 6, 15, 19, i.e. ``layers=(3, 7, 16, 20)`` here.
4. *Recycling.* Of the tokens a stage drops, the ``recycle`` fraction with the highest
   scores (``int(n * recycle) + 1``) is clustered by density peaks into
   ``int(m * cluster_ratio) + 1`` groups; the groups' means are inserted, in cluster order,
   right after the last kept image token, as the reference concatenates [prompt prefix and
   kept visual tokens, merged tokens, the rest]. Renumbered (the default on 1-D RoPE, as the
   reference truncates ``position_ids`` to the new length), they take the positions that
   follow the kept visual tokens; on M-RoPE each takes the position of the token it follows.
   Later stages rank them with the other visual tokens, as the reference does.

Layers follow the in-LLM convention (:mod:`.methods`): v1.5 prunes the outputs of 0-indexed
layers 2, 6 and 15 of LLaVA-1.5-7B, ranked by those layers' attention: ``layers=(3, 7, 16)``,
the default on 32-layer models (scaled to other depths).
Beyond the reference (one image, batch 1, LLaVA-1.5): batches with padding, several images
or videos (recycled tokens follow the last kept image token of the prompt), and image
separators (LLaVA-NeXT/OneVision newlines), which are never raters, candidates or merged.

>>> [SparseVLM().target(torch.tensor([576]), stage, 3).item() for stage in range(3)]
[300, 200, 110]
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from leanvision.core.config import MethodConfig, check_range
from leanvision.vlm.inllm.budget import check_overall_budget, schedule_shares
from leanvision.vlm.inllm.engine import InLLMPruner, Prefill, Selection, Tokens
from leanvision.vlm.inllm.methods import (
    StagedBudget,
    attention_scale,
    check_layers,
    check_ratios,
    check_renumber,
    install,
)
from leanvision.vlm.inllm.selection import (
    density_peak_merge,
    drop_count,
    drop_mask,
    received_attention,
    rows_attention,
    text_raters,
)
from leanvision.vlm.registry import METHODS

# the reference's 192-token schedule for LLaVA-1.5: 300, 200, 110 of 576 visual tokens
PAPER_KEEP = 110 / 576


@dataclasses.dataclass
class SparseVLM(StagedBudget, MethodConfig):
    """SparseVLM: text-guided pruning inside the LLM; dropped tokens are recycled as merged ones.

    See the module docstring. ``layers``: stage starts (decoder layers that see the previous
    token set; default the reference's 3/7/16 of 32, scaled to the model's depth). Budget:
    ``keep`` (default 110/576) or ``tokens``, what the last stage selects (its recycled,
    merged tokens come on top, as in the reference), earlier stages in the reference's
    300:200:110 shape; or ``ratios`` (one per stage); or ``adaptive`` with ``scale``/``bias``.
    ``recycle``: fraction of each stage's dropped tokens merged back (0 disables); ``cluster_ratio``: groups per recycled token; ``renumber`` (default: True on
    1-D RoPE, as the reference; False on M-RoPE).

    >>> import leanvision as lv
    >>> from leanvision.testing import tiny_llava
    >>> tiny = tiny_llava()
    >>> with lv.vlm.compress(tiny.model, "sparsevlm", layers=(1,), keep=0.25) as handle:
    ...     _ = tiny.model(**tiny.inputs)
    >>> handle.stats["tokens_before"], handle.stats["tokens_after"]  # 16 kept + 2 recycled
    ([64], [18])
    """

    layers: tuple[int, ...] | None = None
    keep: float | None = None
    tokens: int | None = None
    ratios: tuple[float, ...] | None = None
    adaptive: bool = False
    scale: float = 13.5
    bias: float = 0.0
    recycle: float = 0.3
    cluster_ratio: float = 0.1
    renumber: bool | None = None

    name: ClassVar[str] = "sparsevlm"
    paper_layers: ClassVar[tuple[int, ...]] = (3, 7, 16)
    default_keep: ClassVar[float] = PAPER_KEEP
    default_renumber: ClassVar[bool] = True

    def validate(self) -> None:
        if self.layers is not None:
            self.layers = check_layers("layers", self.layers)
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {self.adaptive!r}")
        check_overall_budget(self.keep, self.tokens, self.ratios)
        budgets = {"keep": self.keep, "tokens": self.tokens, "ratios": self.ratios}
        given = {name: value for name, value in budgets.items() if value is not None}
        if self.adaptive and given:
            raise ValueError(
                f"pass one budget: keep=, tokens=, ratios= or adaptive=True (got {given} "
                "and adaptive=True)"
            )
        if self.ratios is not None:
            count = None if self.layers is None else len(self.layers)
            self.ratios = check_ratios("ratios", self.ratios, count)
        check_range("scale", self.scale, low=0.0, low_inclusive=False)
        check_range("bias", self.bias)
        check_range("recycle", self.recycle, low=0.0, high=1.0)
        check_range("cluster_ratio", self.cluster_ratio, low=0.0, high=1.0, low_inclusive=False)
        check_renumber(self.renumber)

    def stage_count(
        self, visual_before: torch.Tensor, last: torch.Tensor, stage: int, stages: int
    ) -> torch.Tensor:
        """The last stage's count times the reference schedule's share of ``stage``."""
        share = float(schedule_shares(stages)[stage])
        return (last.double() * share).round().long()

    def recycled(self, dropped: int) -> tuple[int, int]:
        """``(tokens recycled, groups they merge into)`` when a stage drops ``dropped``."""
        if self.recycle == 0 or dropped == 0:
            return 0, 0
        count = min(dropped, int(dropped * self.recycle) + 1)
        return count, min(count, int(count * self.cluster_ratio) + 1)


def question_mask(tokens: Tokens, row: int) -> torch.Tensor:
    """``(L,)`` bool: real text tokens after the row's last image token (else its last token)."""
    image = tokens.image[row]
    positions = torch.arange(image.shape[0], device=image.device)
    last_image = int((positions * image).max())
    mask = ~image & (positions > last_image)
    if tokens.padding is not None:
        mask &= ~tokens.padding[row].to(image.device)
    if not bool(mask.any()):
        mask = positions == int(tokens.last[row])
    return mask


class RaterPolicy:
    """SparseVLM's scoring (raters' attention in the layer before the stage) and selection
    (schedule or rank, recycling)."""

    rank_layer_offset = 1

    def __init__(self, config: SparseVLM, stages: int):
        self.config = config
        self.stages = stages
        self.raters: list[torch.Tensor] = []

    def begin(self, prefill: Prefill, embeds: torch.Tensor | None) -> None:
        tokens = prefill.sets[0]
        self.raters = [
            text_raters(embeds[row], tokens.visual[row], question_mask(tokens, row))
            for row in range(tokens.index.shape[0])
        ]

    def score(
        self, stage: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor, tokens: Tokens
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        scale = attention_scale(module, query)
        scores, ranks = [], []
        for row, raters in enumerate(self.raters):
            # raters are text tokens, never dropped: find them in this row's current set
            rows = torch.searchsorted(
                tokens.index[row : row + 1], raters.unsqueeze(0).to(tokens.index.device)
            )
            padding = None if tokens.padding is None else tokens.padding[row : row + 1]
            one_q, one_k = query[row : row + 1], key[row : row + 1]
            scores.append(received_attention(one_q, one_k, rows, scale, padding))
            if self.config.adaptive:
                block = rows_attention(
                    one_q, one_k, rows[0], scale, None if padding is None else padding[0]
                )
                block = block[:, tokens.visual[row].to(block.device)]
                ranks.append(torch.linalg.matrix_rank(block))
        return torch.cat(scores), torch.stack(ranks) if ranks else None

    def select(
        self,
        stage: int,
        scored: tuple[torch.Tensor, torch.Tensor | None],
        tokens: Tokens,
        hidden: torch.Tensor,
        prefill: Prefill,
    ) -> Selection:
        scores, ranks = scored
        visual = tokens.visual.to(scores.device)
        available = visual.sum(-1)
        config = self.config
        if ranks is not None:
            ranks = ranks.to(available.device)
            wanted = (ranks.double() * config.scale + config.bias).long().clamp(min=1)
            target = torch.where(ranks >= available, available, wanted.minimum(available - 1))
        else:
            target = config.target(prefill.visual_before.to(scores.device), stage, self.stages)
        drop = drop_count(available, target.minimum(available))
        keep_mask = drop_mask(scores, visual, drop)
        keep = keep_mask.nonzero()[:, 1].view(visual.shape[0], -1)
        count, groups = config.recycled(drop)
        if count == 0:
            return Selection(keep=keep, visual=visual.gather(1, keep))
        image = tokens.image.to(scores.device)
        rows, slots, values = [], [], []
        for row in range(visual.shape[0]):
            dropped = (visual[row] & ~keep_mask[row]).nonzero().squeeze(-1)
            order = torch.sort(scores[row, dropped], descending=True, stable=True).indices
            chosen = dropped[order[:count]]
            _, means = density_peak_merge(hidden[row, chosen.to(hidden.device)], groups)
            kept = keep[row]
            after = int(image[row, kept].nonzero().max())  # the last kept image token
            rows.append(
                torch.cat([kept[: after + 1], kept[after].repeat(groups), kept[after + 1 :]])
            )
            slots.append(torch.arange(after + 1, after + 1 + groups, device=kept.device))
            values.append(means)
        keep, replace = torch.stack(rows), torch.stack(slots)
        return Selection(
            keep=keep,
            visual=visual.gather(1, keep).scatter(1, replace, True),
            replace=replace,
            values=torch.stack(values),
        )


@METHODS.register("sparsevlm", SparseVLM)
def apply_sparsevlm(model: nn.Module, config: SparseVLM, handle: Any, adapter: Any) -> InLLMPruner:
    return install(model, config, handle, adapter, RaterPolicy)

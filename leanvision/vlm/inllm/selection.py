"""Scoring and selection helpers of the in-LLM methods; they know nothing of models.

Shapes: ``query`` ``(B, H, L, d)``, ``key`` ``(B, H_kv, L, d)`` (post-RoPE, as the attention
function receives them); ``scores``/``visual`` ``(B, L)``.
"""

from __future__ import annotations

import torch


def _expand_heads(key: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat grouped key heads (GQA) so each query head has its own."""
    groups = heads // key.shape[1]
    return key if groups == 1 else key.repeat_interleave(groups, dim=1)


def received_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    rows: torch.Tensor,
    scale: float | None,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, L)`` float32: causal softmax attention each key receives from query ``rows``
    ``(B, R)``, averaged over heads and rows, via ``kernels.attention_scores`` (O(R x L)
    memory, no attention matrix). ``padding`` ``(B, L)`` True marks padding keys."""
    from leanvision.kernels import attention_scores

    return attention_scores(
        query,
        key,
        scale=scale,
        causal=True,
        query_index=rows.to(query.device),
        key_padding_mask=None if padding is None else padding.to(query.device),
    )


def rows_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    rows: torch.Tensor,
    scale: float | None,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(R, L)`` float32 causal softmax of query ``rows`` ``(R,)`` over all keys of ONE
    sequence (``query``/``key`` with batch 1), averaged over heads: only ``R`` rows, for
    SparseVLM's rank of the rater-to-visual attention block."""
    key = _expand_heads(key, query.shape[1])[0].float()  # (H, L, d)
    chosen = query[0][:, rows.to(query.device)].float()  # (H, R, d)
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    logits = (chosen @ key.transpose(-1, -2)) * scale  # (H, R, L)
    positions = torch.arange(key.shape[1], device=key.device)
    blocked = positions[None, :] > rows.to(key.device)[:, None]  # causal
    if padding is not None:
        blocked = blocked | padding.to(key.device)[None, :]
    logits = logits.masked_fill(blocked.unsqueeze(0), float("-inf"))
    return logits.softmax(dim=-1).mean(dim=0)


def drop_count(available: torch.Tensor, kept: torch.Tensor) -> int:
    """Tokens every row drops so the batch stays rectangular: the smallest
    ``available - kept`` over rows (rows with more visual tokens keep a few more).

    >>> drop_count(torch.tensor([10, 12]), torch.tensor([5, 6]))
    5
    """
    return max(0, int((available - kept).min()))


def keep_top_visual(scores: torch.Tensor, visual: torch.Tensor, drop: int) -> torch.Tensor:
    """``(B, L - drop)`` sorted indices: every non-visual token plus, per row, the visual
    tokens with the highest ``scores`` (ties: lower index first), ``drop`` fewer than the
    row has.

    >>> keep_top_visual(torch.tensor([[0.0, 0.3, 0.1, 0.2, 0.0]]),
    ...                 torch.tensor([[False, True, True, True, False]]), 1).tolist()
    [[0, 1, 3, 4]]
    """
    keep = drop_mask(scores, visual, drop)
    return keep.nonzero()[:, 1].view(scores.shape[0], -1)


def drop_mask(scores: torch.Tensor, visual: torch.Tensor, drop: int) -> torch.Tensor:
    """``(B, L)`` bool, True for kept tokens: the ``drop`` lowest-scored visual tokens of
    each row are False (ties: the higher index is dropped first)."""
    ranked = scores.float().masked_fill(~visual, float("-inf"))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    keep_visual = visual.sum(-1, keepdim=True) - drop
    return ~visual | (rank < keep_visual)


def text_raters(embeds: torch.Tensor, visual: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """SparseVLM's raters of one sequence: sorted positions of the ``question`` text tokens
    most relevant to the image.

    ``embeds`` ``(L, D)`` the language model's input; ``visual``/``question`` ``(L,)`` bool.
    Relevance of text token ``t``: ``mean_v softmax_t(E_v . E_t)`` over visual tokens ``v``
    (softmax across the question tokens); raters are the tokens above the mean relevance
    (all of them when every relevance is equal).

    >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.1]])
    >>> text_raters(e, torch.tensor([True, False, False, False]),
    ...             torch.tensor([False, True, True, True])).tolist()
    [2]
    """
    text = question.nonzero().squeeze(-1)
    image = embeds[visual].float()
    relevance = (image @ embeds[text].float().T).softmax(dim=-1).mean(dim=0)
    chosen = relevance > relevance.mean()
    if not bool(chosen.any()):
        return text
    return text[chosen]


def density_peak_merge(tokens: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``tokens`` ``(n, D)`` into ``clusters`` groups by density peaks (DPC-kNN) and
    average each group: SparseVLM's token recycling.

    Density of a token: ``exp(-mean squared distance to its k = clusters nearest tokens)``
    (distances scaled by ``1/sqrt(D)``); its peak distance: the distance to the nearest
    denser token (the largest distance of all for the densest one). The ``clusters`` tokens
    with the largest ``density x peak distance`` are centres; every token joins its nearest
    centre. Ties in density go to the lower index. Returns ``(assignment (n,), means
    (clusters, D))``.

    >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    >>> assignment, means = density_peak_merge(x, 2)
    >>> assignment.tolist(), [round(v, 2) for v in means.squeeze(-1).tolist()]
    ([0, 0, 1, 1], [0.05, 5.05])
    """
    count, width = tokens.shape
    values = tokens.float()
    distance = torch.cdist(values, values) / width**0.5
    nearest = distance.topk(min(clusters, count), dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    order = torch.arange(count, device=tokens.device)
    denser = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (order[None, :] < order[:, None])
    )
    peak = distance.masked_fill(~denser, float("inf")).min(dim=-1).values
    peak = torch.where(torch.isinf(peak), distance.max(), peak)
    centres = torch.sort((peak * density), descending=True, stable=True).indices[:clusters]
    assignment = distance[:, centres].argmin(dim=-1)
    assignment[centres] = torch.arange(centres.numel(), device=tokens.device)
    sums = torch.zeros(centres.numel(), width, device=tokens.device)
    sums.index_add_(0, assignment, values)
    sizes = torch.bincount(assignment, minlength=centres.numel()).clamp(min=1)
    return assignment, (sums / sizes[:, None]).to(tokens.dtype)

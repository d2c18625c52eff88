"""Each method's selection equals its paper's algorithm, recomputed here from the definition.

References read the model the way the papers' code does: eager attention with
``output_attentions=True`` (the attention matrix is fine in a test), keys from the block's
``k_proj``, features from ``get_image_features``. The library ran with scores from
``attention_scores`` and no attention matrix; we compare kept indices (and merged values).
VisionZip and PruMerge+ are checked against their authors' code in ``test_reference_prellm``.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from vlm_helpers import LLMInputs, build, visual_mask

import leanvision as lv
from leanvision.testing.tiny_vlm import build_vlm, tiny_llava
from leanvision.testing.vlm_shapes import TINY_SHAPES


@functools.cache
def deep_llava_eager():
    shape = TINY_SHAPES["llava"]
    shape = dataclasses.replace(shape, text=dataclasses.replace(shape.text, layers=4))
    return build_vlm(shape, batch=2, attn_implementation="eager")


@functools.cache
def vision_facts(seed: int = 0):
    """CLS attention (per patch), head-mean keys and projected features of image 0 at ViT
    block 0 (LLaVA's features come from hidden_states[-2] = block 0 of 2)."""
    tiny = (
        build("llava", batch=1, attn="eager")
        if seed == 0
        else tiny_llava(seed=seed, attn_implementation="eager")
    )
    inner = tiny.model.model
    pixels = tiny.inputs["pixel_values"]
    with torch.no_grad():
        out = inner.vision_tower(pixels, output_hidden_states=True, output_attentions=True)
        block = inner.vision_tower.encoder.layers[0]
        normed = block.layer_norm1(out.hidden_states[0])
        heads = block.self_attn.num_heads
        keys = block.self_attn.k_proj(normed)[0].view(normed.shape[1], heads, -1).mean(1)
        features = inner.get_image_features(pixel_values=pixels, return_dict=True).pooler_output[0]
    cls_attention = out.attentions[0][0, :, 0, 1:].mean(0)  # CLS row, heads averaged
    return tiny, cls_attention, keys[1:], features


def run_prellm(tiny, method: str, **options):
    """Library anchors (indices into the image's tokens) and the features the LLM received."""
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, method, **options) as handle,
        torch.no_grad(),
    ):
        tiny.model(**tiny.inputs)
    first = int(visual_mask(tiny)[0].nonzero()[0])
    kept = torch.tensor(handle.stats["kept_positions"][0])
    row_visual = visual_mask(tiny)[0, kept]
    anchors = kept[row_visual] - first
    values = seen.prefill["inputs_embeds"][0, -kept.numel() :][row_visual]
    return anchors, values


def test_tome_bipartite_soft_matching_alternate_split() -> None:
    tiny, _cls, keys, features = vision_facts()
    count = 40  # one round: r = 24 <= |A| = 32
    anchors, values = run_prellm(tiny, "bipartite-merge", tokens=count)
    unit = F.normalize(keys, dim=-1)
    a, b = torch.arange(0, 64, 2), torch.arange(1, 64, 2)
    best, partner = (unit[a] @ unit[b].T).max(1)
    order = best.argsort(descending=True, stable=True)
    merged, unmerged = order[: 64 - count], order[64 - count :]
    expected = {int(a[i]): features[a[i]] for i in unmerged}
    for slot, token in enumerate(b.tolist()):
        sources = a[merged[partner[merged] == slot]]
        expected[token] = torch.cat([features[token][None], features[sources]]).mean(0)
    assert sorted(expected) == anchors.tolist()
    for anchor, value in zip(anchors.tolist(), values, strict=True):
        torch.testing.assert_close(value, expected[anchor], rtol=1e-4, atol=1e-5)


def test_divprune_greedy_max_min_cosine_distance() -> None:
    tiny, _cls, _keys, features = vision_facts()
    distance = 1 - F.normalize(features, dim=-1) @ F.normalize(features, dim=-1).T
    chosen = [int(distance.topk(2, dim=0, largest=False).values[1].argmax())]
    while len(chosen) < 12:
        chosen.append(int(distance[chosen].min(0).values.argmax()))
    anchors, values = run_prellm(tiny, "divprune", tokens=12)
    assert anchors.tolist() == sorted(chosen)
    torch.testing.assert_close(values, features[anchors])


def test_random_and_pool_baselines() -> None:
    tiny, _cls, _keys, features = vision_facts()
    anchors, _ = run_prellm(tiny, "random", tokens=10, seed=3)
    drawn = torch.randperm(64, generator=torch.Generator().manual_seed(3))[:10]
    assert anchors.tolist() == sorted(drawn.tolist())
    anchors, values = run_prellm(tiny, "pool", tokens=16)
    grid = features.view(8, 8, -1)
    pooled = grid.view(4, 2, 4, 2, -1).mean(dim=(1, 3)).reshape(16, -1)
    assert anchors.tolist() == [r * 16 + c * 2 for r in range(4) for c in range(4)]
    torch.testing.assert_close(values, pooled, rtol=1e-4, atol=1e-5)


def _last_token_top_visual(attention: torch.Tensor, rows_visual: torch.Tensor, count: int):
    """Per row: the visual positions with the most attention from the last token."""
    kept = []
    for row in range(attention.shape[0]):
        received = attention[row, :, -1].mean(0)  # last token's row, heads averaged
        positions = rows_visual[row].nonzero().squeeze(-1)
        kept.append(set(positions[received[positions].topk(count).indices].tolist()))
    return kept


def test_fastv_top_k_from_last_instruction_token_at_layer_k() -> None:
    tiny = build("llava", batch=2, attn="eager")
    with torch.no_grad():
        attentions = tiny.model(**tiny.inputs, output_attentions=True).attentions
    visual = visual_mask(tiny)
    expected = _last_token_top_visual(attentions[0], visual, 16)  # K = 1: layer 0 ranks
    with lv.vlm.compress(tiny.model, "fastv", layer=1, keep=0.25) as handle, torch.no_grad():
        tiny.model(**tiny.inputs)
    kept = handle.stats["kept_index"][0]
    for row in range(2):
        got = {int(i) for i in kept[row] if visual[row, i]}
        assert got == expected[row]
        assert {int(i) for i in kept[row] if not visual[row, i]} == set(
            (~visual[row]).nonzero().squeeze(-1).tolist()
        ), "text and padding tokens are never dropped"


def test_pyramiddrop_stages_rank_by_last_instruction_token() -> None:
    tiny = deep_llava_eager()
    layers, ratios = (1, 2, 3), (0.5, 0.25, 0.125)
    with (
        lv.vlm.compress(tiny.model, "pdrop", layers=layers, ratios=ratios) as handle,
        torch.no_grad(),
    ):
        tiny.model(**tiny.inputs)
    from inllm_reference import reference_stage_attention

    visual = visual_mask(tiny)
    sets = [torch.arange(visual.shape[1]).expand(2, -1)]
    for stage, ratio in enumerate(ratios):
        # the authors' rank layer: layer layers[stage] itself (the stage's first layer), over
        # the current set (renumbered positions); int(n * ratio) kept
        current = sets[-1]
        attention = reference_stage_attention(
            tiny, [*sets, current], [*layers[: stage + 1], layers[stage] + 1], True
        )
        chosen = _last_token_top_visual(attention, visual.gather(1, current), int(64 * ratio))
        new = []
        for row in range(2):
            keep = (~visual.gather(1, current)[row]).clone()
            keep[list(chosen[row])] = True
            new.append(current[row][keep])
        sets.append(torch.stack(new))
        assert torch.equal(handle.stats["kept_index"][stage], sets[-1])


def test_sparsevlm_text_raters_and_recycling() -> None:
    tiny = build("llava", batch=1, attn="eager")
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, "sparsevlm", layers=(1,), ratios=(0.4,)) as handle,
        torch.no_grad(),
    ):
        tiny.model(**tiny.inputs)
    with torch.no_grad():
        attention = tiny.model(**tiny.inputs, output_attentions=True).attentions[0][0]
    visual = visual_mask(tiny)[0]
    embeds = seen.prefill["inputs_embeds"][0]
    positions = torch.arange(visual.numel())
    question = ~visual & (positions > positions[visual].max())
    text = positions[question]
    relevance = (embeds[visual] @ embeds[text].T).softmax(dim=-1).mean(0)
    raters = text[relevance > relevance.mean()]
    received = attention[:, raters].mean(dim=(0, 1))  # heads and raters averaged
    image = positions[visual]
    order = received[image].argsort(descending=True, stable=True)
    selected = set(image[order[:26]].tolist())  # round(0.4 * 64)
    dropped = image[order[26:]]
    recycled = set(dropped[: int(dropped.numel() * 0.3) + 1].tolist())  # best-scored dropped
    # recycled tokens: one block right after the last kept visual token, as the reference's
    # torch.cat((kept prefix + visual, merged, rest)); they repeat that token's position
    index = handle.stats["kept_index"][0][0]
    slots = handle.stats["inserted_index"][0][0]
    own = torch.ones(index.numel(), dtype=torch.bool)
    own[slots] = False
    assert {int(i) for i in index[own] if visual[i]} == selected
    assert slots.numel() == int(len(recycled) * 0.1) + 1, "one token per density-peak cluster"
    last = max(selected)
    after = int((index == last).nonzero()[0]) + 1
    assert slots.tolist() == list(range(after, after + slots.numel()))
    assert bool((index[slots] == last).all())

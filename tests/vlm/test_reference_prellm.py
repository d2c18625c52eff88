"""Pre-LLM methods against their authors' reference code, recomputed here in float64.

Each oracle re-implements, from the model's own weights and eager ``hidden_states``, what the
reference does (never the library's code path):

- PruMerge+: ``42Shawn/LLaVA-PruMerge``, ``llava/model/multimodal_encoder/clip_encoder.py``,
  ``token_prune_merge_advanced_plus``: q/k of the LAST block's full ``q_proj``/``k_proj``, one
  softmax of ``q k^T * C**-0.5`` (CLS row), ``np.percentile`` IQR outliers, ``topk(int(N *
  ratio))``, samples ``arange(0, N - 1, int(int(1 / ratio) / 3))``, 32 neighbours by cosine of
  the full keys, weights = raw CLS attention, the extra token appended last, all before the
  ``mm_projector``.
- VisionZip: ``dvlab-research/VisionZip``, ``visionzip/clip_encoder.py``: CLS + top
  ``dominant - 1`` patches by CLS attention (heads summed) of ``attentions[-2]``, contextual
  tokens from head-mean keys of ``layers[-2]`` on ``hidden_states[-2]`` (CLS included), then
  the projector over ``[dominant (raster), contextual]``.
- Positions: both references (and DivPrune) rebuild the prompt with ``arange`` positions.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vlm_helpers import LLMInputs, build, original_positions, visual_mask

import leanvision as lv
from leanvision.testing import tiny_llava
from leanvision.vlm.adapters import ScoreRequest, get_adapter
from leanvision.vlm.scorers import attention_request

PRUMERGE_SEED = 5  # a tiny LLaVA whose last block has 6 CLS-attention outliers


def f64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().double()


def project(model, values: torch.Tensor) -> torch.Tensor:
    """LLaVA's MLP projector in float64 from its weights (linear, exact GELU, linear)."""
    mlp = model.model.multi_modal_projector
    hidden = F.gelu(F.linear(values, f64(mlp.linear_1.weight), f64(mlp.linear_1.bias)))
    return F.linear(hidden, f64(mlp.linear_2.weight), f64(mlp.linear_2.bias))


def block_qk(tiny, block_index: int, hidden: torch.Tensor):
    """Full (all heads concatenated) q_proj/k_proj outputs of a CLIP block, float64."""
    block = tiny.model.model.vision_tower.encoder.layers[block_index]
    norm = block.layer_norm1
    normed = F.layer_norm(f64(hidden), norm.normalized_shape, f64(norm.weight), f64(norm.bias))
    attention = block.self_attn
    q = F.linear(normed, f64(attention.q_proj.weight), f64(attention.q_proj.bias))
    k = F.linear(normed, f64(attention.k_proj.weight), f64(attention.k_proj.bias))
    return q, k, attention.num_heads


@functools.cache
def llava_facts(seed: int):
    """Eager tower outputs of image 0 of a tiny LLaVA (2 CLIP blocks, features = block 0)."""
    tiny = build("llava", batch=1, attn="eager") if seed == 0 else None
    tiny = tiny or tiny_llava(seed=seed, attn_implementation="eager")
    with torch.no_grad():
        out = tiny.model.model.vision_tower(
            tiny.inputs["pixel_values"], output_hidden_states=True, output_attentions=True
        )
    return tiny, out


def run(tiny, method: str, **options):
    """(slots relative to the image's first placeholder, LLM input rows there, positions,
    handle) of row 0."""
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, method, **options) as handle,
        torch.no_grad(),
    ):
        tiny.model(**tiny.inputs)
    visual = visual_mask(tiny)[0]
    first = int(visual.nonzero()[0])
    kept = torch.tensor(handle.stats["kept_positions"][0])
    is_visual = visual[kept]
    offset = seen.prefill["inputs_embeds"].shape[1] - kept.numel()  # left padding added
    values = seen.prefill["inputs_embeds"][0, offset:][is_visual]
    positions = seen.prefill["position_ids"][..., 0, offset:]
    return kept[is_visual] - first, values, positions, handle


# -- PruMerge+ ------------------------------------------------------------------------------------


def prumerge_reference(seed: int, neighbour_keys: str = "concat"):
    """The reference's output sequence (float64, projected) and its kept indices."""
    tiny, out = llava_facts(seed)
    depth = len(tiny.model.model.vision_tower.encoder.layers)
    q, k, heads = block_qk(tiny, depth - 1, out.hidden_states[depth - 1])
    q, k = q[0], k[0]  # (65, C)
    features = f64(out.hidden_states[-2][0, 1:])  # feature_select "patch": (N, C)
    n, width = features.shape
    cls_attn = ((q @ k.T) * width**-0.5).softmax(-1)[0, 1:]
    array = cls_attn.float().numpy()
    q1, q3 = np.percentile(array, 25), np.percentile(array, 75)
    ratio = len(np.where(array > q3 + 1.5 * (q3 - q1))[0]) / len(array)
    idx = torch.topk(cls_attn, int(n * ratio)).indices
    samples = torch.arange(0, n - 1, int(int(1 / ratio) / 3))
    idx = torch.cat([idx, torch.tensor([s for s in samples.tolist() if s not in idx.tolist()])])
    keys = k[1:]
    if neighbour_keys == "mean":  # what the library did before: head-averaged keys
        keys = keys.view(n, heads, -1).mean(1)
    keys = F.normalize(keys, dim=-1)
    rows = []
    for i in idx.tolist():
        rest = torch.tensor(
            [j for j in idx.tolist() if j != i] + [j for j in range(n) if j not in idx.tolist()]
        )
        nearest = rest[(keys[rest] @ keys[i]).topk(32).indices]
        rows.append(features[i] + (features[nearest] * cls_attn[nearest, None]).sum(0))
    dropped = torch.tensor([j for j in range(n) if j not in idx.tolist()])
    rows.append((features[dropped] * cls_attn[dropped, None]).sum(0))
    return tiny, idx, project(tiny.model, torch.stack(rows)), cls_attn


def test_prumerge_plus_scores_one_softmax_of_concatenated_heads_at_the_last_block() -> None:
    """Reference: hooks on ``layers[23]`` (the last) ``q_proj``/``k_proj``; ``attn = softmax(q @
    k^T * C**-0.5)`` over the full width; IQR outliers sorted by score, then the samples."""
    tiny, idx, _rows, cls_attn = prumerge_reference(PRUMERGE_SEED)
    _, out = llava_facts(PRUMERGE_SEED)
    # the fixture discriminates: head-mean softmaxes of block 0 rank other tokens first
    mean_heads = out.attentions[0][0, :, 0, 1:].mean(0).double()
    assert set(mean_heads.topk(6).indices.tolist()) != set(idx[:6].tolist())
    slots, values, _positions, handle = run(tiny, "prumerge+")
    assert handle.stats["tokens_after"] == [idx.numel() + 1]
    assert slots.tolist() == list(range(idx.numel() + 1)), "reference order, consecutive"
    library_scores = recorded_scores(tiny)
    torch.testing.assert_close(library_scores.double(), cls_attn, rtol=1e-5, atol=1e-7)


def recorded_scores(tiny) -> torch.Tensor:
    """The scores PruMerge+ requests, read through the capture (sdpa/eager agnostic)."""
    adapter = get_adapter(tiny.model)
    request = attention_request(-1, "auto", keys=True, heads="concat")
    with lv.vlm.compress(tiny.model, "prumerge+") as _handle, torch.no_grad():
        segments = adapter.encode(tiny.model, dict(tiny.inputs), request)
    return segments[0].scores


def test_prumerge_plus_merges_neighbours_found_by_concatenated_keys() -> None:
    """Reference: ``Key_wo_cls = desired_layer_k[:, 1:]`` (full k_proj output), cosine top-32
    over every other token, weights = CLS attention, ``x_i + sum w_j x_j`` before the
    projector; kept tokens in the reference's order."""
    tiny, idx, rows, _ = prumerge_reference(PRUMERGE_SEED)
    _, _, head_mean_rows, _ = prumerge_reference(PRUMERGE_SEED, neighbour_keys="mean")
    assert (rows - head_mean_rows).abs().max() > 1e-3, "fixture: the two key choices differ"
    _slots, values, _positions, _handle = run(tiny, "prumerge+")
    torch.testing.assert_close(values[:-1].double(), rows[:-1], rtol=1e-4, atol=1e-5)


def test_prumerge_plus_appends_one_attention_weighted_sum_of_the_dropped_tokens() -> None:
    """Reference: ``extra_one_token = sum(non_topk * non_topk_attn)`` (weights not
    normalised), concatenated after the kept tokens, then projected."""
    tiny, idx, rows, _ = prumerge_reference(PRUMERGE_SEED)
    _slots, values, _positions, _handle = run(tiny, "prumerge+")
    assert values.shape[0] == idx.numel() + 1
    torch.testing.assert_close(values[-1].double(), rows[-1], rtol=1e-4, atol=1e-5)


def test_prumerge_plus_fixed_budget_counts_the_extra_token() -> None:
    """Our extension: ``tokens=`` fixes the count, the extra token included."""
    tiny, idx, rows, _ = prumerge_reference(PRUMERGE_SEED)
    slots, values, _positions, handle = run(tiny, "prumerge+", tokens=12)
    assert handle.stats["tokens_after"] == [12]
    torch.testing.assert_close(values[0].double(), rows[0], rtol=1e-4, atol=1e-5)  # top outlier


# -- VisionZip --------------------------------------------------------------------------------


def visionzip_reference(dominant: int, contextual: int):
    """The reference's projected sequence for image 0: [CLS + dominant patches, contextual]."""
    tiny, out = llava_facts(0)
    attn_weights, hidden = out.attentions[-2].double(), f64(out.hidden_states[-2])
    block = len(out.attentions) - 2  # layers[-2], whose input is hidden_states[block]
    _q, k, heads = block_qk(tiny, block, out.hidden_states[block])
    metric = k.view(1, k.shape[1], heads, -1).mean(2)  # raw_key_states.mean(1): head mean
    top = attn_weights[:, :, 0, 1:].sum(dim=1).topk(dominant - 1, dim=1).indices + 1
    keep = torch.cat([torch.zeros(1, 1, dtype=torch.long), top], dim=1)
    mask = torch.ones(hidden.shape[:2], dtype=torch.bool).scatter_(1, keep, False)
    dominant_tokens = hidden[~mask]  # CLS first, then raster order
    filtered, metric_filtered = hidden[mask], F.normalize(metric[mask], dim=-1)
    step = max(1, filtered.shape[0] // contextual)
    targets = torch.arange(0, filtered.shape[0], step)[:contextual]
    is_target = torch.isin(torch.arange(filtered.shape[0]), targets)
    assign = (metric_filtered[~is_target] @ metric_filtered[targets].T).argmax(1)
    merged = []
    for slot in range(contextual):
        members = filtered[~is_target][assign == slot]
        mean = members.mean(0) if members.shape[0] else torch.zeros_like(filtered[0])
        merged.append(filtered[targets[slot]] + mean)
    before = torch.cat([dominant_tokens, torch.stack(merged)])
    target_patches = mask[0].nonzero().squeeze(-1)[targets] - 1
    return tiny, project(tiny.model, before), before, keep[0, 1:] - 1, target_patches


def test_visionzip_keeps_cls_and_dominant_minus_one_patches() -> None:
    """Reference: ``apply_info(dominant_num=dominant - 1)`` and ``all_indices = [0, topk + 1]``:
    dominant=54 of 64 is CLS + 53 patches; here 16 tokens: round(16 * 54/64) = 14 = CLS + 13,
    then 2 contextual tokens, in the reference's order at consecutive positions."""
    tiny, expected, _before, patches, _ = visionzip_reference(dominant=14, contextual=2)
    slots, values, _positions, handle = run(tiny, "visionzip", tokens=16)
    assert handle.stats["tokens_after"] == [16]
    assert slots.tolist() == list(range(16))
    torch.testing.assert_close(values.double(), expected, rtol=1e-4, atol=1e-5)
    # the CLS is the first token: the projected CLS of hidden_states[-2]
    _tiny, out = llava_facts(0)
    cls = project(tiny.model, f64(out.hidden_states[-2][0, :1]))[0]
    torch.testing.assert_close(values[0].double(), cls, rtol=1e-4, atol=1e-5)
    assert patches.numel() == 13


def test_visionzip_without_renumbering_puts_cls_at_the_first_free_slot() -> None:
    """Our option: original positions, raster order (contextual tokens at their targets); the
    CLS takes the first slot no other output token holds."""
    tiny, expected, _before, patches, targets = visionzip_reference(dominant=14, contextual=2)
    slots, values, _positions, _handle = run(tiny, "visionzip", tokens=16, renumber=False)
    dominant = sorted(patches.tolist())
    free = min(set(range(64)) - set(dominant) - set(targets.tolist()))
    assert sorted(slots.tolist()) == sorted([free, *dominant, *targets.tolist()])
    by_slot = dict(zip(slots.tolist(), values, strict=True))
    torch.testing.assert_close(by_slot[free].double(), expected[0], rtol=1e-4, atol=1e-5)
    for position, row in zip(dominant + targets.tolist(), expected[1:], strict=True):
        torch.testing.assert_close(by_slot[position].double(), row, rtol=1e-4, atol=1e-5)


def test_contextual_tokens_are_merged_before_the_projector() -> None:
    """Reference: ``contextual_tokens = target_hidden + aggregated_hidden`` on ViT features,
    projected afterwards. Merging projected features instead adds the projector's output for
    a weight sum of 2 (an extra bias offset): the hand computation tells them apart."""
    tiny, expected, before, _patches, _ = visionzip_reference(dominant=14, contextual=2)
    _slots, values, _positions, _handle = run(tiny, "visionzip", tokens=16)
    after = project(tiny.model, before[14:])  # proj(t + mean(m)), the reference
    torch.testing.assert_close(values[14:].double(), after, rtol=1e-4, atol=1e-5)
    assert torch.allclose(expected[14:], after)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl"])
def test_pre_projector_features_are_laid_out_like_the_features(family: str) -> None:
    """The pre-projector rows an adapter gives (NeXT/OneVision: packed like the features,
    newlines aside; Qwen: the merger MLP's inputs, back in raster order from Qwen2.5's window
    order) give the model's own features through the projector (float64 copy), so merges can
    happen before it."""
    tiny = build(family, batch=2)
    with torch.no_grad():
        segments = get_adapter(tiny.model).encode(
            tiny.model, dict(tiny.inputs), ScoreRequest(vision=True)
        )
    if family.startswith("qwen"):
        projector = copy.deepcopy(tiny.model.model.visual.merger.mlp).double()
        newline = None
    else:
        projector = functools.partial(project, tiny.model)
        newline = tiny.model.model.image_newline
    for segment in segments:
        real = torch.ones(segment.num_tokens, dtype=torch.bool)
        if newline is not None:
            real = ~(segment.features == newline).all(-1)
            assert torch.equal(segment.fixed, ~real)
        with torch.no_grad():
            projected = projector(f64(segment.vision[real]))
        torch.testing.assert_close(projected, f64(segment.features[real]), rtol=1e-4, atol=1e-5)


# -- newlines -------------------------------------------------------------------------------------

NEWLINE_METHODS = ["visionzip", "prumerge+", "bipartite-merge", "divprune", "random", "pool"]


@pytest.mark.parametrize("method", NEWLINE_METHODS)
@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_newlines_are_kept_never_merged_and_not_in_the_budget(family: str, method: str) -> None:
    """Image newlines separate rows: every method keeps each one unchanged, and the budget
    (keep=0.3) applies to the other tokens only."""
    tiny = build(family, batch=2)
    with torch.no_grad():
        plain = tiny.model.model.get_image_features(
            **{k: v for k, v in tiny.inputs.items() if k not in ("input_ids", "attention_mask")},
            return_dict=True,
        ).pooler_output
    newline = tiny.model.model.image_newline
    visual = visual_mask(tiny)
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, method, keep=0.3) as handle,
        torch.no_grad(),
    ):
        tiny.model(**tiny.inputs)
    embeds = seen.prefill["inputs_embeds"]
    for row in range(2):
        is_newline = (plain[row] == newline).all(-1)
        slots = visual[row].nonzero().squeeze(-1)
        kept = torch.tensor(handle.stats["kept_positions"][row])
        offset = embeds.shape[1] - kept.numel()
        where = {int(p): i for i, p in enumerate(kept.tolist())}
        for slot in slots[is_newline].tolist():
            assert slot in where, "a newline was dropped"
            assert torch.equal(embeds[row, offset + where[slot]], newline), "newline changed"
        if method == "visionzip":
            continue  # budgets per crop: test_visionzip_budgets_each_anyres_crop_with_its_cls
        others = [p for p in kept.tolist() if visual[row, p]]
        candidates = int((~is_newline).sum())
        count = len(others) - int(is_newline.sum())
        budget = round(0.3 * candidates)
        assert count <= budget if method == "pool" else count == budget


def test_visionzip_budgets_each_anyres_crop_with_its_cls() -> None:
    """Reference (``encode_images_visionzip_multi``): LLaVA-NeXT's base view and each high-res
    crop go through the tower separately, each keeping its CLS + dominant + contextual
    tokens. tokens=4 per crop: CLS + 2 patches + 1 contextual, for each of the 5 crops."""
    tiny = build("llava_next", batch=2)
    pixels = tiny.inputs["pixel_values"]  # (2 images, 5 crops, 3, 32, 32)
    newline = tiny.model.model.image_newline
    slots, values, _positions, handle = run(tiny, "visionzip", tokens=4)
    real = ~(values == newline).all(-1)
    assert int(real.sum()) == pixels.shape[1] * 4
    with torch.no_grad():
        hidden = tiny.model.model.vision_tower(pixels[0], output_hidden_states=True)
    cls = project(tiny.model, f64(hidden.hidden_states[-2][:, 0]))  # (5 crops, D)
    distance = torch.cdist(cls, values[real].double())  # each crop's CLS is an output token
    assert bool((distance.min(dim=1).values < 1e-4).all())


# -- positions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "method", "renumbered"),
    [
        ("llava", "visionzip", True),
        ("llava", "prumerge+", True),
        ("llava", "divprune", True),
        ("llava", "random", False),
        ("llava", "pool", False),
        ("llava", "bipartite-merge", False),
        ("qwen2_vl", "visionzip", False),  # M-RoPE: grid positions, never renumbered
        ("qwen2_vl", "divprune", False),
    ],
)
def test_default_positions_follow_each_paper(family: str, method: str, renumbered: bool) -> None:
    """VisionZip, PruMerge+ and DivPrune rebuild the prompt with ``arange`` positions; the
    baselines keep original positions; M-RoPE models always keep their grid positions."""
    tiny = build(family, batch=2)
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, method, keep=0.3) as handle,
        torch.no_grad(),
    ):
        tiny.model(**tiny.inputs)
    assert handle.stats["renumber"] is renumbered
    mask = seen.prefill["attention_mask"]
    positions = seen.prefill["position_ids"]
    original = original_positions(tiny)
    for row, kept in enumerate(handle.stats["kept_positions"]):
        got = positions[..., row, positions.shape[-1] - len(kept) :]
        if renumbered:
            real = mask[row, mask.shape[1] - len(kept) :]
            expected = (real.cumsum(-1) - 1).masked_fill(real == 0, 1)
        elif original.dim() == 3:  # M-RoPE: get_rope_index on the original prompt
            expected = original[:, row, kept]
        else:  # a forward without position_ids: the column index
            expected = torch.tensor(kept)
        assert torch.equal(got, expected)

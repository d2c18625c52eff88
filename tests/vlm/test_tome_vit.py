"""``tome``: ToMe (Bolya et al., ICLR 2023) inside the vision tower, against a hand-written
float64 loop over the tower's blocks that follows the paper and facebookresearch/ToMe
(``tome/merge.py``, ``tome/patch/timm.py``): explicit softmax attention with ``log(size)``
added to every key's logits, bipartite soft matching of ``r`` tokens per block (alternate
A/B split, cosine of the block's head-mean keys, CLS never merged, the unmerged A tokens then
every B token), size-weighted means, then the MLP on the merged tokens. The library runs the
real transformers blocks (SDPA or eager) through its hooks.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from vlm_helpers import LLMInputs, build, logits, reference_decode, visual_mask

import leanvision as lv
from leanvision import Handle, UnsupportedModelError
from leanvision.compat import transformers as tf_compat
from leanvision.testing.common import TinyModel
from leanvision.testing.tiny_vlm import build_vlm
from leanvision.testing.vlm_shapes import TINY_SHAPES, StackShape
from leanvision.vlm.adapters import get_adapter
from leanvision.vlm.scorers import NO_REQUEST
from leanvision.vlm.tome import Tome, bipartite_plan, merge_schedule

DEEP = StackShape(hidden=32, intermediate=64, layers=4, heads=4)  # 3-4 merging blocks


@functools.cache
def deep(family: str, batch: int = 2, attn: str = "sdpa", video: bool = False) -> TinyModel:
    """A tiny float64 model of ``family`` whose ViT has 4 blocks."""
    shape = dataclasses.replace(TINY_SHAPES[family], vision=DEEP)
    return build_vlm(shape, batch, attn_implementation=attn, video=video, dtype=torch.float64)


def hand_tome(layers, hidden, r: int, protected: bool, bias: bool = True):
    """ToMe by hand on ``hidden`` ``(B, N, D)``, the input of block 0, through ``layers``:
    per row the final ``(t, D)`` tokens and each token's original indices."""
    rows = []
    for x in hidden.double():
        members = [[j] for j in range(x.shape[0])]
        for layer in layers:
            attention, t = layer.self_attn, x.shape[0]
            size = torch.tensor([float(len(m)) for m in members], dtype=torch.float64)
            normed = layer.layer_norm1(x)
            q, k, v = (
                proj(normed).view(t, attention.num_heads, -1).transpose(0, 1)
                for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
            )
            scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
            if bias:  # proportional attention: log(size) on every key's logits
                scores = scores + size.log()
            attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(t, -1)
            x = x + attention.out_proj(attended)
            merge = min(r, (t - int(protected)) // 2)
            if merge > 0:
                metric = k.mean(0)
                unit = metric / metric.norm(dim=-1, keepdim=True)
                a_side, b_side = list(range(0, t, 2)), list(range(1, t, 2))
                link = {}
                for a in a_side:
                    if protected and a == 0:
                        continue  # CLS
                    similarity = torch.stack([unit[a] @ unit[b] for b in b_side])
                    link[a] = (float(similarity.max()), b_side[int(similarity.argmax())])
                ranked = sorted(link, key=lambda a: -link[a][0])
                sources = ranked[:merge]
                # ToMe: unmerged A tokens (in position order when a CLS is protected, else in
                # similarity order), then every B token with its sources folded in
                rest = [a for a in a_side if a not in sources] if protected else ranked[merge:]
                tokens, groups = [x[a] for a in rest], [members[a] for a in rest]
                for b in b_side:
                    joined = [b] + [a for a in sources if link[a][1] == b]
                    weights = [float(len(members[j])) for j in joined]
                    total = sum(w * x[j] for w, j in zip(weights, joined, strict=True))
                    tokens.append(total / sum(weights))
                    groups.append(sorted(i for j in joined for i in members[j]))
                x, members = torch.stack(tokens), groups
            x = x + layer.mlp(layer.layer_norm2(x))
        rows.append((x, members))
    return rows


def unmerged(rows, length: int) -> torch.Tensor:
    """``(B, N, D)``: each original token carries its group's value."""
    out = []
    for tokens, members in rows:
        where = torch.empty(length, dtype=torch.long)
        for index, group in enumerate(members):
            where[group] = index
        out.append(tokens[where])
    return torch.stack(out)


def tower_case(tiny: TinyModel):
    model = tiny.model
    adapter = get_adapter(model)
    pixels = tiny.inputs["pixel_values"]
    pixels = pixels.reshape(-1, *pixels.shape[-3:])[:3]  # a few whole images / crops
    last = adapter.default_score_layer(model)
    tower = adapter.vision_tower(model)
    return tower, pixels, last, adapter.vision_layers(model)[: last + 1], adapter.has_cls(model)


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("family", "r"), [("llava", 12), ("llava", 40), ("llava_onevision", 9)])
def test_tower_matches_hand_written_tome(family: str, r: int, attn: str) -> None:
    """CLIP (CLS protected) and SigLIP (no CLS), r below and at the half-the-tokens cap: the
    feature block's output, unmerged, equals the float64 hand loop (values and groups)."""
    tiny = deep(family, attn=attn)
    tower, pixels, last, layers, cls = tower_case(tiny)
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[0]
        rows = hand_tome(layers, hidden, r, cls)
        with lv.vlm.compress(tiny.model, "tome", r=r) as handle:
            out = tower(pixels, output_hidden_states=True).hidden_states[last + 1]
    expected = unmerged(rows, hidden.shape[1])
    assert relative(out, expected) < (1e-6 if attn == "eager" else 1e-12)
    for row, (_tokens, members) in zip(out, rows, strict=True):
        same = (row[:, None] == row[None]).all(-1)  # unmerged copies are exact
        mine = {tuple(same[j].nonzero().squeeze(-1).tolist()) for j in range(row.shape[0])}
        assert mine == {tuple(group) for group in members}
        if cls:
            assert [0] in members, "the CLS token is never merged"
    assert handle.stats["vit_tokens_per_block"][-1] == rows[0][0].shape[0]


def test_proportional_attention_matters() -> None:
    """Without ``log(size)`` on the logits the hand loop is far from the library's output, so
    the oracle above pins proportional attention."""
    tiny = deep("llava")
    tower, pixels, last, layers, cls = tower_case(tiny)
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[0]
        plain = unmerged(hand_tome(layers, hidden, 12, cls, bias=False), hidden.shape[1])
        with lv.vlm.compress(tiny.model, "tome", r=12):
            out = tower(pixels, output_hidden_states=True).hidden_states[last + 1]
    assert relative(out, plain) > 1e-3


def test_budget_schedules() -> None:
    """``tokens=``/``keep=`` become a per-block schedule that never merges more than half the
    unprotected tokens of a block (bipartite matching's limit), is as even as the caps allow
    and ends at the budget; ``r=`` is ToMe's constant r under the same cap."""
    for tokens, protected, blocks, target in [(577, 1, 23, 64), (65, 1, 3, 8), (64, 0, 2, 20)]:
        schedule = merge_schedule(tokens, protected, blocks, target)
        t = tokens
        for step in schedule:
            assert 0 <= step <= (t - protected) // 2
            t -= step
        assert t - protected == target
    assert merge_schedule(577, 1, 23, 64) == [23] * 6 + [22] * 17
    assert Tome(r=40).schedule(65, protected=1, blocks=3) == [32, 16, 8]
    with pytest.raises(ValueError, match="no fewer than 8"):
        merge_schedule(65, 1, 3, 7)


def _expected_prompt(tiny: TinyModel, r: int):
    """Per row: kept positions and the projected merged tokens at the image placeholders,
    from the hand loop (one token per group, at the group's first patch, CLS dropped)."""
    model = tiny.model
    tower, _pixels, _last, layers, _cls = tower_case(tiny)
    pixels = tiny.inputs["pixel_values"]
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states[0]
        rows = hand_tome(layers, hidden, r, True)
    images = iter(rows)
    visual = visual_mask(tiny)
    kept, values = [], []
    for b in range(visual.shape[0]):
        places = visual[b].nonzero().squeeze(-1)
        positions, row_values = (~visual[b]).nonzero().squeeze(-1).tolist(), []
        for start in range(0, places.numel(), hidden.shape[1] - 1):
            tokens, members = next(images)
            firsts = [(min(group) - 1, i) for i, group in enumerate(members) if group != [0]]
            for first, index in sorted(firsts):
                positions.append(int(places[start + first]))
                row_values.append(tokens[index])
        kept.append(sorted(positions))
        with torch.no_grad():
            values.append(model.model.multi_modal_projector(torch.stack(row_values)))
    return kept, values


def _two_images_in_row_zero() -> TinyModel:
    tiny = deep("llava")
    processor = tiny.info["processor"]
    images = list(torch.randint(0, 256, (3, 40, 48, 3), dtype=torch.uint8).numpy())
    text = ["<s> USER: <image> w1 w2 <image> w3 ASSISTANT:", "<s> USER: <image> w4 ASSISTANT:"]
    inputs = processor(text=text, images=images, return_tensors="pt", padding=True)
    inputs["pixel_values"] = inputs["pixel_values"].double()
    return TinyModel(tiny.model, dict(inputs), tiny.info)


@pytest.mark.parametrize("case", ["batch2", "two_images"])
def test_generate_keeps_one_token_per_group(case: str) -> None:
    """LLaVA, batch 2 (left-padded rows; or two images in one prompt): the language model
    gets, per group, the projected merged token at the group's first patch, at its original
    position, and ``generate`` with the KV cache equals the unpatched model decoding that
    prompt built by hand."""
    tiny = deep("llava") if case == "batch2" else _two_images_in_row_zero()
    kept, values = _expected_prompt(tiny, r=12)
    steps = 4
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, "tome", r=12) as handle,
        torch.no_grad(),
    ):
        out = tiny.model.generate(**tiny.inputs, max_new_tokens=steps, do_sample=False)
    assert handle.stats["kept_positions"] == kept
    groups = 65 - 3 * 12 - 1  # CLS not counted
    assert handle.stats["tokens_after"] == [groups] * len(handle.stats["tokens_before"])
    prefill = seen.prefill["inputs_embeds"]
    visual = visual_mask(tiny)
    for b, row_values in enumerate(values):
        pad = prefill.shape[1] - len(kept[b])
        slots = [pad + i for i, p in enumerate(kept[b]) if visual[b, p]]
        assert relative(prefill[b, slots], row_values) < 1e-12
    expected = reference_decode(tiny, prefill, kept, steps)
    assert torch.equal(out[:, tiny.inputs["input_ids"].shape[1] :], expected)


def test_copies_stay_exact_when_projector_rows_round_differently() -> None:
    """A batched GEMM may round identical rows differently (GPU kernels, half precision):
    the group's copies must still reach the prompt as one token each."""
    tiny = deep("llava")
    projector = tiny.model.model.multi_modal_projector
    jitter = projector.register_forward_hook(  # before the library's hook: row-dependent rounding
        lambda _m, _args, out: (
            out * (1 + 1e-12 * torch.arange(out.shape[1], dtype=out.dtype)[:, None])
        )
    )
    try:
        with lv.vlm.compress(tiny.model, "tome", r=12) as handle, torch.no_grad():
            tiny.model(**tiny.inputs)
    finally:
        jitter.remove()
    assert handle.stats["tokens_after"] == [65 - 3 * 12 - 1] * 2


def test_bipartite_plan_caps_at_half_and_keeps_cls_first() -> None:
    """At most half of the unprotected tokens merge in one step, whatever ``r`` asks; the
    protected first token stays first."""
    metric = torch.randn(2, 9, 4)
    plan, count = bipartite_plan(metric, 100, protect_first=True)
    assert count == int(plan.max()) + 1 == 9 - 4
    assert plan[:, 0].tolist() == [0, 0]
    plan, count = bipartite_plan(metric, 100, protect_first=False)
    assert count == int(plan.max()) + 1 == 9 - 4


@pytest.mark.parametrize(
    ("family", "video", "shortens"),
    [
        ("llava_next", False, True),
        ("llava_onevision", False, True),
        ("idefics3", False, False),
        ("llava_onevision", True, False),
    ],
)
def test_other_families_generate(family: str, video: bool, shortens: bool) -> None:
    """Anyres crops (NeXT/OneVision): only later copies of a group leave the prompt, newlines
    stay. Pixel shuffle (Idefics3) and pooled video frames mix patches of several groups into
    one LLM token, so the prompt keeps every token and only the ViT is cheaper."""
    tiny = deep(family, video=video)
    steps = 3
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, "tome", keep=0.25) as handle,
        torch.no_grad(),
    ):
        out = tiny.model.generate(**tiny.inputs, max_new_tokens=steps, do_sample=False)
    before, after = handle.stats["tokens_before"], handle.stats["tokens_after"]
    assert (sum(after) < sum(before)) == shortens
    assert handle.stats["vit_tokens_per_block"][-1] < handle.stats["vit_tokens_per_block"][0]
    prefill = seen.prefill["inputs_embeds"]
    expected = reference_decode(tiny, prefill, handle.stats["kept_positions"], steps)
    assert torch.equal(out[:, tiny.inputs["input_ids"].shape[1] :], expected)
    if shortens:  # per image: the newlines, then one token per group surviving the unpad
        adapter = get_adapter(tiny.model)
        newline = tiny.model.model.image_newline
        with lv.vlm.compress(tiny.model, "tome", keep=0.25), torch.no_grad():
            segments = adapter.encode(tiny.model, tiny.inputs, NO_REQUEST)
        rows = zip(segments, handle.stats["kept_positions"], after, strict=True)
        for b, (segment, positions, count) in enumerate(rows):
            is_newline = (segment.features == newline).all(-1)
            groups = torch.unique(segment.features[~is_newline], dim=0).shape[0]
            assert count == int(is_newline.sum()) + groups
            row = prefill[b, prefill.shape[1] - len(positions) :]
            kept = row[visual_mask(tiny)[b, positions]]
            kept_newline = (kept == newline).all(-1)
            assert int(kept_newline.sum()) == int(is_newline.sum())
            assert torch.unique(kept[~kept_newline], dim=0).shape[0] == groups


@pytest.mark.parametrize(
    "family", ["llava", "llava_next", "llava_onevision", "idefics3", "llava_onevision_video"]
)
def test_remove_restores_and_keep_all_is_exact(family: str) -> None:
    """remove() restores outputs bit for bit and leaves no hook; ``keep=1.0`` changes
    nothing while applied."""
    if family == "llava_onevision_video":
        tiny = deep("llava_onevision", video=True)
    else:
        tiny = deep(family)
    model = tiny.model
    before = logits(tiny)  # also installs transformers' own output-capturing hooks

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    count = hooks()
    with lv.vlm.compress(model, "tome", keep=0.25):
        assert hooks() > count
        assert not torch.equal(logits(tiny), before)
    assert hooks() == count and Handle.active(model) == {}
    assert torch.equal(logits(tiny), before)
    with lv.vlm.compress(model, "tome", keep=1.0) as handle:
        assert torch.equal(logits(tiny), before)
    assert handle.stats["tokens_after"] == handle.stats["tokens_before"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_refuses_packed_towers(family: str) -> None:
    """Qwen-VL's ViT packs all images into one windowed sequence: refused before patching."""
    tiny = build(family, batch=1)
    with pytest.raises(UnsupportedModelError, match="tome"):
        lv.vlm.compress(tiny.model, "tome", keep=0.5)
    assert Handle.active(tiny.model) == {}


def test_refuses_bad_settings_before_patching() -> None:
    tiny = deep("llava")
    model = tiny.model
    count = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    cases = [
        ({"r": 8, "keep": 0.5}, ValueError, "not both"),
        ({"r": -1}, ValueError, "r=-1"),
        ({"r": 2.0}, TypeError, "r must be an int"),
        ({"tokens": 65}, ValueError, "1..64"),
        ({"tokens": 7}, ValueError, "no fewer than 8"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            lv.vlm.compress(model, "tome", **options)
    config = get_adapter(model).vision_layers(model)[0].self_attn.config
    original = config._attn_implementation
    setattr(config, tf_compat.ATTN_IMPLEMENTATION_ATTR, "flash_attention_2")
    try:
        with pytest.raises(ValueError, match="attn_implementation"):
            lv.vlm.compress(model, "tome", keep=0.5)
    finally:
        setattr(config, tf_compat.ATTN_IMPLEMENTATION_ATTR, original)
    model.config.vision_feature_layer = [-2, -3]
    try:
        with pytest.raises(ValueError, match="one ViT block"):
            lv.vlm.compress(model, "tome", keep=0.5)
    finally:
        model.config.vision_feature_layer = -2
    assert Handle.active(model) == {}
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == count


def test_padded_patches_raise() -> None:
    """Idefics3 inputs with padded patches would have padding merged into real tokens."""
    tiny = deep("idefics3")
    inputs = dict(tiny.inputs)
    mask = inputs["pixel_attention_mask"].clone()
    mask[0, 0, :, -8:] = False
    inputs["pixel_attention_mask"] = mask
    with (
        lv.vlm.compress(tiny.model, "tome", keep=0.5),
        torch.no_grad(),
        pytest.raises(ValueError, match="padded patches"),
    ):
        tiny.model(**inputs)

"""The in-LLM methods select what the authors' reference code selects.

Every oracle here is computed by hand in float64 from the unpatched model's layer weights
(RMSNorm, ``q_proj``/``k_proj``, RoPE written out, softmax of one query row), or by running
the model's own decoder layers on a token layout built here; the library ran with SDPA,
``kernels.attention_scores`` and no attention matrix. References:

- PyramidDrop, github.com/Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py``:
  ``pdrop_forward`` calls ``pdrop_rank_drop(rank_layer=layer_idx + 1)`` after layer
  ``layer_idx``, which ranks with ``self.layers[rank_layer]``'s ``input_layernorm``,
  ``q_proj``/``k_proj`` and RoPE on the hidden states entering that layer, from the last
  instruction token's query (softmax over every key, mean over heads), and keeps
  ``int(image_tokens * ratio)`` of the original image tokens.
- FastV ranks with the attention of layer ``K - 1`` (the last layer that sees every token).
- SparseVLM, github.com/Gumpest/SparseVLMs ``llava/model/language_model/
  modelling_sparse_llama.py`` (v1.0, 91fb6d9): ``torch.cat((select_token[:, :v_token_start +
  select_vis_token_num], merge_sparse_token, select_token[:, v_token_start +
  select_vis_token_num:]))`` puts the recycled tokens after the kept visual tokens, and
  ``position_ids[:, :new_length]`` numbers the new sequence consecutively.
- Image separators (LLaVA-NeXT / OneVision newlines) are ours: never ranked, counted or dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from inllm_reference import (
    StageInputs,
    reference_inllm_decode,
    reference_stage_input,
    set_positions,
)
from vlm_helpers import LLMInputs, build, original_positions, visual_mask

import leanvision as lv
from leanvision.testing.common import TinyModel
from leanvision.testing.tiny_vlm import build_vlm
from leanvision.testing.vlm_shapes import TINY_SHAPES
from leanvision.vlm.adapters import get_adapter
from leanvision.vlm.inllm.selection import density_peak_merge


@functools.cache
def deep_llava(batch: int) -> TinyModel:
    """LLaVA whose language model has 4 layers, for PyramidDrop with several stages."""
    shape = TINY_SHAPES["llava"]
    shape = dataclasses.replace(shape, text=dataclasses.replace(shape.text, layers=4))
    return build_vlm(shape, batch=batch)


# ---------------------------------------------------------------------------------------------
# float64 oracles


def _rope_angles(config, positions: torch.Tensor) -> torch.Tensor:
    """``(B, L, d/2)`` rotation angles: position x inverse frequency; for M-RoPE ``(3, B, L)``
    positions, the frequency pairs are split in ``mrope_section`` runs that rotate by the
    temporal, height and width position in turn (Qwen2-VL)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = config.rope_parameters
    pairs = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    inverse = 1.0 / rope["rope_theta"] ** pairs
    angles = positions.double()[..., None] * inverse
    if positions.dim() == 2:
        return angles
    runs = angles.split(list(rope["mrope_section"]), dim=-1)
    return torch.cat([run[axis % 3] for axis, run in enumerate(runs)], dim=-1)


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE on ``(B, H, L, d)``: pair ``i`` is ``(x_i, x_{i + d/2})``."""
    cos = torch.cat([angles.cos()] * 2, dim=-1)[:, None]
    sin = torch.cat([angles.sin()] * 2, dim=-1)[:, None]
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def _linear(x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
    out = x @ module.weight.double().T
    return out if module.bias is None else out + module.bias.double()


@torch.no_grad()
def received_attention64(
    tiny: TinyModel,
    layer_index: int,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    rows: list[list[int]],
    real: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, L)`` float64: the softmax attention each key receives in decoder layer
    ``layer_index`` from the query rows ``rows[b]`` (a list per row), averaged over those
    rows and all heads, computed from the layer's weights on its input ``hidden``.

    Keys: the ``real`` tokens (default: the prompt's attention mask) up to the query, text
    included; a query head ``h`` reads key head ``h // (H / H_kv)`` (GQA)."""
    model = tiny.model
    config = model.config.get_text_config()
    layer = get_adapter(model).decoder_layers(model)[layer_index]
    attention = layer.self_attn
    x = hidden.double()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)
    x = x * layer.input_layernorm.weight.double()
    batch, length, _ = x.shape
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    query = _linear(x, attention.q_proj).view(batch, length, heads, head_dim).transpose(1, 2)
    key = _linear(x, attention.k_proj).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    angles = _rope_angles(config, positions)
    query, key = _rotate(query, angles), _rotate(key, angles)
    real = tiny.inputs["attention_mask"].bool() if real is None else real
    out = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        for row in rows[b]:
            allowed = real[b] & (torch.arange(length) <= row)
            for h in range(heads):
                logits = key[b, h // (heads // kv_heads)] @ query[b, h, row] / math.sqrt(head_dim)
                out[b] += logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        out[b] /= len(rows[b]) * heads
    return out


def last_rows(tiny: TinyModel) -> list[list[int]]:
    """The last real token of each row (the last instruction token; prompts are left-padded)."""
    mask = tiny.inputs["attention_mask"].bool()
    positions = torch.arange(mask.shape[1])
    return [[int((positions * row).argmax())] for row in mask]


def top_visual(scores: torch.Tensor, candidates: torch.Tensor, count: int) -> set[int]:
    where = candidates.nonzero().squeeze(-1)
    return set(where[scores[where].topk(count).indices].tolist())


def kept_visual(handle, stage: int, row: int, candidates: torch.Tensor) -> set[int]:
    """Original positions of the candidate tokens stage ``stage`` kept in ``row`` (tokens a
    stage inserted repeat a kept token's position and are left out)."""
    index = handle.stats["kept_index"][stage][row]
    inserted = handle.stats["inserted_index"][stage]
    keep = torch.ones(index.shape[0], dtype=torch.bool)
    if inserted is not None:
        keep[inserted[row]] = False
    return {int(i) for i in index[keep] if candidates[i]}


@torch.no_grad()
def run(tiny: TinyModel, method: str, positions: torch.Tensor | None, **options):
    """One patched forward (1-D ``positions`` passed explicitly, as ``generate`` does), and
    the unpatched hidden states entering every layer on the same inputs."""
    inputs = dict(tiny.inputs)
    if positions is not None and positions.dim() == 2:
        inputs["position_ids"] = positions
    hidden = tiny.model(**inputs, output_hidden_states=True).hidden_states
    with lv.vlm.compress(tiny.model, method, **options) as handle:
        logits = tiny.model(**inputs).logits
    return handle, hidden, logits


# ---------------------------------------------------------------------------------------------
# PyramidDrop and FastV: which layer ranks


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_pdrop_ranks_with_layer_k_own_norm_qk_rope_on_full_hidden(family: str) -> None:
    """pdrop_rank_drop: layer K's input_layernorm, q/k projections and RoPE on the hidden
    states entering layer K (not layer K-1's attention), last instruction token's query,
    int(n * ratio) kept; batch 2 with left padding; Qwen2-VL with M-RoPE positions."""
    tiny = build(family, batch=2)
    positions = original_positions(tiny)
    handle, hidden, _ = run(tiny, "pdrop", positions, layers=(1,), ratios=(0.45,))
    visual = visual_mask(tiny)
    scores = received_attention64(tiny, 1, hidden[1], positions, last_rows(tiny))
    for row in range(2):
        count = int(int(visual[row].sum()) * 0.45)  # the authors' int(), not round()
        expected = top_visual(scores[row], visual[row], count)
        assert kept_visual(handle, 0, row, visual[row]) == expected


def test_pdrop_later_stages_rank_with_their_first_layer_on_renumbered_positions() -> None:
    """Stage s ranks with layer layers[s] on the hidden states of the tokens stage s - 1
    kept, at the consecutive positions the authors' code gives them."""
    tiny = deep_llava(2)
    layers, ratios = (1, 2, 3), (0.5, 0.3, 0.15)
    positions = original_positions(tiny)
    handle, _, _ = run(tiny, "pdrop", positions, layers=layers, ratios=ratios)
    visual = visual_mask(tiny)
    sets = [torch.arange(visual.shape[1]).expand(2, -1)]
    for stage, ratio in enumerate(ratios):
        current = sets[-1]
        entering = reference_stage_input(tiny, sets, list(layers[: stage + 1]), renumber=True)
        where = set_positions(tiny, current, renumber=True)
        last = [[int(current.shape[1] - 1)]] * 2  # left padding: the last token is real
        real = tiny.inputs["attention_mask"].bool().gather(1, current)
        scores = received_attention64(tiny, layers[stage], entering, where, last, real)
        new = []
        for row in range(2):
            candidates = visual[row, current[row]]
            count = int(int(visual[row].sum()) * ratio)
            chosen = top_visual(scores[row], candidates, count)
            keep = ~candidates
            keep[list(chosen)] = True
            new.append(current[row][keep])
        sets.append(torch.stack(new))
        assert torch.equal(handle.stats["kept_index"][stage], sets[-1]), f"stage {stage}"


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_fastv_still_ranks_with_layer_k_minus_1(family: str) -> None:
    """FastV: the attention of layer K - 1 (its own weights, on the hidden states entering
    it), last instruction token's query."""
    tiny = build(family, batch=2)
    positions = original_positions(tiny)
    handle, hidden, _ = run(tiny, "fastv", positions, layer=1, keep=0.3)
    visual = visual_mask(tiny)
    scores = received_attention64(tiny, 0, hidden[0], positions, last_rows(tiny))
    for row in range(2):
        count = round(int(visual[row].sum()) * 0.3)
        assert kept_visual(handle, 0, row, visual[row]) == top_visual(
            scores[row], visual[row], count
        )


# ---------------------------------------------------------------------------------------------
# SparseVLM: raters, recycling layout


def raters64(embeds: torch.Tensor, image: torch.Tensor, candidates: torch.Tensor, real) -> list:
    """SparseVLM's text raters of one row: question tokens (real text after the last image
    token) whose mean softmax relevance to the image patches is above the mean."""
    positions = torch.arange(image.shape[0])
    question = ~image & real & (positions > positions[image].max())
    text = positions[question]
    relevance = (embeds[candidates].double() @ embeds[text].double().T).softmax(-1).mean(0)
    return text[relevance > relevance.mean()].tolist()


@pytest.mark.parametrize("batch", [1, 2])
def test_sparsevlm_recycled_tokens_follow_the_kept_visual_tokens(batch: int) -> None:
    """v1.0/v1.5 layout: [prefix, kept visual tokens, merged (recycled) tokens in cluster
    order, text], numbered 0..L'-1; the logits equal layer 1 run by hand on that layout
    (batch 2: left padding, the row's real tokens run alone)."""
    tiny = build("llava", batch=batch)
    positions = original_positions(tiny)
    options = {"layers": (1,), "ratios": (0.4,), "recycle": 0.3, "cluster_ratio": 0.5}
    handle, hidden, logits = run(tiny, "sparsevlm", positions, **options)
    model = tiny.model
    adapter = get_adapter(model)
    visual = visual_mask(tiny)
    real = tiny.inputs["attention_mask"].bool()
    raters = [raters64(hidden[0][row], visual[row], visual[row], real[row]) for row in range(batch)]
    scores = received_attention64(tiny, 0, hidden[0], positions, raters)
    layer = adapter.decoder_layers(model)[1]
    language = adapter.language_model(model)
    for row in range(batch):
        image = visual[row].nonzero().squeeze(-1)
        order = torch.sort(scores[row, image], descending=True, stable=True).indices
        selected = image[order[:26]].sort().values  # round(0.4 * 64)
        dropped = image[order[26:]]
        recycled = dropped[: int(dropped.numel() * 0.3) + 1]  # best-scored dropped: 12
        groups = int(recycled.numel() * 0.5) + 1
        _, means = density_peak_merge(hidden[1][row, recycled], groups)
        prefix = torch.arange(int(image[0]))
        prefix = prefix[real[row, prefix]]
        text = torch.arange(int(image[-1]) + 1, visual.shape[1])
        expected_index = torch.cat([prefix, selected, selected[-1:].repeat(groups), text])
        padding = handle.stats["kept_index"][0].shape[1] - expected_index.numel()
        assert torch.equal(handle.stats["kept_index"][0][row, padding:], expected_index)
        start = padding + prefix.numel() + selected.numel()
        assert handle.stats["inserted_index"][0][row].tolist() == list(range(start, start + groups))
        # layer 1 by hand on the reference layout, positions 0..L'-1, plain causal mask
        rows = hidden[1][row]
        sequence = torch.cat([rows[prefix], rows[selected], means, rows[text]]).unsqueeze(0)
        where = torch.arange(sequence.shape[1]).unsqueeze(0)
        with torch.no_grad():
            out = layer(
                sequence,
                attention_mask=None,
                position_embeddings=language.rotary_emb(sequence, where),
                position_ids=where,
            )
            expected = adapter.lm_head(model)(language.norm(out))[0]
        torch.testing.assert_close(logits[row, padding:], expected, rtol=1e-4, atol=1e-5)


def test_sparsevlm_generate_with_recycling_matches_hand_run_layers() -> None:
    """Greedy decoding with the KV cache over a recycled layout (batch 2, left padding)
    equals the unpatched layers run by hand on the reported sets."""
    tiny = build("llava", batch=2)
    options = {"layers": (1,), "ratios": (0.4,), "recycle": 0.3, "cluster_ratio": 0.5}
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, "sparsevlm", **options) as handle,
        torch.no_grad(),
    ):
        entering = StageInputs(tiny.model, 1)
        try:
            out = tiny.model.generate(**tiny.inputs, max_new_tokens=4, do_sample=False)
        finally:
            entering.close()
    slots = handle.stats["inserted_index"][0]
    width = entering.prefill.shape[-1]
    values = entering.prefill.gather(1, slots.unsqueeze(-1).expand(-1, -1, width))
    expected = reference_inllm_decode(
        tiny,
        seen.prefill["inputs_embeds"],
        original_positions(tiny),
        handle.stats["kept_index"],
        handle.stats["stages"],
        4,
        renumber=True,
        sources=handle.stats["kept_source"],
        inserted=[(slots, values)],
    )
    assert torch.equal(out[:, tiny.inputs["input_ids"].shape[1] :], expected)


# ---------------------------------------------------------------------------------------------
# image separators (LLaVA-NeXT / OneVision newlines)


@torch.no_grad()
def newline_positions(tiny: TinyModel) -> torch.Tensor:
    """``(B, L)`` bool: where the model writes its ``image_newline`` (found by making it NaN
    and looking for NaN rows in what the language model receives)."""
    inner = tiny.model.model
    saved = inner.image_newline.detach().clone()
    inner.image_newline.fill_(float("nan"))
    try:
        with LLMInputs(tiny.model) as seen:
            tiny.model(**tiny.inputs)
    finally:
        inner.image_newline.copy_(saved)
    return seen.prefill["inputs_embeds"].isnan().any(-1)


NEWLINE_FAMILIES = ["llava_next", "llava_onevision", "llava_onevision_video"]
NEWLINE_METHODS = {
    "fastv": ({"layer": 1, "keep": 0.3}, 0, lambda n: round(n * 0.3)),
    "pdrop": ({"layers": (1,), "ratios": (0.3,)}, 1, lambda n: int(n * 0.3)),
    "sparsevlm": ({"layers": (1,), "ratios": (0.4,)}, 0, lambda n: round(n * 0.4)),
}


@pytest.mark.parametrize("method", list(NEWLINE_METHODS))
@pytest.mark.parametrize("family", NEWLINE_FAMILIES)
def test_newlines_are_kept_and_never_ranked_or_counted(family: str, method: str) -> None:
    """Newlines share the image placeholder id, yet are never candidates: kept at every
    stage, left out of the budget, and the candidates ranked are exactly the image patches."""
    tiny = build(family, batch=2)
    positions = original_positions(tiny)
    options, rank_layer, budget = NEWLINE_METHODS[method]
    handle, hidden, _ = run(tiny, method, positions, **options)
    placeholders = visual_mask(tiny)
    newlines = newline_positions(tiny)
    assert bool(newlines.any()) and bool((newlines <= placeholders).all())
    patches = placeholders & ~newlines
    assert handle.stats["separators"] == newlines.sum(-1).tolist()
    assert handle.stats["tokens_before"] == patches.sum(-1).tolist()
    real = tiny.inputs["attention_mask"].bool()
    if method == "sparsevlm":
        rows = [
            raters64(hidden[0][row], placeholders[row], patches[row], real[row]) for row in range(2)
        ]
    else:
        rows = last_rows(tiny)
    scores = received_attention64(tiny, rank_layer, hidden[rank_layer], positions, rows)
    for row in range(2):
        kept = handle.stats["kept_index"][0][row].tolist()
        assert set(newlines[row].nonzero().squeeze(-1).tolist()) <= set(kept)
        expected = top_visual(scores[row], patches[row], budget(int(patches[row].sum())))
        assert kept_visual(handle, 0, row, patches[row]) == expected

"""Contract of the in-LLM methods (fastv, pdrop, sparsevlm) on every tiny family: reversible,
keep-everything is exact, later layers really see fewer tokens, and greedy generation with
the KV cache equals the unpatched decoder layers run by hand on the same per-layer token sets."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from inllm_reference import reference_inllm_decode
from vlm_helpers import FAMILIES, LLMInputs, build, logits, original_positions

import leanvision as lv
from leanvision import Handle
from leanvision.testing.tiny_vlm import build_vlm
from leanvision.testing.vlm_shapes import TINY_SHAPES

# the tiny language models have 2 decoder layers: every stage starts at layer 1
METHODS = {
    "fastv": ({"layer": 1, "keep": 0.25}, {"layer": 1, "keep": 1.0}),
    "pdrop": ({"layers": (1,), "ratios": (0.4,)}, {"layers": (1,), "ratios": (1.0,)}),
    "sparsevlm": ({"layers": (1,), "ratios": (0.4,)}, {"layers": (1,), "ratios": (1.0,)}),
}
CASES = [(family, method) for family in FAMILIES for method in METHODS]


@functools.cache
def deep_llava(batch: int):
    """LLaVA whose language model has 4 layers, for PyramidDrop with several stages."""
    shape = TINY_SHAPES["llava"]
    shape = dataclasses.replace(shape, text=dataclasses.replace(shape.text, layers=4))
    return build_vlm(shape, batch=batch)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_prunes_inside_and_restores(family: str, method: str) -> None:
    tiny = build(family, batch=2)
    before = logits(tiny)
    with lv.vlm.compress(tiny.model, method, **METHODS[method][0]) as handle:
        pruned = logits(tiny)
        assert Handle.active(tiny.model)["vlm"] is handle
    stats = handle.stats
    assert pruned.shape[1] == stats["sequence_length_after"] < before.shape[1]
    assert all(a < b for a, b in zip(stats["tokens_after"], stats["tokens_before"], strict=True))
    assert stats["tokens_per_layer"][0] == before.shape[1] > stats["tokens_per_layer"][-1]
    expected_average = sum(stats["visual_tokens_per_layer"]) / len(stats["visual_tokens_per_layer"])
    assert stats["avg_visual_tokens_per_layer"] == pytest.approx(expected_average)
    assert stats["prefill_flops_after"] < stats["prefill_flops_before"]
    assert Handle.active(tiny.model) == {}
    assert torch.equal(logits(tiny), before), "remove() must restore the model bit for bit"


@pytest.mark.parametrize(("family", "method"), CASES)
def test_keep_everything_is_exact(family: str, method: str) -> None:
    tiny = build(family, batch=2)
    before = logits(tiny)
    with lv.vlm.compress(tiny.model, method, **METHODS[method][1]) as handle:
        same = logits(tiny)
    assert handle.stats["tokens_after"] == handle.stats["tokens_before"]
    assert torch.equal(same, before)


SPARSE = {"layers": (1,), "ratios": (0.4,), "recycle": 0.0}
# batch 1 and 4 on the main families; every other family at batch 2 (left padding, cached)
GENERATE_CASES = [
    *[
        (family, "fastv", METHODS["fastv"][0], batch)
        for family in ("llava", "qwen2_vl")
        for batch in (1, 4)
    ],
    *[
        (family, "fastv", METHODS["fastv"][0], 2)
        for family in FAMILIES
        if family not in ("llava", "qwen2_vl")
    ],
    ("qwen2_vl", "pdrop", METHODS["pdrop"][0], 2),
    ("deep_llava", "pdrop", {"layers": (1, 2, 3), "ratios": (0.5, 0.25, 0.125)}, 1),
    ("deep_llava", "pdrop", {"layers": (1, 2, 3), "ratios": (0.5, 0.25, 0.125)}, 4),
    ("deep_llava", "fastv", {"layer": 2, "tokens": 10, "renumber": True}, 4),
    ("llava", "sparsevlm", SPARSE, 1),
    ("llava", "sparsevlm", SPARSE, 4),
    ("qwen2_5_vl_video", "sparsevlm", SPARSE, 2),
]


@pytest.mark.parametrize(("family", "method", "options", "batch"), GENERATE_CASES)
def test_generate_matches_hand_run_layers(family: str, method: str, options: dict, batch: int):
    tiny = deep_llava(batch) if family == "deep_llava" else build(family, batch=batch)
    steps = 4
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, method, **options) as handle,
        torch.no_grad(),
    ):
        out = tiny.model.generate(**tiny.inputs, max_new_tokens=steps, do_sample=False)
    generated = out[:, tiny.inputs["input_ids"].shape[1] :]
    kept = handle.stats["kept_index"]
    assert kept[-1].shape[1] < tiny.inputs["input_ids"].shape[1]
    assert all(
        call["inputs_embeds"].shape[1] == 1
        for call in seen.calls[1:]
        if "inputs_embeds" in call and call["inputs_embeds"] is not None
    )
    expected = reference_inllm_decode(
        tiny,
        seen.prefill["inputs_embeds"],
        original_positions(tiny),
        kept,
        handle.stats["stages"],
        steps,
        renumber=handle.stats["renumber"],
    )
    assert torch.equal(generated, expected)

"""Contract of every pre-LLM method on every tiny family: reversible, a no-op setting is
exact, the language model really sees fewer tokens, and generation with the KV cache equals
the unpatched model decoding the same pruned prompt built by hand."""

from __future__ import annotations

import pytest
import torch
from vlm_helpers import (
    IMAGE_FAMILIES,
    IMAGE_METHODS,
    VIDEO_FAMILIES,
    VIDEO_METHODS,
    LLMInputs,
    build,
    logits,
    reference_decode,
)

import leanvision as lv
from leanvision import Handle

CASES = [(f, m) for f in IMAGE_FAMILIES + VIDEO_FAMILIES for m in IMAGE_METHODS] + [
    (f, m) for f in VIDEO_FAMILIES for m in VIDEO_METHODS
]


def _options(method: str, keep_all: bool = False) -> dict:
    table = VIDEO_METHODS if method in VIDEO_METHODS else IMAGE_METHODS
    return table[method][1 if keep_all else 0]


@pytest.mark.parametrize(("family", "method"), CASES)
def test_prunes_and_restores(family: str, method: str) -> None:
    tiny = build(family, batch=2)
    before = logits(tiny)
    length = tiny.inputs["input_ids"].shape[1]
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, method, **_options(method)) as handle,
    ):
        pruned = logits(tiny)
        assert Handle.active(tiny.model)["vlm"] is handle
    llm_length = seen.prefill["inputs_embeds"].shape[1]
    assert llm_length < length, "the language model must run on a shorter sequence"
    assert pruned.shape[1] == llm_length
    assert sum(handle.stats["tokens_after"]) < sum(handle.stats["tokens_before"])
    assert handle.stats["prefill_flops_after"] < handle.stats["prefill_flops_before"]
    assert Handle.active(tiny.model) == {}
    assert torch.equal(logits(tiny), before), "remove() must restore the model bit for bit"


@pytest.mark.parametrize(("family", "method"), CASES)
def test_keep_everything_is_exact(family: str, method: str) -> None:
    tiny = build(family, batch=2)
    before = logits(tiny)
    with lv.vlm.compress(tiny.model, method, **_options(method, keep_all=True)) as handle:
        same = logits(tiny)
    assert handle.stats["tokens_after"] == handle.stats["tokens_before"]
    assert torch.equal(same, before)


GENERATE_CASES = (
    [("llava", m) for m in IMAGE_METHODS]
    + [("qwen2_vl", m) for m in IMAGE_METHODS]
    + [(f, "visionzip") for f in ("llava_next", "llava_onevision", "qwen2_5_vl", "idefics3")]
    + [(f, m) for f in ("qwen2_vl_video", "llava_onevision_video") for m in VIDEO_METHODS]
)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(("family", "method"), GENERATE_CASES)
def test_generate_matches_hand_built_prompt(family: str, method: str, batch: int) -> None:
    tiny = build(family, batch=batch)
    steps = 4
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, method, **_options(method)) as handle,
        torch.no_grad(),
    ):
        out = tiny.model.generate(**tiny.inputs, max_new_tokens=steps, do_sample=False)
    generated = out[:, tiny.inputs["input_ids"].shape[1] :]
    prefill = seen.prefill["inputs_embeds"]
    assert prefill.shape[1] < tiny.inputs["input_ids"].shape[1]
    assert all(call["inputs_embeds"].shape[1] == 1 for call in seen.calls[1:]), "prune once"
    kept, renumber = handle.stats["kept_positions"], handle.stats["renumber"]
    expected = reference_decode(tiny, prefill, kept, steps, renumber=renumber)
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_renumber_continues_after_the_last_kept_position(family: str) -> None:
    tiny = build(family, batch=2)
    with (
        LLMInputs(tiny.model) as seen,
        lv.vlm.compress(tiny.model, "random", keep=0.25, renumber=True),
        torch.no_grad(),
    ):
        tiny.model.generate(**tiny.inputs, max_new_tokens=2, do_sample=False)
    mask = seen.prefill["attention_mask"]
    expected = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    assert torch.equal(seen.prefill["position_ids"], expected)
    first_decode = seen.calls[1]["position_ids"]
    assert torch.equal(first_decode[:, 0], mask.sum(-1))

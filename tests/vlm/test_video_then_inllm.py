"""A video method followed by an in-LLM method (``then="fastv"``...): one handle, exact
removal, the in-LLM stage prunes the already-shortened sequence, and greedy generation equals
the unpatched decoder layers run by hand on the two stages' token sets."""

from __future__ import annotations

import pytest
import torch
from inllm_reference import StageInputs, reference_inllm_decode
from vlm_helpers import LLMInputs, build, logits, original_positions

import leanvision as lv
from leanvision import Handle

FAMILIES = ["llava_onevision_video", "qwen2_vl_video"]
# the tiny language models have 2 decoder layers: the in-LLM stage starts at layer 1
VIDEO = {
    "temporal": {"threshold": 0.0},
    "progressive_pool": {"stride": 2, "group": 2},
}
THEN = {
    "fastv": ({"layer": 1}, {"keep": 0.5}),
    "pdrop": ({"layers": (1,), "ratios": (0.5,)}, {}),
    "sparsevlm": ({"layers": (1,), "ratios": (0.5,)}, {}),
}


def _compose(model, video: str, then: str):
    options, budget = THEN[then]
    return lv.vlm.compress(model, video, **VIDEO[video], then=then, then_options=options, **budget)


@pytest.mark.parametrize("video", list(VIDEO))
@pytest.mark.parametrize("family", FAMILIES)
def test_composed_prunes_more_and_restores(family: str, video: str) -> None:
    tiny = build(family, batch=2)
    before = logits(tiny)
    length = tiny.inputs["input_ids"].shape[1]
    with lv.vlm.compress(tiny.model, video, **VIDEO[video]) as alone:
        logits(tiny)
    with LLMInputs(tiny.model) as seen, _compose(tiny.model, video, "fastv") as handle:
        logits(tiny)
        assert list(Handle.active(tiny.model)) == ["vlm"]
        assert Handle.active(tiny.model)["vlm"] is handle
    stats = handle.stats
    short = alone.stats["sequence_length_after"]
    assert short < length
    assert seen.prefill["inputs_embeds"].shape[1] == short
    # layer 0 sees the video stage's sequence, layer 1 fewer tokens
    assert stats["tokens_per_layer"][0] == short
    assert stats["tokens_per_layer"][-1] < short
    assert stats["avg_tokens_per_layer"] < alone.stats["avg_tokens_per_layer"]
    assert stats["sequence_length_before"] == length
    assert stats["video_stage"]["sequence_length_after"] == short
    assert sum(stats["tokens_after"]) < sum(stats["tokens_before"])
    assert stats["prefill_flops_after"] < alone.stats["prefill_flops_after"]
    assert stats["prefill_flops_before"] == alone.stats["prefill_flops_before"]
    assert Handle.active(tiny.model) == {}
    assert torch.equal(logits(tiny), before), "remove() must restore the model bit for bit"


CASES = [(f, "temporal", "fastv") for f in FAMILIES] + [
    ("qwen2_vl_video", "progressive_pool", "pdrop"),
    ("llava_onevision_video", "temporal", "sparsevlm"),
]


@pytest.mark.parametrize(("family", "video", "then"), CASES)
def test_generate_matches_hand_run_stages(family: str, video: str, then: str) -> None:
    tiny = build(family, batch=1)
    steps = 4
    with (
        LLMInputs(tiny.model) as seen,
        _compose(tiny.model, video, then) as handle,
        torch.no_grad(),
    ):
        entering = StageInputs(tiny.model, THEN[then][0].get("layer", 1))
        try:
            out = tiny.model.generate(**tiny.inputs, max_new_tokens=steps, do_sample=False)
        finally:
            entering.close()
    generated = out[:, tiny.inputs["input_ids"].shape[1] :]
    assert all(call["inputs_embeds"].shape[1] == 1 for call in seen.calls[1:]), "prune once"
    # the two stages' token sets, in original prompt positions
    short = torch.tensor(handle.stats["kept_positions"])  # (1, L') after the video stage
    inllm = handle.stats["kept_index"][-1]  # (1, L'') indices into the shortened sequence
    assert inllm.shape[1] < short.shape[1] < tiny.inputs["input_ids"].shape[1]
    sets = [short, short.gather(1, inllm)]
    # what the patched language model received, put back at the original positions; the
    # reference's stage 1 starts at layer 0 (it sees only the video stage's tokens)
    prefill = seen.prefill["inputs_embeds"]
    full = torch.zeros(1, tiny.inputs["input_ids"].shape[1], prefill.shape[-1])
    full[0, short[0]] = prefill[0]
    stages = [0, *handle.stats["stages"]]
    # sparsevlm recycles: the tokens it inserts repeat a position, so the reference follows
    # the reported sources and takes the inserted hidden states the layer received
    slots = handle.stats["inserted_index"][-1]
    inserted = None
    if slots is not None:
        values = entering.prefill.gather(1, slots.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        inserted = [None, (slots, values)]
    assert (slots is not None) == (then == "sparsevlm"), "sparsevlm recycles dropped tokens"
    expected = reference_inllm_decode(
        tiny,
        full,
        original_positions(tiny),
        sets,
        stages,
        steps,
        renumber=False,
        sources=[None, handle.stats["kept_source"][-1]],
        inserted=inserted,
    )
    assert torch.equal(generated, expected)


def test_bad_then_options_raise_before_patching() -> None:
    tiny = build("qwen2_vl_video", batch=1)
    with pytest.raises(ValueError, match="then_options needs then"):
        lv.vlm.compress(tiny.model, "temporal", then_options={"layer": 1})
    with pytest.raises(ValueError, match="in-LLM method"):
        lv.vlm.compress(tiny.model, "progressive_pool", then="pool")
    with pytest.raises(ValueError, match="depth"):
        lv.vlm.compress(tiny.model, "temporal", then="fastv", then_options={"layer": 9})
    assert Handle.active(tiny.model) == {}

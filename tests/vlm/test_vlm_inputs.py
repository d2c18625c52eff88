"""Bad input raises before anything is patched; SDPA and eager attention select the same
tokens; unsupported models name the supported families."""

from __future__ import annotations

import pytest
import torch
from vlm_helpers import build, logits

import leanvision as lv
from leanvision import Handle, UnsupportedModelError


def _untouched(tiny, before: torch.Tensor) -> None:
    assert Handle.active(tiny.model) == {}
    assert torch.equal(logits(tiny), before)


@pytest.mark.parametrize(
    ("method", "options", "match"),
    [
        ("visionzip", {"tokens": 0}, "tokens"),
        ("pool", {"keep": 0.0}, "keep"),
        ("divprune", {"tokens": 65}, "tokens=65"),  # 64 tokens per image
        ("visionzip", {"layer": 2}, "layer=2"),  # the tower has 2 blocks
        ("bipartite-merge", {"layer": -3}, "layer=-3"),
        ("fastv", {"layer": 2}, "layer=2"),  # the language model has 2 layers
        ("pdrop", {"layers": (1, 5), "ratios": (0.5, 0.25)}, "depth"),
        ("sparsevlm", {"layers": (1,), "ratios": (0.0,)}, "ratios"),
        ("temporal", {}, "video"),  # LLaVA-1.5 takes images only
        ("progressive_pool", {}, "video"),
        ("nonexistent", {}, "nonexistent"),
    ],
)
def test_bad_options_raise_before_patching(method: str, options: dict, match: str) -> None:
    tiny = build("llava", batch=2)
    before = logits(tiny)
    with pytest.raises((ValueError, TypeError, KeyError), match=match):
        lv.vlm.compress(tiny.model, method, **options)
    _untouched(tiny, before)


def test_renumber_on_mrope_raises() -> None:
    tiny = build("qwen2_vl", batch=2)
    with pytest.raises(ValueError, match="renumber"):
        lv.vlm.compress(tiny.model, "pool", keep=0.5, renumber=True)
    assert Handle.active(tiny.model) == {}


def test_windowed_block_of_qwen2_5_is_refused() -> None:
    tiny = build("qwen2_5_vl", batch=2)
    with pytest.raises(ValueError, match="windowed"):
        lv.vlm.compress(tiny.model, "visionzip", layer=0, keep=0.5)  # full blocks: 1, 3


def test_images_without_placeholders_raise() -> None:
    tiny = build("llava", batch=2)
    inputs = dict(tiny.inputs)
    ids = inputs["input_ids"].clone()
    ids[ids == tiny.info["image_token_id"]] = tiny.info["tokenizer"].convert_tokens_to_ids("w0")
    inputs["input_ids"] = ids
    with (
        lv.vlm.compress(tiny.model, "visionzip", keep=0.5),
        pytest.raises(ValueError, match="placeholder"),
    ):
        tiny.model(**inputs)
    assert Handle.active(tiny.model) == {}


def test_fastv_budget_above_the_prompt_raises() -> None:
    tiny = build("llava", batch=2)
    with (
        lv.vlm.compress(tiny.model, "fastv", layer=1, tokens=65),
        pytest.raises(ValueError, match="tokens=65"),
    ):
        logits(tiny)


def test_applying_twice_raises() -> None:
    tiny = build("llava", batch=2)
    with (
        lv.vlm.compress(tiny.model, "pool", keep=0.5),
        pytest.raises(Exception, match="(?i)already|twice|active"),
    ):
        lv.vlm.compress(tiny.model, "fastv", layer=1)


def test_unsupported_model_lists_families() -> None:
    tiny = build("llava", batch=1)
    for model in (torch.nn.Linear(2, 2), tiny.model.model):
        with pytest.raises(UnsupportedModelError) as error:
            lv.vlm.compress(model, "pool")
        for family in ("llava", "llava_next", "llava_onevision", "qwen2_vl", "idefics3"):
            assert family in str(error.value)


SELECTIONS = [
    ("llava", "visionzip", {"keep": 0.3}),
    ("llava", "prumerge+", {"keep": 0.3}),
    ("llava", "bipartite-merge", {"keep": 0.3}),
    ("qwen2_vl", "visionzip", {"keep": 0.3}),
    ("llava_onevision", "visionzip", {"keep": 0.3}),
    ("llava", "fastv", {"layer": 1, "keep": 0.25}),
    ("qwen2_vl", "fastv", {"layer": 1, "keep": 0.25}),
    ("llava", "sparsevlm", {"layers": (1,), "ratios": (0.4,)}),
]


@pytest.mark.parametrize(("family", "method", "options"), SELECTIONS)
def test_sdpa_and_eager_select_the_same_tokens(family: str, method: str, options: dict) -> None:
    kept = []
    for attn in ("sdpa", "eager"):
        tiny = build(family, batch=2, attn=attn)
        with lv.vlm.compress(tiny.model, method, **options) as handle:
            logits(tiny)
        if "kept_positions" in handle.stats:
            kept.append(handle.stats["kept_positions"])
        else:
            kept.append([s.tolist() for s in handle.stats["kept_index"]])
    assert kept[0] == kept[1]

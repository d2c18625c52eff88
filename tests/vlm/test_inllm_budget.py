"""One budget for every in-LLM method: ``keep``/``tokens`` is what the last stage leaves,
earlier stages are derived from it, ``ratios`` is the per-stage option, and default stage
layers scale with the language model's depth (so the defaults run on every tiny model)."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import pytest
import torch
from vlm_helpers import FAMILIES, build, logits

import leanvision as lv
from leanvision.testing.tiny_vlm import build_vlm
from leanvision.testing.vlm_shapes import TINY_SHAPES
from leanvision.vlm import PDrop, SparseVLM
from leanvision.vlm.inllm.budget import scaled_layers

IN_LLM = ("fastv", "pdrop", "sparsevlm")


@functools.cache
def llava_with_depth(depth: int):
    """Tiny LLaVA whose language model has ``depth`` decoder layers (64 visual tokens)."""
    shape = TINY_SHAPES["llava"]
    shape = dataclasses.replace(shape, text=dataclasses.replace(shape.text, layers=depth))
    return build_vlm(shape, batch=1)


def run(tiny, method: str, **options) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shallow models: fewer stages than the paper's
        with lv.vlm.compress(tiny.model, method, **options) as handle:
            logits(tiny)
    return handle.stats


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", IN_LLM)
def test_defaults_and_one_keep_run_on_every_tiny_model(family: str, method: str) -> None:
    tiny = build(family, batch=2)
    before = logits(tiny)
    for options in ({}, {"keep": 0.5}):
        stats = run(tiny, method, **options)
        assert stats["stages"] == [1], "2 decoder layers: one stage, after layer 1"
        assert all(
            a < b for a, b in zip(stats["tokens_after"], stats["tokens_before"], strict=True)
        )
    assert torch.equal(logits(tiny), before)


@pytest.mark.parametrize("budget", [{"keep": 0.3}, {"tokens": 7}])
def test_one_budget_means_the_same_tokens_left_for_every_method(budget: dict) -> None:
    tiny = llava_with_depth(4)  # pdrop: 3 stages, sparsevlm: 2, fastv: 1
    left = {}
    for method in IN_LLM:
        extra = {"recycle": 0.0} if method == "sparsevlm" else {}
        stats = run(tiny, method, **budget, **extra)
        left[method] = stats["tokens_after"]
        per_layer = stats["visual_tokens_per_layer"]
        assert per_layer == sorted(per_layer, reverse=True), "stages never grow"
    expected = [7] if "tokens" in budget else [round(64 * 0.3)]
    assert left == {method: expected for method in IN_LLM}


def test_default_layers_scale_with_depth_and_are_reported() -> None:
    paper = {"fastv": [2], "pdrop": [8, 16, 24], "sparsevlm": [3, 7, 16]}
    deep = llava_with_depth(32)
    for method, layers in paper.items():
        assert run(deep, method)["stages"] == layers, "32 layers: the papers' own layers"
    shallow = llava_with_depth(4)
    assert run(shallow, "fastv")["stages"] == [1]
    assert run(shallow, "pdrop")["stages"] == [1, 2, 3]
    assert run(shallow, "sparsevlm")["stages"] == [1, 2]
    # 7B Qwen2-VL (28 layers) and 0.5B OneVision (24): FastV keeps K=2
    assert scaled_layers((2,), 28) == scaled_layers((2,), 24) == (2,)
    assert scaled_layers((3, 7, 16), 28) == (3, 7, 14)
    assert scaled_layers((3, 7, 16), 24) == (3, 6, 12)
    assert scaled_layers((8, 16, 24), 24) == (6, 12, 18)
    for depth in (2, 3, 7, 24, 28, 40, 80):
        for layers in paper.values():
            scaled = scaled_layers(tuple(layers), depth)
            assert list(scaled) == sorted(set(scaled)) and scaled[0] >= 1 and scaled[-1] < depth


def test_paper_settings_are_unchanged_on_a_32_layer_model() -> None:
    deep = llava_with_depth(32)
    derived = run(deep, "pdrop", keep=0.125)
    explicit = run(deep, "pdrop", layers=(8, 16, 24), ratios=(0.5, 0.25, 0.125))
    assert derived["visual_tokens_per_layer"] == explicit["visual_tokens_per_layer"]
    pairs = zip(derived["kept_index"], explicit["kept_index"], strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    default = run(deep, "sparsevlm", recycle=0.0)
    schedule = run(deep, "sparsevlm", recycle=0.0, ratios=(300 / 576, 200 / 576, 110 / 576))
    assert default["visual_tokens_per_layer"] == schedule["visual_tokens_per_layer"]


def test_stages_derived_from_one_budget() -> None:
    n = torch.tensor([576])

    def targets(config, stages=3):
        return [int(config.target(n, stage, stages)) for stage in range(stages)]

    assert targets(PDrop()) == [288, 144, 72]  # the paper's 0.5 / 0.25 / 0.125
    assert targets(PDrop(keep=0.125)) == [288, 144, 72]
    assert targets(PDrop(tokens=64)) == [276, 133, 64]  # 576 * (1/9) ** (s/3)
    assert targets(SparseVLM()) == [300, 200, 110]  # v1.5's schedule
    assert targets(SparseVLM(tokens=64)) == [175, 116, 64]  # its shape, ending at 64
    assert targets(SparseVLM(keep=0.5)) == [576, 524, 288]  # never more than every token
    assert targets(SparseVLM(ratios=(0.5, 0.4, 0.1))) == [288, 230, 58]
    assert targets(PDrop(ratios=(0.5, 0.4, 0.1))) == [288, 230, 57]  # int(n * r)
    for config in (PDrop(keep=0.3), SparseVLM(keep=0.3)):
        assert targets(config, 1) == [round(576 * 0.3)]


@pytest.mark.parametrize("method", ["pdrop", "sparsevlm"])
def test_budget_errors_say_what_to_pass(method: str) -> None:
    tiny = build("llava")
    with pytest.raises(TypeError, match=r"keep is one overall budget.*ratios=\(0\.5, 0\.25\)"):
        lv.vlm.compress(tiny.model, method, keep=(0.5, 0.25))
    with pytest.raises(TypeError, match=r"tokens is one overall budget.*ratios="):
        lv.vlm.compress(tiny.model, method, tokens=(30, 10))
    with pytest.raises(ValueError, match="pass one budget"):
        lv.vlm.compress(tiny.model, method, keep=0.5, ratios=(0.5,))
    with pytest.raises(ValueError, match="pass one budget"):
        lv.vlm.compress(tiny.model, method, tokens=8, ratios=(0.5,))
    # ratios without layers must match the default stages of this (2-layer) model
    with pytest.raises(ValueError, match=r"lists 3 stage\(s\).*layers=\[1\]"):
        lv.vlm.compress(tiny.model, method, ratios=(0.5, 0.25, 0.125))
    assert lv.Handle.active(tiny.model) == {}


@pytest.mark.parametrize("method", ["pdrop", "sparsevlm"])
def test_tokens_above_the_prompt_raise(method: str) -> None:
    tiny = build("llava")
    with (
        lv.vlm.compress(tiny.model, method, layers=(1,), tokens=65) as handle,
        pytest.raises(ValueError, match="tokens=65 is more than the prompt's 64 visual tokens"),
    ):
        logits(tiny)
    assert "tokens_after" not in handle.stats


def test_adaptive_sparsevlm_stays() -> None:
    tiny = build("llava")
    stats = run(tiny, "sparsevlm", adaptive=True)
    assert stats["stages"] == [1]
    with pytest.raises(ValueError, match="adaptive=True"):
        lv.vlm.compress(tiny.model, "sparsevlm", adaptive=True, keep=0.5)


def test_shallow_default_warns_at_the_users_line() -> None:
    tiny = build("llava")
    with pytest.warns(UserWarning, match=r"pdrop: .* 2 decoder layers.*layers=\[1\]") as caught:
        handle = lv.vlm.compress(tiny.model, "pdrop")
    handle.remove()
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lv.vlm.compress(tiny.model, "pdrop", layers=(1,)).remove()  # chosen: no warning
        lv.vlm.compress(tiny.model, "fastv").remove()  # one stage: nothing collapses

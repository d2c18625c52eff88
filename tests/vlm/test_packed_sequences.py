"""The packed-sequence calls only flash attention makes (``cu_seq_lens_q``), run on the CPU.

Under a flash implementation, Qwen2-VL's vision attention packs every image of a batch into
one sequence, query/key ``(1, H, total, d)``, and passes the boundaries as ``cu_seq_lens_q``;
every other implementation gets one call per image. ``ScoreRecorder`` splits packed calls back
into one record per image. The flash kernels need a GPU, so here a varlen function built on
sdpa stands in for them, registered under a name containing "flash" (what transformers
checks), and the packed records are compared with unpacked calls and a float64 oracle.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import leanvision as lv
from leanvision import testing
from leanvision.compat import transformers as tf_compat
from leanvision.core.handle import Handle
from leanvision.vlm.attention_tap import AttentionTap
from leanvision.vlm.capture import ScoreRecorder

STANDIN = "leanvision_test_flash_varlen"
STANDIN_CALLS: list[bool] = []  # one entry per call: whether it was packed


def varlen_standin(module, query, key, value, attention_mask, **kwargs):
    """Flash-varlen semantics on the CPU: attention within each ``cu_seq_lens_q`` segment."""
    bounds = kwargs.pop("cu_seq_lens_q", None)
    STANDIN_CALLS.append(bounds is not None)
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
        kwargs.pop(name, None)
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    edges = bounds.tolist()
    outputs = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs
        )[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    return torch.cat(outputs, dim=1), None  # sdpa returns (B, L, H, d)


AttentionInterface.register(STANDIN, varlen_standin)


def explicit_scores(query: torch.Tensor, key: torch.Tensor, scale: float, rows: str):
    """Float64 softmax column means over heads and the chosen rows, one (1, H, L, d) sequence."""
    probs = ((query.double() @ key.double().transpose(-1, -2)) * scale).softmax(-1)[0]
    return (probs[:, :1] if rows == "cls" else probs).mean(1).mean(0)


class Attention(nn.Module):
    scaling = 0.3


# Four sequences, one of length 1, packed into 27 tokens.
LENGTHS = [5, 12, 1, 9]


@pytest.mark.parametrize("rows", ["cls", "all"])
def test_recorder_splits_packed_call_like_one_call_per_sequence(rows):
    queries = [torch.randn(1, 4, n, 16) for n in LENGTHS]
    keys = [torch.randn(1, 4, n, 16) for n in LENGTHS]
    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    common = {"scaling": 0.3, "dropout": 0.0, "is_causal": False}
    packed_kwargs = {  # what Qwen2-VL's vision attention passes under flash attention
        **common,
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": max(LENGTHS),
        "max_length_k": max(LENGTHS),
    }
    packed = ScoreRecorder(rows, want_scores=True, want_keys=True)
    packed(Attention(), torch.cat(queries, 2), torch.cat(keys, 2), None, packed_kwargs)
    unpacked = ScoreRecorder(rows, want_scores=True, want_keys=True)
    for query, key in zip(queries, keys, strict=True):
        unpacked(Attention(), query, key, None, common)

    assert len(packed.records) == len(unpacked.records) == len(LENGTHS)
    for (scores, mean_keys), (want_scores, want_keys), query, key in zip(
        packed.records, unpacked.records, queries, keys, strict=True
    ):
        torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(mean_keys, want_keys)
        oracle = explicit_scores(query, key, 0.3, rows)
        torch.testing.assert_close(scores.double(), oracle, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(mean_keys.double(), key[0].double().mean(0))


@pytest.fixture(scope="module")
def qwen2_vl():
    return testing.tiny_qwen2_vl(batch=2)


@pytest.fixture
def qwen2_vl_tower(qwen2_vl):
    inputs = qwen2_vl.inputs
    return qwen2_vl.model.model.visual, inputs["pixel_values"], inputs["image_grid_thw"]


def _run_tower(tower, pixel_values, grid, tap_name: str, delegate: str):
    """The vision tower with a tap on its last block's attention: (output, recorder, calls)."""
    tap = AttentionTap(tap_name)
    recorder = ScoreRecorder("all", want_scores=True, want_keys=True)
    calls = []

    def listener(module, query, key, mask, kwargs):
        calls.append((query, key, kwargs))
        recorder(module, query, key, mask, kwargs)

    handle = Handle(tower, "test", "packed-sequences")
    try:
        tap.install(handle, tower.config, delegate)
        stop = tap.listen(tower.blocks[-1].attn, listener)
        with torch.no_grad():
            output = tower(pixel_values, grid_thw=grid)
        stop()
    finally:
        handle.remove()
    return getattr(output, "pooler_output", output), recorder, calls


def test_qwen2_vl_packed_flash_call_records_like_per_image_calls(qwen2_vl_tower):
    tower, pixel_values, grid = qwen2_vl_tower
    before = tower.config._attn_implementation
    # A tap whose name contains "flash" is handed transformers' own packed call.
    packed_out, packed, packed_calls = _run_tower(
        tower, pixel_values, grid, "leanvision_test_flash_tap", STANDIN
    )
    split_out, split, split_calls = _run_tower(
        tower, pixel_values, grid, "leanvision_test_split_tap", "sdpa"
    )
    assert tower.config._attn_implementation == before  # both handles restored it

    images = grid.shape[0]
    assert len(packed_calls) == 1 and len(split_calls) == images
    query, key, kwargs = packed_calls[0]
    assert query.shape[0] == 1 and "cu_seq_lens_q" in kwargs
    assert kwargs["cu_seq_lens_q"].tolist()[-1] == query.shape[2]
    torch.testing.assert_close(packed_out, split_out, rtol=1e-5, atol=1e-6)

    assert len(packed.records) == len(split.records) == images
    bounds = kwargs["cu_seq_lens_q"].tolist()
    for image, ((scores, keys), (want_scores, want_keys)) in enumerate(
        zip(packed.records, split.records, strict=True)
    ):
        torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(keys, want_keys, rtol=1e-5, atol=1e-6)
        start, end = bounds[image], bounds[image + 1]
        scale = tower.blocks[-1].attn.scaling
        oracle = explicit_scores(query[:, :, start:end], key[:, :, start:end], scale, "all")
        torch.testing.assert_close(scores.double(), oracle, rtol=1e-5, atol=1e-7)


def test_compress_on_a_flash_configured_vision_tower_matches_sdpa(qwen2_vl):
    # compress() puts its own tap (no "flash" in its name) in front of the configured
    # implementation, so Qwen2-VL's tower then calls it once per image, and the tap hands
    # each call to the flash stand-in: the same tokens must be kept as under sdpa.
    model, inputs = qwen2_vl.model, qwen2_vl.inputs
    with torch.no_grad(), lv.vlm.compress(model, "visionzip", keep=0.3):
        want = model(**inputs).logits
    handle = Handle(model, "test", "flash-vision")
    STANDIN_CALLS.clear()
    try:
        tf_compat.select_attention(handle, model.model.visual.config, STANDIN)
        with torch.no_grad(), lv.vlm.compress(model, "visionzip", keep=0.3):
            got = model(**inputs).logits
    finally:
        handle.remove()
    assert STANDIN_CALLS and not any(STANDIN_CALLS)  # the stand-in ran, on unpacked calls
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

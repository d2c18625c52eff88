"""Tiny VLM factories: real transformers classes, processor-made inputs, seeded, offline."""

from __future__ import annotations

import functools

import pytest
import torch

from leanvision.testing import tiny_vlm
from leanvision.testing.vlm_shapes import REAL_SHAPES, TINY_SHAPES, scale_shape

# (case id, factory name, extra kwargs)
CASES = [
    ("llava", "tiny_llava", {}),
    ("llava_next", "tiny_llava_next", {}),
    ("llava_onevision", "tiny_llava_onevision", {}),
    ("llava_onevision-video", "tiny_llava_onevision", {"video": True}),
    ("qwen2_vl", "tiny_qwen2_vl", {}),
    ("qwen2_vl-video", "tiny_qwen2_vl", {"video": True}),
    ("qwen2_5_vl", "tiny_qwen2_5_vl", {}),
    ("qwen2_5_vl-video", "tiny_qwen2_5_vl", {"video": True}),
    ("idefics3", "tiny_idefics3", {}),
]
CASE_IDS = [case[0] for case in CASES]


@functools.cache
def _built(case_id: str, batch: int, seed: int = 0):
    _, factory, kwargs = CASES[CASE_IDS.index(case_id)]
    return getattr(tiny_vlm, factory)(batch=batch, seed=seed, **kwargs)


def _placeholder_id(tiny) -> int:
    key = "video_token_id" if tiny.info["media"] == "video" else "image_token_id"
    return tiny.info[key]


def _tokens_per_item(tiny) -> int:
    key = "num_video_tokens" if tiny.info["media"] == "video" else "num_image_tokens"
    return tiny.info[key]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_forward_and_greedy_generate(case_id, batch):
    tiny = _built(case_id, batch)
    input_ids = tiny.inputs["input_ids"]
    with torch.no_grad():
        logits = tiny.model(**tiny.inputs).logits
    vocab = tiny.model.config.get_text_config().vocab_size
    assert logits.shape == (batch, input_ids.shape[1], vocab)
    assert torch.isfinite(logits).all()

    out = tiny.model.generate(**tiny.inputs, max_new_tokens=3, do_sample=False)
    new = out.shape[1] - input_ids.shape[1]
    assert out.shape[0] == batch and 1 <= new <= 3
    assert torch.equal(out[:, : input_ids.shape[1]], input_ids)
    # Greedy decoding picks the argmax of the prompt's last logits first.
    assert torch.equal(out[:, input_ids.shape[1]], logits[:, -1].argmax(-1))


def test_generate_batch_4_matches_rows_run_alone():
    tiny = tiny_vlm.tiny_llava(batch=4)
    out = tiny.model.generate(**tiny.inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 4
    # Left padding must not change what a row generates: row 0 is the unpadded longest.
    single = tiny_vlm.tiny_llava(batch=1)
    alone = single.model.generate(**single.inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[0, -alone.shape[1] :], alone[0])


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_batch_rows_are_left_padded_differently(case_id):
    tiny = _built(case_id, 2)
    mask = tiny.inputs["attention_mask"]
    ids = tiny.inputs["input_ids"]
    lengths = mask.sum(1)
    assert lengths[0] != lengths[1]
    assert (mask[:, -1] == 1).all(), "padding must be on the left"
    assert (ids[mask == 0] == tiny.info["pad_token_id"]).all()
    # Each row carries its own image/video, with different pixels.
    pixels = next(v for k, v in tiny.inputs.items() if k.startswith("pixel_values"))
    halves = pixels.reshape(2, -1)  # rows have equal-size media, so halves are the rows
    assert not torch.equal(halves[0], halves[1])


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_placeholder_count_matches_info(case_id):
    tiny = _built(case_id, 2)
    per_row = (tiny.inputs["input_ids"] == _placeholder_id(tiny)).sum(1)
    assert per_row.tolist() == [_tokens_per_item(tiny)] * 2
    info = tiny.info
    assert info["family"] == TINY_SHAPES[info["family"]].family
    assert {"image_token_id", "pad_token_id", "num_image_tokens"} <= info.keys()
    if info["family"] in ("llava_onevision", "qwen2_vl", "qwen2_5_vl"):
        assert info["video_token_id"] != info["image_token_id"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_same_seed_same_model_other_seed_differs(case_id):
    _, factory, kwargs = CASES[CASE_IDS.index(case_id)]
    first, again = _built(case_id, 1), getattr(tiny_vlm, factory)(batch=1, seed=0, **kwargs)
    other = getattr(tiny_vlm, factory)(batch=1, seed=1, **kwargs)
    weights, weights_again = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)
    assert all(torch.equal(first.inputs[k], again.inputs[k]) for k in first.inputs)
    other_weights = other.model.state_dict()
    assert not all(torch.equal(weights[k], other_weights[k]) for k in weights)


def test_family_specific_inputs():
    qwen = _built("qwen2_vl", 2)
    assert qwen.inputs["mm_token_type_ids"].shape == qwen.inputs["input_ids"].shape
    assert qwen.inputs["image_grid_thw"].tolist() == [[1, 12, 16]] * 2
    assert "video_grid_thw" in _built("qwen2_vl-video", 1).inputs
    idefics = _built("idefics3", 1)
    assert idefics.inputs["pixel_attention_mask"].shape[1] == 5  # 2x2 crops + global view
    onevision = _built("llava_onevision", 1)
    assert onevision.model.config.vision_config.model_type == "siglip_vision_model"


def test_llava_next_uses_anyres_crops_and_newline():
    tiny = _built("llava_next", 1)
    assert tiny.inputs["image_sizes"].tolist() == [list(TINY_SHAPES["llava_next"].image_hw)]
    assert tiny.inputs["pixel_values"].shape[1] > 1  # base view + crops
    assert tiny.model.model.image_newline.shape == (TINY_SHAPES["llava_next"].text.hidden,)
    base = (32 // 4) ** 2
    assert tiny.info["num_image_tokens"] > base


def test_qwen2_5_vl_has_windowed_and_global_blocks():
    vision = _built("qwen2_5_vl", 1).model.config.vision_config
    full = set(vision.fullatt_block_indexes)
    assert full and full < set(range(vision.depth))


def test_eager_and_sdpa_agree():
    eager = tiny_vlm.tiny_llava(batch=2, attn_implementation="eager")
    sdpa = _built("llava", 2)
    with torch.no_grad():
        a = eager.model(**eager.inputs).logits
        b = sdpa.model(**sdpa.inputs).logits
    mask = sdpa.inputs["attention_mask"].bool()
    torch.testing.assert_close(a[mask], b[mask], rtol=1e-4, atol=1e-4)


def test_llava_7b_shaped_keeps_576_image_tokens_and_scales_depth():
    tiny = tiny_vlm.vlm_shaped("llava-1.5-7b", width_scale=1 / 64, depth_scale=1 / 16)
    ids = tiny.inputs["input_ids"]
    assert tiny.info["num_image_tokens"] == 576
    assert int((ids == tiny.info["image_token_id"]).sum()) == 576
    assert 30 <= ids.shape[1] - 576 <= 60  # a realistic prompt around the image
    config = tiny.model.config
    assert config.text_config.num_hidden_layers == 32 // 16
    assert len(tiny.model.model.language_model.layers) == 2
    assert config.vision_config.image_size == 336 and config.vision_config.patch_size == 14
    assert config.text_config.vocab_size == 32064
    with torch.no_grad():  # last position only: full-vocab logits of 600 tokens are big
        logits = tiny.model(**tiny.inputs, logits_to_keep=1).logits
    assert logits.shape == (1, 1, 32064) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(REAL_SHAPES))
def test_scale_one_is_the_real_shape(name):
    assert scale_shape(REAL_SHAPES[name], 1, 1) == REAL_SHAPES[name]


@pytest.mark.parametrize("name", [n for n in sorted(REAL_SHAPES) if n != "llava-1.5-7b"])
def test_every_named_shape_builds_and_runs(name):
    tiny = tiny_vlm.vlm_shaped(name, width_scale=1 / 128, depth_scale=1 / 32)
    ids = tiny.inputs["input_ids"]
    assert int((ids == tiny.info["image_token_id"]).sum()) == tiny.info["num_image_tokens"]
    real = REAL_SHAPES[name]
    assert tiny.info["num_text_layers"] == max(1, round(real.text.layers / 32))
    with torch.no_grad():
        logits = tiny.model(**tiny.inputs, logits_to_keep=1).logits
    assert logits.shape[-1] == real.vocab_size and torch.isfinite(logits).all()


def test_onevision_shaped_tile_is_729_tokens():
    shape = scale_shape(REAL_SHAPES["llava-onevision-7b"], 1 / 16, 1 / 8)
    assert (shape.tower_image_size // shape.patch_size) ** 2 == 729
    qwen25 = scale_shape(REAL_SHAPES["qwen2.5-vl-7b"], 1 / 16, 1 / 8)
    assert qwen25.vision.layers == 4 and qwen25.fullatt_block_indexes == (3,)


def test_bad_arguments_raise_naming_the_choices():
    with pytest.raises(ValueError, match="llava-1.5-7b"):
        tiny_vlm.vlm_shaped("llava-9b")
    with pytest.raises(ValueError, match="width_scale"):
        tiny_vlm.vlm_shaped("llava-1.5-7b", width_scale=0)
    with pytest.raises(ValueError, match="batch"):
        tiny_vlm.tiny_llava(batch=0)
    with pytest.raises(ValueError, match="attn_implementation"):
        tiny_vlm.tiny_llava(attn_implementation="flash")

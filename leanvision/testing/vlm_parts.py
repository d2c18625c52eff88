"""Model class, config and processor of each tiny VLM family, from a :class:`VLMShape`.

``PARTS[family](shape, tokenizer) -> (model_class, config, processor)``; the model is built
(and its inputs made) by :func:`leanvision.testing.tiny_vlm.build_vlm`.
"""

from __future__ import annotations

from typing import Any

import transformers as tf

from leanvision.testing.vlm_shapes import VLMShape


def _text_config(shape: VLMShape, tokenizer, model_type: str) -> dict[str, Any]:
    text = shape.text
    return {
        "model_type": model_type,
        "vocab_size": max(shape.vocab_size, len(tokenizer)),
        "hidden_size": text.hidden,
        "intermediate_size": text.intermediate,
        "num_hidden_layers": text.layers,
        "num_attention_heads": text.heads,
        "num_key_value_heads": text.kv,
        "head_dim": text.dim_per_head,
        "max_position_embeddings": 8192,
        "rope_theta": shape.rope_theta,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _tower_config(shape: VLMShape, model_type: str) -> dict[str, Any]:
    vision = shape.vision
    return {
        "model_type": model_type,
        "hidden_size": vision.hidden,
        "intermediate_size": vision.intermediate,
        "num_hidden_layers": vision.layers,
        "num_attention_heads": vision.heads,
        "image_size": shape.tower_image_size,
        "patch_size": shape.patch_size,
    }


def _normalize(processor_class, **kwargs):
    return processor_class(image_mean=[0.5] * 3, image_std=[0.5] * 3, **kwargs)


def _llava_parts(shape: VLMShape, tokenizer):
    """LLaVA-1.5 / LLaVA-NeXT: CLIP tower (CLS dropped), 2-layer MLP projector, Llama LM."""
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    side = shape.tower_image_size
    common = {
        "vision_config": _tower_config(shape, "clip_vision_model"),
        "text_config": _text_config(shape, tokenizer, "llama"),
        "image_token_index": image_token_id,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }
    processor_args = {
        "patch_size": shape.patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,  # CLIP's CLS, which "default" then drops
    }
    if shape.family == "llava":
        config = tf.LlavaConfig(**common, image_seq_length=(side // shape.patch_size) ** 2)
        image_processor = _normalize(
            tf.CLIPImageProcessor,
            size={"shortest_edge": side},
            crop_size={"height": side, "width": side},
        )
        processor = tf.LlavaProcessor(image_processor, tokenizer, **processor_args)
        return tf.LlavaForConditionalGeneration, config, processor
    pinpoints = [list(p) for p in shape.grid_pinpoints]
    config = tf.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
    image_processor = _normalize(
        tf.LlavaNextImageProcessor,
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=pinpoints,
    )
    processor = tf.LlavaNextProcessor(image_processor, tokenizer, **processor_args)
    return tf.LlavaNextForConditionalGeneration, config, processor


def _onevision_parts(shape: VLMShape, tokenizer):
    """LLaVA-OneVision: SigLIP tower without CLS or head, anyres-max-9 tiles, Qwen2 LM."""
    side = shape.tower_image_size
    pinpoints = [list(p) for p in shape.grid_pinpoints]
    config = tf.LlavaOnevisionConfig(
        vision_config={**_tower_config(shape, "siglip_vision_model"), "vision_use_head": False},
        text_config=_text_config(shape, tokenizer, "qwen2"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints,
    )
    size = {"height": side, "width": side}
    image_processor = _normalize(
        tf.LlavaOnevisionImageProcessor, size=size, image_grid_pinpoints=pinpoints
    )
    video_processor = _normalize(tf.LlavaOnevisionVideoProcessor, size=size)
    processor = tf.LlavaOnevisionProcessor(
        image_processor,
        tokenizer,
        video_processor,
        num_image_tokens=(side // shape.patch_size) ** 2,
        vision_feature_select_strategy="full",
    )
    return tf.LlavaOnevisionForConditionalGeneration, config, processor


def _qwen_vl_parts(shape: VLMShape, tokenizer):
    """Qwen2-VL / Qwen2.5-VL: native-resolution ViT, 2x2 patch merger, M-RoPE Qwen2 LM."""
    vision, text = shape.vision, shape.text
    # M-RoPE splits each rotary half (head_dim / 2) into temporal/height/width sections in
    # the real 16:24:24 proportion.
    half = text.dim_per_head // 2
    temporal = round(half * 16 / 64)
    height = (half - temporal) // 2
    text_config = _text_config(shape, tokenizer, f"{shape.family}_text")
    text_config["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": shape.rope_theta,
        "mrope_section": [temporal, height, half - temporal - height],
    }
    del text_config["rope_theta"]
    vision_config = {
        "depth": vision.layers,
        "num_heads": vision.heads,
        "patch_size": shape.patch_size,
        "spatial_merge_size": shape.merge_size,
        "temporal_patch_size": shape.temporal_patch_size,
    }
    if shape.family == "qwen2_vl":
        vision_config |= {
            "embed_dim": vision.hidden,
            "hidden_size": text.hidden,
            "mlp_ratio": max(1, round(vision.intermediate / vision.hidden)),
        }
        config_class, model_class = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration
    else:
        vision_config |= {
            "hidden_size": vision.hidden,
            "intermediate_size": vision.intermediate,
            "out_hidden_size": text.hidden,
            "window_size": shape.window_size,
            "fullatt_block_indexes": list(shape.fullatt_block_indexes),
        }
        config_class, model_class = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
    ids = {
        name: tokenizer.convert_tokens_to_ids(f"<|{name}|>")
        for name in ("image_pad", "video_pad", "vision_start", "vision_end")
    }
    config = config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_pad"],
        video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
    )
    # Pixel budgets wide enough that the processor keeps our image sizes (rounded to the
    # patch x merge grid) instead of rescaling them.
    factor = shape.patch_size * shape.merge_size
    hws = [shape.image_hw, shape.video_hw or shape.image_hw]
    pixels = {
        "shortest_edge": factor * factor,
        "longest_edge": max(h * w for h, w in hws) + factor * factor,
    }
    grid = {
        "patch_size": shape.patch_size,
        "merge_size": shape.merge_size,
        "temporal_patch_size": shape.temporal_patch_size,
    }
    image_processor = _normalize(tf.Qwen2VLImageProcessor, size=pixels, **grid)
    if hasattr(tf.Qwen2VLVideoProcessor, "cap_pixels_per_frame"):  # transformers >= 5.2x
        # Our pixel budget already fits the clip; saying so silences a deprecation warning.
        grid["cap_pixels_per_frame"] = False
    video_processor = _normalize(tf.Qwen2VLVideoProcessor, size=pixels, **grid)
    processor_class = tf.Qwen2VLProcessor if shape.family == "qwen2_vl" else tf.Qwen2_5_VLProcessor
    processor = processor_class(image_processor, tokenizer, video_processor)
    return model_class, config, processor


def _idefics3_parts(shape: VLMShape, tokenizer):
    """Idefics3 / SmolVLM: SigLIP-style tower per crop, pixel-shuffle connector, Llama LM."""
    side = shape.tower_image_size
    vision_config = _tower_config(shape, "idefics3_vision")
    config = tf.Idefics3Config(
        vision_config=vision_config,
        text_config=_text_config(shape, tokenizer, "llama"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=shape.scale_factor,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = _normalize(
        tf.Idefics3ImageProcessor,
        size={"longest_edge": max(shape.image_hw)},
        max_image_size={"longest_edge": side},
        do_image_splitting=True,
    )
    tokens_per_crop = (side // shape.patch_size) ** 2 // shape.scale_factor**2
    processor = tf.Idefics3Processor(image_processor, tokenizer, image_seq_len=tokens_per_crop)
    return tf.Idefics3ForConditionalGeneration, config, processor


PARTS = {
    "llava": _llava_parts,
    "llava_next": _llava_parts,
    "llava_onevision": _onevision_parts,
    "qwen2_vl": _qwen_vl_parts,
    "qwen2_5_vl": _qwen_vl_parts,
    "idefics3": _idefics3_parts,
}

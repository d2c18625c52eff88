"""Tiny random-weight VLMs of every supported transformers family, built offline.

Each factory builds the real transformers model class from a config with tiny widths, seeds
its weights, and runs the family's real image/video processor (with an in-memory WordLevel
tokenizer) on random images, so ``inputs`` hold exactly what the model needs: placeholder
tokens expanded to the right count, ``pixel_values``, ``image_sizes``, ``image_grid_thw``,
``mm_token_type_ids``, ``pixel_attention_mask``... With ``batch > 1`` every row gets its own
image and a prompt of a different length, left-padded.

>>> tiny = tiny_llava(batch=2)
>>> tiny.model(**tiny.inputs).logits.shape[:2] == tiny.inputs["input_ids"].shape
True
>>> tiny.info["num_image_tokens"]
64
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from leanvision.testing.common import TinyModel
from leanvision.testing.vlm_parts import PARTS
from leanvision.testing.vlm_shapes import REAL_SHAPES, TINY_SHAPES, VLMShape, scale_shape

__all__ = [
    "tiny_idefics3",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_onevision",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_vl",
    "vlm_shaped",
]

_BASE_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "USER:", "ASSISTANT:", "user", "assistant"]
_WORDS = [f"w{i}" for i in range(64)]
# Placeholder and structure tokens of each family, as its processor spells them.
_FAMILY_TOKENS = {
    "llava": ["<image>"],
    "llava_next": ["<image>"],
    "llava_onevision": ["<image>", "<video>", "<|im_start|>", "<|im_end|>"],
    "qwen2_vl": ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    + ["<|image_pad|>", "<|video_pad|>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
}
_FAMILY_TOKENS["qwen2_5_vl"] = _FAMILY_TOKENS["qwen2_vl"]


def word_tokenizer(family: str, words: Sequence[str] = _WORDS) -> tf.PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer of ``words`` whose special tokens are the family's
    placeholders; left padding.

    >>> word_tokenizer("llava", ["red", "circle"])("<s> USER: <image> red circle").input_ids
    [2, 4, 8, 9, 10]
    """
    specials = _FAMILY_TOKENS[family]
    vocab = {token: index for index, token in enumerate(_BASE_TOKENS + specials + list(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|im_end|>" if "<|im_end|>" in vocab else "</s>",
        padding_side="left",
    )
    # Special tokens are matched before whitespace splitting, so "<image><image>" is 2 tokens.
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def _prompts(family: str, batch: int, words: int, seed: int, media: str) -> list[str]:
    """One prompt per row, each a different length so left padding differs between rows."""
    rng = random.Random(seed)
    prompts = []
    for row in range(batch):
        text = " ".join(rng.choice(_WORDS) for _ in range(max(1, words - 3 * row)))
        if family.startswith("qwen2"):
            pad = "<|video_pad|>" if media == "video" else "<|image_pad|>"
            body = f"<|vision_start|>{pad}<|vision_end|> {text}"
            prompts.append(f"<|im_start|> user {body} <|im_end|> <|im_start|> assistant")
        elif family == "llava_onevision":
            body = f"{'<video>' if media == 'video' else '<image>'} {text}"
            prompts.append(f"<|im_start|> user {body} <|im_end|> <|im_start|> assistant")
        elif family == "idefics3":
            prompts.append(f"<s> user <image> {text} <end_of_utterance> assistant")
        else:
            prompts.append(f"<s> USER: <image> {text} ASSISTANT:")
    return prompts


def _random_images(batch: int, hw: tuple[int, int], seed: int) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randint(0, 256, (batch, *hw, 3), generator=generator, dtype=torch.uint8)
    return list(pixels.numpy())


def _random_videos(batch: int, frames: int, hw: tuple[int, int], seed: int) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed + 2)
    pixels = torch.randint(0, 256, (batch, frames, *hw, 3), generator=generator, dtype=torch.uint8)
    return list(pixels.numpy())


def _count_media_tokens(processor, shape: VLMShape, video: bool) -> dict[str, int]:
    """Placeholder tokens per image / video, from the processor's own size arithmetic."""
    image = processor._get_num_multimodal_tokens(image_sizes=[shape.image_hw])
    counts = {"num_image_tokens": int(image["num_image_tokens"][0])}
    if shape.family == "idefics3":
        # Idefics3 counts its crop separators too; the LLM sees image_seq_len <image> per crop.
        counts["num_image_tokens"] = int(image["num_image_patches"][0]) * processor.image_seq_len
    if video:
        video_size = [(shape.video_frames, *shape.video_hw)]
        counted = processor._get_num_multimodal_tokens(video_sizes=video_size)
        counts["num_video_tokens"] = int(counted["num_video_tokens"][0])
    return counts


def build_vlm(
    shape: VLMShape,
    batch: int = 1,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    video: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TinyModel:
    """Build ``shape``'s model with seeded random weights and processor-made inputs.

    ``video=True`` gives every row a video instead of an image (OneVision and Qwen-VL only).
    Weights are created directly on ``device`` in ``dtype`` (full-size shapes fit a GPU without
    a CPU copy); pixel inputs are cast to ``dtype``, ids and masks stay integer.

    >>> from leanvision.testing.vlm_shapes import TINY_SHAPES
    >>> build_vlm(TINY_SHAPES["qwen2_vl"], batch=2).inputs["image_grid_thw"].tolist()
    [[1, 12, 16], [1, 12, 16]]
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(
            f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}"
        )
    if video and shape.video_hw is None:
        raise ValueError(
            f"video=True is supported for families with video input, not {shape.family!r}"
        )
    tokenizer = word_tokenizer(shape.family)
    model_class, config, processor = PARTS[shape.family](shape, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class._from_config(config, dtype=dtype).eval()
    model.set_attn_implementation(attn_implementation)
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id

    media = "video" if video else "image"
    text = _prompts(shape.family, batch, shape.prompt_words, seed, media)
    if video:
        clips = _random_videos(batch, shape.video_frames, shape.video_hw, seed)
        inputs = processor(text=text, videos=clips, return_tensors="pt", padding=True)
    else:
        images = _random_images(batch, shape.image_hw, seed)
        inputs = processor(text=text, images=images, return_tensors="pt", padding=True)
    inputs = {
        key: value.to(device, dtype if key.startswith("pixel_values") else None)
        for key, value in inputs.items()
    }
    info = {
        "family": shape.family,
        "image_token_id": config.image_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "image_hw": shape.image_hw,
        "num_text_layers": shape.text.layers,
        "num_vision_layers": shape.vision.layers,
        "media": media,
        "tokenizer": tokenizer,
        "processor": processor,
        "shape": shape,
        **_count_media_tokens(processor, shape, video),
    }
    if shape.video_hw is not None:
        info["video_token_id"] = config.video_token_id
    return TinyModel(model=model, inputs=inputs, info=info)


def tiny_llava(batch: int = 1, seed: int = 0, attn_implementation: str = "sdpa") -> TinyModel:
    """LLaVA-1.5: CLIP tower (32 px, patch 4: 64 image tokens), Llama LM with GQA 4:2.

    >>> tiny_llava().info["family"]
    'llava'
    """
    return build_vlm(TINY_SHAPES["llava"], batch, seed, attn_implementation)


def tiny_llava_next(batch: int = 1, seed: int = 0, attn_implementation: str = "sdpa") -> TinyModel:
    """LLaVA-NeXT: a 40x72 image tiled into anyres crops plus a base view, with image_newline.

    >>> tiny_llava_next().inputs["image_sizes"].tolist()
    [[40, 72]]
    """
    return build_vlm(TINY_SHAPES["llava_next"], batch, seed, attn_implementation)


def tiny_llava_onevision(
    batch: int = 1, seed: int = 0, attn_implementation: str = "sdpa", video: bool = False
) -> TinyModel:
    """LLaVA-OneVision: SigLIP tower (no CLS), anyres_max_9 images or 4-frame videos, Qwen2 LM.

    >>> tiny_llava_onevision(video=True).inputs["pixel_values_videos"].shape[:2]
    torch.Size([1, 4])
    """
    return build_vlm(TINY_SHAPES["llava_onevision"], batch, seed, attn_implementation, video)


def tiny_qwen2_vl(
    batch: int = 1, seed: int = 0, attn_implementation: str = "sdpa", video: bool = False
) -> TinyModel:
    """Qwen2-VL: 48x64 image -> 12x16 patches -> 48 merged tokens (or a 4-frame 32x32 video).

    >>> tiny_qwen2_vl().info["num_image_tokens"]
    48
    """
    return build_vlm(TINY_SHAPES["qwen2_vl"], batch, seed, attn_implementation, video)


def tiny_qwen2_5_vl(
    batch: int = 1, seed: int = 0, attn_implementation: str = "sdpa", video: bool = False
) -> TinyModel:
    """Qwen2.5-VL: 4 ViT blocks, 0 and 2 windowed (2x2 merged tokens), 1 and 3 global.

    >>> tiny_qwen2_5_vl().model.config.vision_config.fullatt_block_indexes
    [1, 3]
    """
    return build_vlm(TINY_SHAPES["qwen2_5_vl"], batch, seed, attn_implementation, video)


def tiny_idefics3(batch: int = 1, seed: int = 0, attn_implementation: str = "sdpa") -> TinyModel:
    """Idefics3 / SmolVLM: a 64x64 image split into 2x2 crops + global view, 16 tokens each.

    >>> tiny_idefics3().info["num_image_tokens"]
    80
    """
    return build_vlm(TINY_SHAPES["idefics3"], batch, seed, attn_implementation)


def vlm_shaped(
    name: str,
    width_scale: float = 1 / 16,
    depth_scale: float = 1 / 8,
    batch: int = 1,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    video: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TinyModel:
    """A named checkpoint's architecture, narrowed and shortened, with its real token counts.

    Widths (hidden, MLP, heads) scale by ``width_scale`` and layer counts by ``depth_scale``;
    image size, patch size, merging and vocabulary stay real, so e.g. ``"llava-1.5-7b"`` still
    puts 576 image tokens into a prompt of ~40 text tokens. ``width_scale=depth_scale=1``
    builds the full-size model (random weights; pass ``device="cuda", dtype=torch.bfloat16``).
    Names: see ``REAL_SHAPES``.

    >>> tiny = vlm_shaped("llava-1.5-7b", width_scale=1 / 64, depth_scale=1 / 16)
    >>> tiny.info["num_image_tokens"], tiny.info["num_text_layers"]
    (576, 2)
    """
    if name not in REAL_SHAPES:
        raise ValueError(f"name must be one of {sorted(REAL_SHAPES)}, got {name!r}")
    shape = scale_shape(REAL_SHAPES[name], width_scale, depth_scale)
    tiny = build_vlm(shape, batch, seed, attn_implementation, video, device, dtype)
    tiny.info["name"] = name
    return tiny

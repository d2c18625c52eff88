"""Shape facts of VLM checkpoints, and how to shrink them without changing token counts.

A :class:`VLMShape` says how wide and deep a VLM's vision tower and language model are and
how an image becomes tokens (image size, patch size, merge/pooling factors). The tiny test
models and :func:`leanvision.testing.vlm_shaped` are both built from one of these, so a
"shaped" model is the real checkpoint with narrower, shallower layers but the same number of
image tokens in the same places.

>>> shape = scale_shape(REAL_SHAPES["llava-1.5-7b"], width_scale=1 / 16, depth_scale=1 / 8)
>>> shape.text.layers, shape.text.hidden, shape.tower_image_size, shape.patch_size
(4, 256, 336, 14)
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["REAL_SHAPES", "TINY_SHAPES", "StackShape", "VLMShape", "scale_shape"]


@dataclasses.dataclass(frozen=True)
class StackShape:
    """Width and depth of one transformer stack (a vision tower or a language model).

    ``head_dim`` is ``hidden // heads`` unless given; ``kv_heads`` < ``heads`` means GQA.
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int | None = None
    head_dim: int | None = None

    @property
    def kv(self) -> int:
        """Key/value heads (``heads`` when the stack has no GQA)."""
        return self.kv_heads or self.heads

    @property
    def dim_per_head(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.hidden // self.heads


@dataclasses.dataclass(frozen=True)
class VLMShape:
    """Everything needed to build one VLM family at one size.

    ``tower_image_size`` is the vision tower's square input (CLIP/SigLIP towers; ``None`` for
    Qwen-VL's native-resolution ViT); ``image_hw`` is the (height, width) of the image fed to
    the processor, which decides anyres crops / Qwen-VL grids / Idefics3 splits.
    """

    family: str
    vision: StackShape
    text: StackShape
    vocab_size: int
    patch_size: int
    image_hw: tuple[int, int]
    tower_image_size: int | None = None
    # LLaVA-NeXT / OneVision anyres: the (height, width) canvases an image may be tiled into.
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    # Qwen-VL: 2x2 patch merging, 2-frame temporal patches, windowed ViT blocks (2.5 only).
    merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int | None = None
    fullatt_block_indexes: tuple[int, ...] | None = None
    # Idefics3 / SmolVLM pixel-shuffle factor (tokens per crop = patches / scale_factor**2).
    scale_factor: int | None = None
    video_frames: int = 4
    video_hw: tuple[int, int] | None = None
    rope_theta: float = 10000.0
    prompt_words: int = 8


_CLIP_L_336 = StackShape(hidden=1024, intermediate=4096, layers=24, heads=16)
_SIGLIP_SO400M = StackShape(hidden=1152, intermediate=4304, layers=26, heads=16)
_QWEN2_7B = StackShape(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4)
_LLAMA2_7B = StackShape(hidden=4096, intermediate=11008, layers=32, heads=32)

# Public configs of the named checkpoints (config.json of the llava-hf / Qwen / HuggingFaceTB
# releases). ``image_hw`` is a typical input: it only matters where resolution is dynamic.
REAL_SHAPES: dict[str, VLMShape] = {
    "llava-1.5-7b": VLMShape(
        family="llava",
        vision=_CLIP_L_336,
        text=_LLAMA2_7B,
        vocab_size=32064,
        patch_size=14,
        tower_image_size=336,
        image_hw=(336, 336),
        prompt_words=40,
    ),
    "llava-1.5-13b": VLMShape(
        family="llava",
        vision=_CLIP_L_336,
        text=StackShape(hidden=5120, intermediate=13824, layers=40, heads=40),
        vocab_size=32064,
        patch_size=14,
        tower_image_size=336,
        image_hw=(336, 336),
        prompt_words=40,
    ),
    "llava-next-7b": VLMShape(
        family="llava_next",
        vision=_CLIP_L_336,
        text=_LLAMA2_7B,
        vocab_size=32064,
        patch_size=14,
        tower_image_size=336,
        image_hw=(480, 640),
        grid_pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)),
        prompt_words=40,
    ),
    "llava-onevision-7b": VLMShape(
        family="llava_onevision",
        vision=_SIGLIP_SO400M,
        text=_QWEN2_7B,
        vocab_size=152128,
        patch_size=14,
        tower_image_size=384,
        image_hw=(384, 384),
        grid_pinpoints=tuple((384 * h, 384 * w) for h in range(1, 7) for w in range(1, 7)),
        video_frames=8,
        video_hw=(384, 384),
        rope_theta=1e6,
        prompt_words=40,
    ),
    "qwen2-vl-7b": VLMShape(
        family="qwen2_vl",
        vision=StackShape(hidden=1280, intermediate=5120, layers=32, heads=16),
        text=_QWEN2_7B,
        vocab_size=152064,
        patch_size=14,
        image_hw=(448, 672),  # 32 x 48 patches -> 384 merged tokens
        video_frames=8,
        video_hw=(336, 448),
        rope_theta=1e6,
        prompt_words=40,
    ),
    "qwen2.5-vl-7b": VLMShape(
        family="qwen2_5_vl",
        vision=StackShape(hidden=1280, intermediate=3420, layers=32, heads=16),
        text=_QWEN2_7B,
        vocab_size=152064,
        patch_size=14,
        image_hw=(448, 672),
        window_size=112,
        fullatt_block_indexes=(7, 15, 23, 31),
        video_frames=8,
        video_hw=(336, 448),
        rope_theta=1e6,
        prompt_words=40,
    ),
    "smolvlm-2b": VLMShape(
        family="idefics3",
        vision=StackShape(hidden=1152, intermediate=4304, layers=27, heads=16),
        text=StackShape(hidden=2048, intermediate=8192, layers=24, heads=32),
        vocab_size=49155,
        patch_size=14,
        tower_image_size=384,
        image_hw=(768, 768),  # 2 x 2 crops + the global view, 81 tokens each
        scale_factor=3,
        rope_theta=273768.0,
        prompt_words=40,
    ),
}

_TINY_VISION = StackShape(hidden=32, intermediate=64, layers=2, heads=4)
_TINY_TEXT = StackShape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)
_TINY_VOCAB = 256

# The shapes behind ``tiny_<family>()``: a few thousand parameters per layer, a few dozen
# image tokens, and inputs that exercise the family's token layout (anyres crops, windows...).
TINY_SHAPES: dict[str, VLMShape] = {
    "llava": VLMShape(
        family="llava",
        vision=_TINY_VISION,
        text=_TINY_TEXT,
        vocab_size=_TINY_VOCAB,
        patch_size=4,
        tower_image_size=32,
        image_hw=(40, 48),
    ),
    "llava_next": VLMShape(
        family="llava_next",
        vision=_TINY_VISION,
        text=_TINY_TEXT,
        vocab_size=_TINY_VOCAB,
        patch_size=4,
        tower_image_size=32,
        image_hw=(40, 72),
        grid_pinpoints=((32, 64), (64, 32), (64, 64)),
    ),
    "llava_onevision": VLMShape(
        family="llava_onevision",
        vision=_TINY_VISION,
        text=_TINY_TEXT,
        vocab_size=_TINY_VOCAB,
        patch_size=4,
        tower_image_size=32,
        image_hw=(40, 72),
        grid_pinpoints=((32, 32), (32, 64), (64, 32), (64, 64)),
        video_hw=(32, 32),
    ),
    "qwen2_vl": VLMShape(
        family="qwen2_vl",
        vision=_TINY_VISION,
        text=_TINY_TEXT,
        vocab_size=_TINY_VOCAB,
        patch_size=4,
        image_hw=(48, 64),
        video_hw=(32, 32),
    ),
    "qwen2_5_vl": VLMShape(
        family="qwen2_5_vl",
        vision=StackShape(hidden=32, intermediate=64, layers=4, heads=4),
        text=_TINY_TEXT,
        vocab_size=_TINY_VOCAB,
        patch_size=4,
        image_hw=(48, 64),
        window_size=16,  # 2 x 2 merged tokens per window
        fullatt_block_indexes=(1, 3),
        video_hw=(32, 32),
    ),
    "idefics3": VLMShape(
        family="idefics3",
        vision=_TINY_VISION,
        text=_TINY_TEXT,
        vocab_size=_TINY_VOCAB,
        patch_size=4,
        tower_image_size=32,
        image_hw=(64, 64),  # 2 x 2 crops + the global view
        scale_factor=2,
    ),
}


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, multiple * round(value / multiple))


def _scale_stack(stack: StackShape, width_scale: float, depth_scale: float, min_layers: int):
    """Fewer heads of (about) the same size, MLP ratio kept, at least ``min_layers`` layers."""
    heads = max(1, round(stack.heads * width_scale))
    kv_heads = max(1, round(stack.kv * width_scale))
    kv_heads = math.gcd(heads, kv_heads)  # query heads must split evenly over KV heads
    # Keep the real head size unless even one head of it is wider than the target width;
    # multiples of 8 keep 2-D/M-RoPE section splits and kernels happy.
    target_width = stack.hidden * width_scale
    head_dim = min(stack.dim_per_head, _round_to(target_width / heads, 8))
    hidden = heads * head_dim
    intermediate = stack.intermediate
    if hidden != stack.hidden:
        intermediate = _round_to(stack.intermediate * hidden / stack.hidden, 8)
    layers = max(min_layers, round(stack.layers * depth_scale))
    return StackShape(
        hidden=hidden,
        intermediate=intermediate,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads if kv_heads != heads else None,
    )


def _spread_full_attention(shape: VLMShape, depth: int) -> tuple[int, ...] | None:
    """Keep Qwen2.5-VL's pattern: a full-attention block closes each group of windowed ones."""
    if shape.fullatt_block_indexes is None:
        return None
    scaled = round(len(shape.fullatt_block_indexes) * depth / shape.vision.layers)
    groups = max(1, min(depth, scaled))
    return tuple(sorted({(g + 1) * depth // groups - 1 for g in range(groups)}))


def scale_shape(shape: VLMShape, width_scale: float, depth_scale: float) -> VLMShape:
    """Shrink widths by ``width_scale`` and layer counts by ``depth_scale``; keep token counts.

    Head counts scale with the width (head size is kept while at least one head fits), MLP
    ratios are kept, and image size, patch size, merge/pool factors and vocabulary are untouched,
    so the scaled model sees exactly as many image tokens as the real one.

    >>> s = scale_shape(REAL_SHAPES["qwen2-vl-7b"], 1 / 16, 1 / 8)
    >>> (s.text.heads, s.text.kv, s.text.layers, s.patch_size)
    (2, 1, 4, 14)
    """
    for name, value in (("width_scale", width_scale), ("depth_scale", depth_scale)):
        if not (isinstance(value, (int, float)) and 0 < value <= 1):
            raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    # LLaVA reads the second-to-last tower layer, so towers keep at least two layers.
    vision = _scale_stack(shape.vision, width_scale, depth_scale, min_layers=2)
    text = _scale_stack(shape.text, width_scale, depth_scale, min_layers=1)
    return dataclasses.replace(
        shape,
        vision=vision,
        text=text,
        fullatt_block_indexes=_spread_full_attention(shape, vision.layers),
    )

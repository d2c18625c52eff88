"""The trained tiny Qwen2-VL: a native-resolution ViT, the 2x2 patch merger and an M-RoPE LM.

Images are 96 x 96 px (patch 4: 24 x 24 patches, 144 tokens after the merge); clips are 8
frames of 96 x 96, in 4 temporal patches of 2 frames (576 video tokens). The tower and merger
were pre-trained so that every merged token says which shape, colour and motion covers it;
the merger and the LM were then trained, tower frozen, on scene VQA (colour, where, count,
exists) and motion VQA (which way an object moves, which shape appears first, whether a shape
is in frame k), with the loss on the answer tokens only (``training/train_qwen2_vl.py``).

Accuracy of the shipped weights on 300 test questions: images 0.52 (count 0.94, colour 0.49,
exists 0.44, where 0.21), clips 0.85 (first 1.00, present 0.83, motion 0.71). Image questions
that hinge on an object's shape or position stay weak, so these weights under-train issue
15's target.
"""

from __future__ import annotations

from leanvision.testing.common import TinyModel
from leanvision.testing.scenes import clip_item, vqa_item
from leanvision.testing.trained.vqa import build_scene_vlm, vqa_inputs
from leanvision.testing.trained.weights import load_weights
from leanvision.testing.vlm_shapes import StackShape, VLMShape

__all__ = ["NUM_IMAGE_TOKENS", "NUM_VIDEO_TOKENS", "QWEN2_VL_SHAPE", "trained_qwen2_vl"]

QWEN2_VL_SHAPE = VLMShape(
    family="qwen2_vl",
    vision=StackShape(hidden=64, intermediate=256, layers=3, heads=4),
    text=StackShape(hidden=128, intermediate=384, layers=4, heads=4, kv_heads=2),
    vocab_size=0,  # the tokenizer's size
    patch_size=4,
    image_hw=(96, 96),
    video_hw=(96, 96),
    video_frames=8,
)
NUM_IMAGE_TOKENS = (96 // (4 * 2)) ** 2  # 12 x 12 merged tokens per image
NUM_VIDEO_TOKENS = NUM_IMAGE_TOKENS * 8 // 2  # per clip: 4 temporal patches of 2 frames

_ATTENTION = ("sdpa", "eager")


def trained_qwen2_vl(
    batch: int = 2, video: bool = False, attn_implementation: str = "sdpa"
) -> TinyModel:
    """The trained Qwen2-VL with ``inputs`` for the first ``batch`` test questions: scene images,
    or motion clips when ``video`` is true.

    ``info["items"]`` holds those questions (with answers), ``info["media"]`` is ``"image"`` or
    ``"video"``; ``info["processor"]`` makes inputs for others (or use
    :func:`leanvision.testing.trained.vqa.answer_questions`).

    >>> tiny = trained_qwen2_vl()
    >>> tiny.info["num_image_tokens"], tiny.inputs["image_grid_thw"].tolist()
    (144, [[1, 24, 24], [1, 24, 24]])
    >>> tiny = trained_qwen2_vl(batch=1, video=True)
    >>> tiny.info["num_video_tokens"], tiny.inputs["video_grid_thw"].tolist()
    (576, [[4, 24, 24]])
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if not isinstance(video, bool):
        raise TypeError(f"video must be a bool, got {video!r}")
    if attn_implementation not in _ATTENTION:
        raise ValueError(
            f"attn_implementation must be one of {_ATTENTION}, got {attn_implementation!r}"
        )
    tiny = build_scene_vlm(QWEN2_VL_SHAPE)
    load_weights(tiny.model, "qwen2_vl")
    tiny.model.set_attn_implementation(attn_implementation)
    make = clip_item if video else vqa_item
    items = [make("test", index) for index in range(batch)]
    tiny.inputs = vqa_inputs(tiny.info["processor"], "qwen2_vl", items)
    tiny.info |= {
        "items": items,
        "num_image_tokens": NUM_IMAGE_TOKENS,
        "media": "video" if video else "image",
    }
    if video:
        tiny.info["num_video_tokens"] = NUM_VIDEO_TOKENS
    return tiny

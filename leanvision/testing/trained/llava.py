"""The trained tiny LLaVA-1.5: a CLIP tower with CLS, an MLP projector and a Llama LM.

The tower (96 px, patch 8: 144 image tokens after dropping CLS) was pre-trained to read every
grid cell's shape and colour from its CLS token, so CLS attention points at the objects as the
attention-scoring methods assume. The projector and the LM were then trained, tower frozen, on
scene VQA (``training/train_llava.py``).
"""

from __future__ import annotations

from leanvision.testing.common import TinyModel
from leanvision.testing.scenes import vqa_item
from leanvision.testing.trained.vqa import build_scene_vlm, vqa_inputs
from leanvision.testing.trained.weights import load_weights
from leanvision.testing.vlm_shapes import StackShape, VLMShape

__all__ = ["LLAVA_SHAPE", "trained_llava"]

LLAVA_SHAPE = VLMShape(
    family="llava",
    vision=StackShape(hidden=128, intermediate=512, layers=4, heads=4),
    text=StackShape(hidden=128, intermediate=384, layers=4, heads=4, kv_heads=2),
    vocab_size=0,  # the tokenizer's size
    patch_size=8,
    tower_image_size=96,
    image_hw=(96, 96),
)


def trained_llava(batch: int = 2, attn_implementation: str = "sdpa") -> TinyModel:
    """The trained LLaVA with ``inputs`` for the first ``batch`` test questions.

    ``info["items"]`` holds those questions (with answers); ``info["processor"]`` makes inputs
    for others (or use :func:`leanvision.testing.trained.vqa.answer_questions`).

    >>> tiny = trained_llava()
    >>> tiny.info["num_image_tokens"], tiny.inputs["input_ids"].shape[0]
    (144, 2)
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    tiny = build_scene_vlm(LLAVA_SHAPE)
    load_weights(tiny.model, "llava")
    tiny.model.set_attn_implementation(attn_implementation)
    items = [vqa_item("test", index) for index in range(batch)]
    tiny.inputs = vqa_inputs(tiny.info["processor"], "llava", items)
    tiny.info |= {"items": items, "num_image_tokens": 144, "media": "image"}
    return tiny

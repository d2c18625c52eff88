"""Scene-VQA prompts, batched answers and accuracy, shared by the trained VLM families.

A trained VLM is one of the real transformers classes built from a :class:`VLMShape` with a
word-level tokenizer of the scene vocabulary. Its prompt is the family's chat layout around
the question; its answer is the greedy continuation up to the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from leanvision.testing.common import TinyModel
from leanvision.testing.scenes import VOCABULARY, VQAItem
from leanvision.testing.tiny_vlm import word_tokenizer
from leanvision.testing.vlm_parts import PARTS
from leanvision.testing.vlm_shapes import VLMShape

__all__ = ["answer_questions", "build_scene_vlm", "vqa_accuracy", "vqa_inputs", "vqa_prompt"]

_TEMPLATES = {
    "llava": "<s> USER: <image> {question} ASSISTANT:",
    "qwen2_vl": "<|im_start|> user <|vision_start|>{pad}<|vision_end|> {question} <|im_end|> "
    "<|im_start|> assistant",
}


def vqa_prompt(family: str, question: str, media: str = "image") -> str:
    """The family's chat prompt around ``question`` (the answer follows it).

    >>> vqa_prompt("llava", "how many shapes are there ?")
    '<s> USER: <image> how many shapes are there ? ASSISTANT:'
    """
    if family not in _TEMPLATES:
        raise ValueError(f"family must be one of {sorted(_TEMPLATES)}, got {family!r}")
    if media not in ("image", "video"):
        raise ValueError(f"media must be 'image' or 'video', got {media!r}")
    pad = "<|video_pad|>" if media == "video" else "<|image_pad|>"
    return _TEMPLATES[family].format(question=question, pad=pad)


def build_scene_vlm(shape: VLMShape, seed: int = 0) -> TinyModel:
    """``shape``'s model (seeded random weights, eval mode) with a scene-vocabulary tokenizer
    and the family's processor in ``info``; ``inputs`` is empty (see :func:`vqa_inputs`)."""
    tokenizer = word_tokenizer(shape.family, VOCABULARY)
    model_class, config, processor = PARTS[shape.family](shape, tokenizer)
    torch.manual_seed(seed)
    model = model_class._from_config(config).eval()
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    info = {
        "family": shape.family,
        "shape": shape,
        "tokenizer": tokenizer,
        "processor": processor,
        "image_token_id": config.image_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "num_text_layers": shape.text.layers,
        "num_vision_layers": shape.vision.layers,
        "image_hw": shape.image_hw,
    }
    if shape.video_hw is not None:
        info["video_token_id"] = config.video_token_id
    return TinyModel(model=model, inputs={}, info=info)


def vqa_inputs(
    processor: Any, family: str, items: Sequence[VQAItem], answers: bool = False
) -> dict[str, torch.Tensor]:
    """Processor inputs for ``items`` (all images or all clips), left-padded. ``answers=True``
    appends each answer and the end-of-turn token (the training text)."""
    if not items:
        raise ValueError("items is empty")
    videos = items[0].image.ndim == 4
    if any((item.image.ndim == 4) != videos for item in items):
        raise ValueError("items mix images and videos; pass one kind per call")
    eos = processor.tokenizer.eos_token
    text = [vqa_prompt(family, item.question, "video" if videos else "image") for item in items]
    if answers:
        text = [f"{prompt} {item.answer} {eos}" for prompt, item in zip(text, items, strict=True)]
    media = {"videos" if videos else "images": [item.image for item in items]}
    return dict(processor(text=text, **media, return_tensors="pt", padding=True))


@torch.inference_mode()
def answer_questions(
    tiny: TinyModel, items: Sequence[VQAItem], batch_size: int = 32, progress: bool = False
) -> list[str]:
    """Greedy answers of ``tiny.model`` to ``items`` (as words, special tokens dropped).

    >>> from leanvision.testing.trained import trained_llava
    >>> from leanvision.testing.scenes import vqa_item
    >>> answer_questions(trained_llava(), [vqa_item("test", 0)])[0] == vqa_item("test", 0).answer
    True
    """
    info = tiny.info
    answers: list[str] = []
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="answering", disable=not progress, leave=False):
        inputs = vqa_inputs(info["processor"], info["family"], items[start : start + batch_size])
        output = tiny.model.generate(**inputs, max_new_tokens=3, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        answers += [
            text.strip() for text in info["tokenizer"].batch_decode(new, skip_special_tokens=True)
        ]
    return answers


def vqa_accuracy(
    tiny: TinyModel, items: Sequence[VQAItem], batch_size: int = 32, progress: bool = False
) -> dict[str, float]:
    """Exact-match accuracy over ``items``, overall (``"all"``) and per question kind."""
    answers = answer_questions(tiny, items, batch_size, progress)
    right: dict[str, list[bool]] = {}
    for item, answer in zip(items, answers, strict=True):
        right.setdefault(item.kind, []).append(answer == item.answer)
        right.setdefault("all", []).append(answer == item.answer)
    return {kind: sum(flags) / len(flags) for kind, flags in sorted(right.items())}

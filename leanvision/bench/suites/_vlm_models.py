"""Models, prompts and patch switching for the ``vlm`` benchmark (not a suite itself).

A model is either a ``REAL_SHAPES`` name, built by ``vlm_shaped`` at a (width, depth) scale
with random weights, or a local checkpoint directory loaded with transformers' auto classes.
Inputs come from the model's own processor: the sample images (one per row) or the sample
video, with one prompt per row, each shorter than the last so that rows are left-padded.

>>> _prompt_text("llava", "image", "w0 w1")
'<s> USER: <image> w0 w1 ASSISTANT:'
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

QUESTION = "Describe this in detail, then list every object you can see with its colour."
# prompt formats of the shaped models, whose in-memory processors have no chat template
_PROMPTS = {
    "llava": "<s> USER: {media} {text} ASSISTANT:",
    "llava_next": "<s> USER: {media} {text} ASSISTANT:",
    "llava_onevision": "<|im_start|> user {media} {text} <|im_end|> <|im_start|> assistant",
    "qwen2_vl": "<|im_start|> user <|vision_start|>{media}<|vision_end|> {text} <|im_end|> "
    "<|im_start|> assistant",
    "idefics3": "<s> user {media} {text} <end_of_utterance> assistant",
}
_PROMPTS["qwen2_5_vl"] = _PROMPTS["qwen2_vl"]
_MEDIA_TOKENS = {"image": "<image>", "video": "<video>"}
_QWEN_MEDIA_TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>"}


class Patches:
    """At most one compression applied to a model. A case switches to its own in its
    ``setup``, which the runner calls untimed before every sample, so the timed calls are
    plain (patched) forwards even though every row alternates with the baseline."""

    def __init__(self, model: Any):
        self.model = model
        self.key: tuple | None = None
        self.handle: Any = None

    def use(self, method: str | None, options: dict[str, Any]) -> Any:
        """Apply ``method`` with ``options`` (None: the unpatched model); returns the handle."""
        import leanvision as lv

        key = None if method is None else (method, repr(sorted(options.items())))
        if key != self.key:
            if self.handle is not None:
                self.handle.remove()
            self.handle, self.key = None, None
            if method is not None:
                self.handle = lv.vlm.compress(self.model, method, **options)
            self.key = key
        return self.handle


@dataclasses.dataclass
class LoadedModel:
    """A model, its processor and family; ``shape`` is set for shaped (random) models."""

    label: str
    model: Any
    processor: Any
    family: str
    shape: Any = None
    patches: Patches = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.patches = Patches(self.model)


def build_model(
    name: str, scales: tuple[float, float], device: str, dtype: torch.dtype
) -> LoadedModel:
    """``name`` (a ``REAL_SHAPES`` name at ``scales`` = (width, depth), or a checkpoint
    directory) on ``device``; float32 becomes bfloat16 on CUDA (7B shapes)."""
    from leanvision.testing.vlm_shapes import REAL_SHAPES
    from leanvision.vlm import get_adapter

    if device.startswith("cuda") and dtype == torch.float32:
        dtype = torch.bfloat16
    if name in REAL_SHAPES:
        from leanvision.testing import vlm_shaped

        width, depth = scales
        tiny = vlm_shaped(name, width, depth, device=device, dtype=dtype)
        label = name
        if scales != (1.0, 1.0):
            label += f" w/{round(1 / width)} d/{round(1 / depth)}"
        info = tiny.info
        return LoadedModel(label, tiny.model, info["processor"], info["family"], info["shape"])
    if not os.path.isdir(name):
        raise ValueError(
            f"model must be a local checkpoint directory or one of {sorted(REAL_SHAPES)}, "
            f"got {name!r}"
        )
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(name)
    processor.tokenizer.padding_side = "left"
    label = os.path.basename(os.path.normpath(name))
    return LoadedModel(label, model, processor, get_adapter(model).name)


def _prompt_text(family: str, media: str, text: str) -> str:
    tokens = _QWEN_MEDIA_TOKENS if family.startswith("qwen2") else _MEDIA_TOKENS
    return _PROMPTS[family].format(media=tokens[media], text=text)


def prompts(loaded: LoadedModel, media: str, batch: int, words: int) -> list[str]:
    """One prompt per row, each 3 words shorter than the last (different left padding)."""
    template = getattr(loaded.processor, "chat_template", None)
    rows = []
    for row in range(batch):
        count = max(1, words - 3 * row)
        if template:
            text = " ".join((QUESTION.split() * words)[:count])
            content = [{"type": media}, {"type": "text", "text": text}]
            conversation = [{"role": "user", "content": content}]
            rows.append(
                loaded.processor.apply_chat_template(conversation, add_generation_prompt=True)
            )
        else:  # the shaped models' word-level vocabulary: w0 .. w63
            text = " ".join(f"w{index % 64}" for index in range(row, row + count))
            rows.append(_prompt_text(loaded.family, media, text))
    return rows


def _resize(frame: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    if hw is None:
        return frame
    image = Image.fromarray(frame).resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
    return np.asarray(image)


def make_inputs(
    loaded: LoadedModel, media: str, batch: int, frames: int, words: int, device: str
) -> dict[str, Any]:
    """Processor-made inputs on ``device``: the sample images (cycled, one per row) or
    ``frames`` frames of the sample video (the same clip in every row). Shaped models get
    the media resized to their shape's size, as their processors expect."""
    from leanvision.datasets import load_image, load_video, sample_image_paths
    from leanvision.datasets.samples import sample_video_path

    text = prompts(loaded, media, batch, words)
    shape = loaded.shape
    if media == "image":
        paths = sample_image_paths()
        hw = None if shape is None else shape.image_hw
        images = [
            _resize(np.asarray(load_image(paths[row % len(paths)])), hw) for row in range(batch)
        ]
        inputs = loaded.processor(text=text, images=images, return_tensors="pt", padding=True)
    else:
        clip = load_video(sample_video_path(), num_frames=frames).frames
        hw = None if shape is None else shape.video_hw
        clip = np.stack([_resize(frame, hw) for frame in clip])
        inputs = loaded.processor(
            text=text, videos=[clip] * batch, return_tensors="pt", padding=True
        )
    dtype = loaded.model.dtype
    return {
        key: value.to(device, dtype if key.startswith("pixel_values") else None)
        for key, value in inputs.items()
    }

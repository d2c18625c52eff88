"""The scene judge: a small CNN that reads colour, shape and position off a 32 px caption
image, so a text-to-image pipeline's output can be scored against its prompt offline.

Trained by ``training/train_judge.py`` on :func:`leanvision.testing.scenes.caption_item`
images (train split, with blur / noise / shift / brightness augmentation so that slightly
imperfect generated images still read correctly).

>>> from leanvision.testing.scenes import caption_item
>>> judge = scene_judge()
>>> items = [caption_item("test", i) for i in range(4)]
>>> judge.predict(np.stack([item.image for item in items]))[0]
{'color': 'purple', 'shape': 'square', 'position': 'center'}
>>> judge.accuracy(np.stack([item.image for item in items]), [item.caption for item in items])
1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from leanvision.testing.scenes import CAPTION_POSITIONS, COLORS, SHAPES, caption_text
from leanvision.testing.trained.weights import load_weights

__all__ = [
    "ATTRIBUTES",
    "LABELS",
    "JudgeNet",
    "SceneJudge",
    "images_to_tensor",
    "parse_caption",
    "scene_judge",
]

ATTRIBUTES = ("color", "shape", "position")
LABELS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "shape": SHAPES,
    "position": CAPTION_POSITIONS,
}
WEIGHTS_NAME = "judge"
IMAGE_SIZE = 32


class JudgeNet(nn.Module):
    """Four 3x3 conv layers (32 px to 4x4x64) and an MLP with one head per attribute; the
    flattened 4x4 map keeps where things are, which the position head needs.

    >>> logits = JudgeNet()(torch.zeros(2, 3, 32, 32))
    >>> {name: tuple(value.shape) for name, value in logits.items()}
    {'color': (2, 6), 'shape': (2, 4), 'position': (2, 5)}
    """

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.trunk = nn.Sequential(nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, len(values)) for name, values in LABELS.items()}
        )

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pixels``: (N, 3, 32, 32) in [0, 1]; logits per attribute, (N, classes)."""
        hidden = self.trunk(self.features(pixels * 2 - 1))
        return {name: head(hidden) for name, head in self.heads.items()}


def images_to_tensor(images: Any) -> torch.Tensor:
    """Images as a float (N, 3, 32, 32) tensor in [0, 1]: a numpy (N, 32, 32, 3) or
    (32, 32, 3) array (float in [0, 1] or uint8), or a torch (N, 3, 32, 32) tensor.

    >>> images_to_tensor(np.zeros((2, 32, 32, 3), dtype=np.uint8)).shape
    torch.Size([2, 3, 32, 32])
    """
    if isinstance(images, np.ndarray):
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        array = images[None] if images.ndim == 3 else images
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"numpy images must be (N, H, W, 3), got {images.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / scale)
        tensor = tensor.permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        tensor = images.detach().cpu().float() / scale
        tensor = tensor[None] if tensor.ndim == 3 else tensor
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"tensor images must be (N, 3, H, W), got {tuple(images.shape)}")
    else:
        raise TypeError(
            f"images must be a numpy array or a torch tensor, got {type(images).__name__}"
        )
    if tuple(tensor.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"the judge reads 32x32 images, got {tuple(tensor.shape[-2:])}")
    return tensor.clamp(0, 1)


def parse_caption(caption: str) -> dict[str, str]:
    """The attributes of a caption.

    >>> parse_caption("a red circle in the center")
    {'color': 'red', 'shape': 'circle', 'position': 'center'}
    >>> parse_caption("a fox")
    Traceback (most recent call last):
    ...
    ValueError: not a shape caption (e.g. 'a red circle on the left'): 'a fox'
    """
    words = caption.split()
    if len(words) == 6 and words[0] == "a":
        found = {"color": words[1], "shape": words[2], "position": words[5]}
        if all(found[name] in LABELS[name] for name in ATTRIBUTES) and caption == caption_text(
            found["color"], found["shape"], found["position"]
        ):
            return found
    raise ValueError(f"not a shape caption (e.g. 'a red circle on the left'): {caption!r}")


def _targets(targets: Sequence[Any]) -> list[dict[str, str]]:
    """Captions, :class:`~leanvision.testing.scenes.Caption` items or attribute dicts."""
    out = []
    for target in targets:
        if isinstance(target, str):
            out.append(parse_caption(target))
        elif isinstance(target, dict):
            out.append({name: target[name] for name in ATTRIBUTES})
        else:
            out.append({name: getattr(target, name) for name in ATTRIBUTES})
    return out


class SceneJudge:
    """The trained :class:`JudgeNet` (eval mode) behind a small API: :meth:`predict`,
    :meth:`accuracy` and :meth:`attribute_accuracy`. Images as in :func:`images_to_tensor`."""

    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @torch.no_grad()
    def logits(self, images: Any) -> dict[str, torch.Tensor]:
        """Per-attribute logits, (N, classes), computed in batches of 256."""
        pixels = images_to_tensor(images)
        parts = [self.net(pixels[i : i + 256]) for i in range(0, len(pixels), 256)]
        return {name: torch.cat([part[name] for part in parts]) for name in ATTRIBUTES}

    def predict(self, images: Any) -> list[dict[str, str]]:
        """One ``{"color", "shape", "position"}`` dict per image."""
        indices = {name: value.argmax(1).tolist() for name, value in self.logits(images).items()}
        count = len(indices["color"])
        return [{name: LABELS[name][indices[name][i]] for name in ATTRIBUTES} for i in range(count)]

    def attribute_accuracy(self, images: Any, targets: Sequence[Any]) -> dict[str, float]:
        """Fraction right per attribute and ``"all"`` (all three right). ``targets`` are
        captions, caption items or attribute dicts, one per image."""
        truth = _targets(targets)
        predicted = self.predict(images)
        if len(truth) != len(predicted):
            raise ValueError(f"got {len(predicted)} images but {len(truth)} targets")
        scores = {
            name: float(
                np.mean([p[name] == t[name] for p, t in zip(predicted, truth, strict=True)])
            )
            for name in ATTRIBUTES
        }
        scores["all"] = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
        return scores

    def accuracy(self, images: Any, targets: Sequence[Any]) -> float:
        """Fraction of images whose colour, shape and position are all read as ``targets``."""
        return self.attribute_accuracy(images, targets)["all"]


def scene_judge() -> SceneJudge:
    """The trained judge, loaded from the shipped weights (CPU, eval mode).

    >>> from leanvision.testing.scenes import caption_item
    >>> items = [caption_item("test", index) for index in range(8)]
    >>> import numpy as np
    >>> scene_judge().accuracy(np.stack([item.image for item in items]), items)
    1.0
    """
    return SceneJudge(load_weights(JudgeNet(), WEIGHTS_NAME))

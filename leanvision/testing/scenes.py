"""Procedural scenes for the trained tiny models: images, short videos, questions, captions.

Everything is generated from a seed, with no downloads. An item's seed is its split's base seed
plus its index, and the bases are a million apart, so the train, validation and test splits
never share a scene (while a split holds fewer than a million items).

* **Scene VQA** (LLaVA, Qwen2-VL): 2-4 coloured shapes, each in its own cell of a 3x3 grid.
  Questions ask for the colour of a named shape, where an object is, how many shapes there
  are, or whether a shape of some colour is there. Every answer is one or two words, and all
  but the count depend on the few patches of one object.
* **Motion VQA** (Qwen2-VL video): clips of two shapes moving in straight lines, each
  appearing at an even frame. Questions ask which way an object moves, which shape appears
  first, and whether a shape is present in a given frame.
* **Captions** (text-to-image): one shape, "a red circle on the left".

>>> item = vqa_item("test", 0)
>>> item.image.shape, item.image.dtype
((96, 96, 3), dtype('uint8'))
>>> sorted({vqa_item("train", i).kind for i in range(40)})
['color', 'count', 'exists', 'where']
>>> set(vqa_item("val", 3).answer.split()) <= set(VOCABULARY)
True
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CAPTION_POSITIONS",
    "COLORS",
    "COLUMNS",
    "MOTIONS",
    "ROWS",
    "SHAPES",
    "SPLITS",
    "VOCABULARY",
    "Caption",
    "Clip",
    "Scene",
    "SceneObject",
    "VQAItem",
    "caption_item",
    "clip_item",
    "clip_question",
    "render_clip",
    "render_scene",
    "scene_question",
    "vqa_item",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 40),
    "green": (50, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (160, 70, 200),
    "cyan": (60, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
MOTIONS = ("up", "down", "left", "right")
CAPTION_POSITIONS = ("left", "right", "top", "bottom", "center")
SPLITS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
_QUESTION_WORDS = (
    *[
        "what",
        "color",
        "is",
        "the",
        "where",
        "how",
        "many",
        "shapes",
        "are",
        "there",
        "a",
        "which",
        "way",
        "does",
        "move",
    ],
    *["shape", "appears", "first", "in", "frame", "on", "yes", "no", "?"],
)
# Every word a question, answer or caption uses, in a fixed order (the tokenizers' vocabulary).
VOCABULARY = tuple(
    dict.fromkeys(
        (*COLORS, *SHAPES, *ROWS, *COLUMNS, *MOTIONS, *CAPTION_POSITIONS)
        + tuple(str(number) for number in range(16))
        + _QUESTION_WORDS
    )
)


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One shape: its kind, colour, grid cell, size (fraction of a cell) and jitter (pixels)."""

    shape: str
    color: str
    row: int
    column: int
    scale: float = 0.7
    offset: tuple[int, int] = (0, 0)

    @property
    def where(self) -> str:
        """The cell in words, e.g. ``"top left"``."""
        return f"{ROWS[self.row]} {COLUMNS[self.column]}"


@dataclasses.dataclass(frozen=True)
class Scene:
    """Shapes on a 3x3 grid, each shape kind at most once; ``background`` is a grey level."""

    objects: tuple[SceneObject, ...]
    background: int = 40


@dataclasses.dataclass(frozen=True)
class VQAItem:
    """An image (H, W, 3 uint8) or a clip (T, H, W, 3), a question, its answer and its kind,
    with the :class:`Scene` or :class:`Clip` it shows (the labels of a tower's pre-training)."""

    image: np.ndarray
    question: str
    answer: str
    kind: str
    scene: Scene | Clip


def _rng(split: str, index: int, salt: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if not 0 <= index < 1_000_000:
        raise ValueError(f"index must be in [0, 1000000), got {index!r}")
    return random.Random(SPLITS[split] + index + salt * 7_919_000)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, center, radius: float, fill) -> None:
    x, y = center
    r = radius
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _canvas(size: int, background: int, seed: int) -> Image.Image:
    noise = np.random.default_rng(seed).normal(0.0, 5.0, (size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def render_scene(scene: Scene, size: int = 96, seed: int = 0) -> np.ndarray:
    """Draw ``scene`` on a ``size`` x ``size`` noisy grey canvas; (size, size, 3) uint8.

    >>> scene = Scene((SceneObject("square", "red", row=0, column=0),))
    >>> pixels = render_scene(scene, size=48)
    >>> pixels[8, 8].tolist(), pixels[40, 40].tolist() != [220, 50, 40]
    ([220, 50, 40], True)
    """
    canvas = _canvas(size, scene.background, seed)
    draw = ImageDraw.Draw(canvas)
    cell = size / 3
    for item in scene.objects:
        center = (
            (item.column + 0.5) * cell + item.offset[0],
            (item.row + 0.5) * cell + item.offset[1],
        )
        _draw_shape(draw, item.shape, center, item.scale * cell / 2, COLORS[item.color])
    return np.array(canvas)


def random_scene(rng: random.Random, min_objects: int = 2, max_objects: int = 4) -> Scene:
    """2-4 distinct shape kinds, random colours, distinct cells, sizes and jitter."""
    count = rng.randint(min_objects, max_objects)
    shapes = rng.sample(SHAPES, count)
    cells = rng.sample(range(9), count)
    objects = tuple(
        SceneObject(
            shape=shape,
            color=rng.choice(list(COLORS)),
            row=cell // 3,
            column=cell % 3,
            scale=rng.uniform(0.55, 0.8),
            offset=(rng.randint(-3, 3), rng.randint(-3, 3)),
        )
        for shape, cell in zip(shapes, cells, strict=True)
    )
    return Scene(objects, background=rng.randint(25, 70))


def scene_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """A random question about ``scene``: ``(kind, question, answer)`` (what :func:`vqa_item`
    asks; training can ask a scene afresh each time it is drawn)."""
    kind = rng.choice(("color", "where", "count", "exists"))
    target = rng.choice(scene.objects)
    if kind == "color":
        return kind, f"what color is the {target.shape} ?", target.color
    if kind == "where":
        return kind, f"where is the {target.color} {target.shape} ?", target.where
    if kind == "count":
        return kind, "how many shapes are there ?", str(len(scene.objects))
    # Half the existence questions name an object in the scene; the other half change its
    # colour or shape to one that is not there.
    present = {(item.color, item.shape) for item in scene.objects}
    color, shape = target.color, target.shape
    if rng.random() < 0.5:
        while (color, shape) in present:
            if rng.random() < 0.5:
                color = rng.choice(list(COLORS))
            else:
                shape = rng.choice(SHAPES)
    answer = "yes" if (color, shape) in present else "no"
    return kind, f"is there a {color} {shape} ?", answer


def vqa_item(split: str, index: int, size: int = 96) -> VQAItem:
    """Scene VQA item ``index`` of ``split``: a ``size`` px image, a question and its answer.

    >>> a, b = vqa_item("train", 5), vqa_item("train", 5)
    >>> (a.image == b.image).all() and a.question == b.question
    True
    """
    rng = _rng(split, index, salt=0)
    scene = random_scene(rng)
    kind, question, answer = scene_question(scene, rng)
    image = render_scene(scene, size, seed=rng.getrandbits(32))
    return VQAItem(image, question, answer, kind, scene)


@dataclasses.dataclass(frozen=True)
class Clip:
    """Moving shapes: each object's start cell centre, motion, and first visible frame."""

    objects: tuple[SceneObject, ...]
    motions: tuple[str, ...]
    appears: tuple[int, ...]
    frames: int = 8
    background: int = 40


_STEPS = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}


def render_clip(clip: Clip, size: int = 96, seed: int = 0) -> np.ndarray:
    """The clip's frames, (frames, size, size, 3) uint8; objects move a third of the frame.

    >>> clip = Clip((SceneObject("circle", "red", 1, 1),), ("right",), (2,), frames=4)
    >>> video = render_clip(clip, size=48)
    >>> video.shape, bool((video[0] == video[1]).all()), bool((video[2] != video[3]).any())
    ((4, 48, 48, 3), True, True)
    """
    frames = []
    cell = size / 3
    for frame in range(clip.frames):
        canvas = _canvas(size, clip.background, seed)  # same noise every frame: a still camera
        draw = ImageDraw.Draw(canvas)
        for item, motion, start in zip(clip.objects, clip.motions, clip.appears, strict=True):
            if frame < start:
                continue
            dx, dy = _STEPS[motion]
            travel = cell * frame / max(1, clip.frames - 1)
            center = (
                (item.column + 0.5) * cell + dx * travel,
                (item.row + 0.5) * cell + dy * travel,
            )
            _draw_shape(draw, item.shape, center, item.scale * cell / 2, COLORS[item.color])
        frames.append(np.array(canvas))
    return np.stack(frames)


def _random_clip(rng: random.Random, frames: int) -> Clip:
    shapes = rng.sample(SHAPES, 2)
    colors = rng.sample(list(COLORS), 2)
    # Both move along one axis, in the outer lanes across it (rows 0 and 2 for left/right),
    # starting mid-lane: a third of the frame's travel either way stays inside and apart.
    horizontal = rng.random() < 0.5
    objects, motions = [], []
    for shape, color, lane in zip(shapes, colors, (0, 2), strict=True):
        row, column = (lane, 1) if horizontal else (1, lane)
        objects.append(SceneObject(shape, color, row, column, scale=rng.uniform(0.5, 0.65)))
        motions.append(rng.choice(MOTIONS[2:] if horizontal else MOTIONS[:2]))
    # The two objects appear at distinct even frames (Qwen2-VL pairs frames), the first at 0.
    later = rng.randrange(2, frames // 2 + 1, 2)
    appears = [0, later]
    rng.shuffle(appears)
    return Clip(tuple(objects), tuple(motions), tuple(appears), frames, rng.randint(25, 70))


def clip_item(split: str, index: int, size: int = 96, frames: int = 8) -> VQAItem:
    """Motion VQA item ``index`` of ``split``: a clip (frames, size, size, 3) and a question.

    >>> item = clip_item("test", 1)
    >>> item.image.shape, item.kind in ("motion", "first", "present")
    ((8, 96, 96, 3), True)
    """
    if frames < 4 or frames % 2:
        raise ValueError(f"frames must be an even number >= 4, got {frames!r}")
    rng = _rng(split, index, salt=1)
    clip = _random_clip(rng, frames)
    kind, question, answer = clip_question(clip, rng)
    video = render_clip(clip, size, seed=rng.getrandbits(32))
    return VQAItem(video, question, answer, kind, clip)


def clip_question(clip: Clip, rng: random.Random) -> tuple[str, str, str]:
    """A random question about ``clip``: ``(kind, question, answer)``, as :func:`clip_item`
    asks it."""
    kind = rng.choice(("motion", "first", "present"))
    target = rng.randrange(2)
    item = clip.objects[target]
    if kind == "motion":
        return kind, f"which way does the {item.color} {item.shape} move ?", clip.motions[target]
    if kind == "first":
        return kind, "which shape appears first ?", clip.objects[clip.appears.index(0)].shape
    frame = rng.randrange(clip.frames)
    answer = "yes" if frame >= clip.appears[target] else "no"
    return kind, f"is there a {item.shape} in frame {frame} ?", answer


@dataclasses.dataclass(frozen=True)
class Caption:
    """A text-to-image pair: one shape's image and its caption, with the caption's parts."""

    image: np.ndarray
    caption: str
    color: str
    shape: str
    position: str


_CAPTION_CELLS = {
    "left": (1, 0),
    "right": (1, 2),
    "top": (0, 1),
    "bottom": (2, 1),
    "center": (1, 1),
}


def caption_item(split: str, index: int, size: int = 32) -> Caption:
    """Caption item ``index`` of ``split``: one shape at one of five positions, e.g.
    ``"a red circle on the left"`` (``"in the center"`` for the centre).

    >>> item = caption_item("train", 0)
    >>> item.caption == caption_text(item.color, item.shape, item.position)
    True
    """
    rng = _rng(split, index, salt=2)
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    position = rng.choice(CAPTION_POSITIONS)
    row, column = _CAPTION_CELLS[position]
    item = SceneObject(shape, color, row, column, scale=rng.uniform(0.75, 0.95))
    scene = Scene((item,), background=rng.randint(25, 70))
    image = render_scene(scene, size, seed=rng.getrandbits(32))
    return Caption(image, caption_text(color, shape, position), color, shape, position)


def caption_text(color: str, shape: str, position: str) -> str:
    """The caption of one shape: ``caption_text("red", "circle", "left")`` is
    ``"a red circle on the left"``."""
    where = "in the center" if position == "center" else f"on the {position}"
    return f"a {color} {shape} {where}"

"""The procedural tasks: every answer checked against the rendered pixels, not the scene.

The oracle reads the image the way a person would: coloured (saturated) pixels are shapes on
the grey background; a shape's cell is where its pixels are; its colour is the nearest palette
entry to their mean.
"""

from __future__ import annotations

import numpy as np
import pytest

from leanvision.testing.scenes import (
    CAPTION_POSITIONS,
    COLORS,
    COLUMNS,
    ROWS,
    VOCABULARY,
    caption_item,
    clip_item,
    render_scene,
    vqa_item,
)

ITEMS = 300


def _saturated(image: np.ndarray) -> np.ndarray:
    image = image.astype(int)
    return (image.max(-1) - image.min(-1)) > 60


def _color_mask(image: np.ndarray, color: str) -> np.ndarray:
    distance = np.abs(image.astype(int) - np.array(COLORS[color])).sum(-1)
    return distance < 40


def _cell(image: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    third = image.shape[0] // 3
    row, column = cell
    return image[row * third : (row + 1) * third, column * third : (column + 1) * third]


def _cells_with_shapes(image: np.ndarray) -> set[tuple[int, int]]:
    cells = {(row, column) for row in range(3) for column in range(3)}
    return {cell for cell in cells if _saturated(_cell(image, cell)).sum() > 10}


def _cell_mask(image: np.ndarray, cell: tuple[int, int], color: str) -> np.ndarray:
    return _color_mask(_cell(image, cell), color)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _cell_of(point: tuple[float, float], size: int) -> tuple[int, int]:
    x, y = point
    return int(y * 3 // size), int(x * 3 // size)


def test_items_are_deterministic_and_splits_differ():
    a, b = vqa_item("train", 7), vqa_item("train", 7)
    assert (a.image == b.image).all() and (a.question, a.answer) == (b.question, b.answer)
    images = {
        split: {vqa_item(split, i).image.tobytes() for i in range(50)}
        for split in ("train", "val", "test")
    }
    assert not images["train"] & images["val"] and not images["val"] & images["test"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_scene_answers_match_the_pixels(split):
    kinds = set()
    for index in range(ITEMS):
        item = vqa_item(split, index)
        kinds.add(item.kind)
        image, words = item.image, item.question.split()
        cells = _cells_with_shapes(image)
        if item.kind == "count":
            assert str(len(cells)) == item.answer, (index, item.question)
        elif item.kind == "where":
            row, column = item.answer.split()
            cell = (ROWS.index(row), COLUMNS.index(column))
            assert cell in cells and _cell_mask(image, cell, words[3]).sum() > 10, index
        elif item.kind == "color":
            # the answer colour must fill one of the occupied cells
            assert any(_cell_mask(image, cell, item.answer).sum() > 10 for cell in cells)
        elif item.kind == "exists" and item.answer == "yes":
            assert any(_cell_mask(image, cell, words[3]).sum() > 10 for cell in cells), index
    assert kinds == {"color", "where", "count", "exists"}


def test_existence_answers_are_balanced_and_words_are_in_the_vocabulary():
    items = [vqa_item("train", i) for i in range(600)]
    exists = [item.answer for item in items if item.kind == "exists"]
    assert 0.35 < exists.count("yes") / len(exists) < 0.65
    words = {word for item in items for word in f"{item.question} {item.answer}".split()}
    assert words <= set(VOCABULARY)


def test_clip_answers_match_the_frames():
    for index in range(120):
        item = clip_item("val", index)
        video, clip = item.image, item.scene
        masks = [[_color_mask(frame, obj.color) for frame in video] for obj in clip.objects]
        for start, own in zip(clip.appears, masks, strict=True):
            visible = [bool(mask.sum() > 10) for mask in own]
            assert visible == [frame >= start for frame in range(len(video))], index
        if item.kind == "motion":
            words = item.question.split()
            target = next(i for i, obj in enumerate(clip.objects) if obj.color == words[4])
            own = masks[target]
            (x0, y0), (x1, y1) = _centroid(own[clip.appears[target]]), _centroid(own[-1])
            moved = {"left": x0 - x1, "right": x1 - x0, "up": y0 - y1, "down": y1 - y0}
            assert moved[item.answer] > 5, (index, item.question)
        elif item.kind == "first":
            first = [
                obj.shape for obj, own in zip(clip.objects, masks, strict=True) if own[0].sum() > 10
            ]
            assert first == [item.answer]
        else:
            shape, frame = item.question.split()[3], int(item.question.split()[6])
            target = next(i for i, obj in enumerate(clip.objects) if obj.shape == shape)
            on_screen = masks[target][frame].sum() > 10
            assert ("yes" if on_screen else "no") == item.answer, (index, item.question)


def test_captions_match_the_pixels():
    size = 32
    for index in range(200):
        item = caption_item("test", index, size=size)
        x, y = _centroid(_color_mask(item.image, item.color))
        cell = _cell_of((x, y), size)
        expected = {
            "left": (1, 0),
            "right": (1, 2),
            "top": (0, 1),
            "bottom": (2, 1),
            "center": (1, 1),
        }[item.position]
        assert cell == expected, (index, item.caption)
        assert item.position in CAPTION_POSITIONS
        assert set(item.caption.split()) <= set(VOCABULARY)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split"):
        vqa_item("dev", 0)
    with pytest.raises(ValueError, match="index"):
        vqa_item("train", -1)
    with pytest.raises(ValueError, match="frames"):
        clip_item("train", 0, frames=7)
    with pytest.raises(ValueError, match="shape"):
        from leanvision.testing.scenes import Scene, SceneObject

        render_scene(Scene((SceneObject("hexagon", "red", 0, 0),)))

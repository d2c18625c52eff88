"""The stage-2 helpers of the training scripts (``training/``): multi-turn conversations, the
word-alignment loss and the per-token words it is given."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

TRAINING = Path(__file__).resolve().parents[2] / "training"
sys.path.insert(0, str(TRAINING))

import common  # noqa: E402
import train_llava  # noqa: E402
import train_qwen2_vl  # noqa: E402

from leanvision.testing.scenes import (  # noqa: E402
    COLUMNS,
    ROWS,
    clip_item,
    vqa_item,
)
from leanvision.testing.trained.llava import LLAVA_SHAPE  # noqa: E402
from leanvision.testing.trained.qwen2_vl import QWEN2_VL_SHAPE  # noqa: E402
from leanvision.testing.trained.vqa import build_scene_vlm, vqa_inputs  # noqa: E402


@pytest.fixture(scope="module")
def processors():
    return {
        "llava": build_scene_vlm(LLAVA_SHAPE).info["processor"],
        "qwen2_vl": build_scene_vlm(QWEN2_VL_SHAPE).info["processor"],
    }


@pytest.mark.parametrize(
    ("family", "media", "tokens"),
    [("llava", "image", 144), ("qwen2_vl", "image", 144), ("qwen2_vl", "video", 576)],
)
def test_first_turn_is_the_scored_prompt_and_every_answer_is_labelled(
    processors, family, media, tokens
):
    processor = processors[family]
    make = clip_item if media == "video" else vqa_item
    items = [make("val", index) for index in range(3)]
    turns = common.Turns(processor.tokenizer, family, media, tokens)
    ids, labels = turns([(item.question, item.answer) for item in items])
    # Oracle: the family's processor expands the media and tokenizes the scored prompt.
    scored = vqa_inputs(processor, family, items[:1], answers=True)["input_ids"][0]
    assert torch.equal(ids[: len(scored)], scored)
    placeholder = "<image>" if family == "llava" else f"<|{media}_pad|>"
    assert (ids == processor.tokenizer.convert_tokens_to_ids(placeholder)).sum() == tokens
    eos = processor.tokenizer.eos_token
    expected = " ".join(f"{item.answer} {eos}" for item in items)
    assert processor.tokenizer.decode(ids[labels != -100]) == expected
    assert torch.equal(ids[labels != -100], labels[labels != -100])


def test_alignment_loss_is_the_mean_word_cross_entropy_of_described_tokens():
    torch.manual_seed(0)
    embeddings = torch.nn.Embedding(7, 5)
    projected = torch.randn(2, 3, 5)
    words = torch.tensor([[[1, 4], [-100, -100], [2, -100]], [[-100, -100], [6, 0], [-100, -100]]])
    # Oracle: a loop over every (token, word) pair that names something.
    terms = []
    for token, token_words in zip(projected.flatten(0, 1), words.flatten(0, 1), strict=True):
        scores = embeddings.weight @ token
        for word in token_words.tolist():
            if word != -100:
                terms.append(torch.logsumexp(scores, 0) - scores[word])
    expected = torch.stack(terms).mean()
    loss = common.alignment_loss(projected, words, embeddings)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    loss.backward()  # it trains the embeddings too
    assert embeddings.weight.grad.abs().sum() > 0


def _centre(obj, token_px: int) -> tuple[int, int]:
    """The (row, column) of the token under ``obj``'s centre pixel (96 px image)."""
    x = (obj.column + 0.5) * 32 + obj.offset[0]
    y = (obj.row + 0.5) * 32 + obj.offset[1]
    return int(y // token_px), int(x // token_px)


def _expected_words(tokenizer, obj) -> list[int]:
    names = [obj.shape, obj.color, ROWS[obj.row], COLUMNS[obj.column]]
    return tokenizer.convert_tokens_to_ids(names)


def test_llava_patch_words_name_the_object_under_each_patch(processors):
    tokenizer = processors["llava"].tokenizer
    items = [vqa_item("val", index) for index in range(6)]
    words = train_llava.patch_words(items, tokenizer)
    assert words.shape == (6, 144, 4)
    for item, item_words in zip(items, words, strict=True):
        grid = item_words.view(12, 12, 4)
        for obj in item.scene.objects:
            row, column = _centre(obj, 8)
            assert grid[row, column].tolist() == _expected_words(tokenizer, obj)
        occupied = {(obj.row, obj.column) for obj in item.scene.objects}
        for cell in set(range(9)) - {r * 3 + c for r, c in occupied}:
            # Oracle: the patch at an empty cell's centre shows background.
            row, column = (cell // 3) * 4 + 2, (cell % 3) * 4 + 2
            assert grid[row, column].tolist() == [-100] * 4


def test_qwen2_vl_token_words_name_shapes_cells_and_motions(processors):
    tokenizer = processors["qwen2_vl"].tokenizer
    ids = tokenizer.convert_tokens_to_ids

    def word_ids(words):
        return torch.tensor([-100 if word in ("empty", "still") else ids(word) for word in words])

    item = vqa_item("val", 4)
    grid = train_qwen2_vl.token_words(item, word_ids).view(12, 12, 4)
    for obj in item.scene.objects:
        assert grid[_centre(obj, 8)].tolist() == _expected_words(tokenizer, obj)
    clip = clip_item("val", 2)
    words = train_qwen2_vl.token_words(clip, word_ids)
    assert words.shape == (4 * 144, 3)
    named = set(words[..., 2][words[..., 2] != -100].tolist())
    assert named == set(ids(list(clip.scene.motions)))
    shapes = set(words[..., 0][words[..., 0] != -100].tolist())
    assert shapes == set(ids([obj.shape for obj in clip.scene.objects]))

"""The trained tiny Qwen2-VL loads offline and answers scene and motion questions.

The oracle is the procedural generator: every test item carries its true answer, computed from
the scene that was drawn, never from the model. Thresholds sit a margin below what the shipped
weights score on these fixed items (training/logs/qwen2_vl-loss.json has 300-item scores).
"""

from __future__ import annotations

import pytest
import torch

from leanvision.testing.scenes import clip_item, vqa_item
from leanvision.testing.trained.qwen2_vl import trained_qwen2_vl
from leanvision.testing.trained.vqa import answer_questions, vqa_accuracy, vqa_inputs
from leanvision.testing.trained.weights import weights_path

pytestmark = pytest.mark.skipif(
    not weights_path("qwen2_vl").exists(), reason="run training/train_qwen2_vl.py first"
)

IMAGE_ITEMS = 64
CLIP_ITEMS = 64
# The shipped weights (training/train_qwen2_vl.py defaults) score 35/64 on these images and
# 54/64 on these clips: short of the 90% image target of issue 15 (count and colour are
# learned; position is not, and existence is near its most common answer). Answering each
# kind's most common answer scores 28/64 and 35/64. The thresholds leave a margin for float
# noise across CPUs and library versions; raise them when better weights ship.
IMAGE_THRESHOLD = 0.47
VIDEO_THRESHOLD = 0.78
# Kinds the model answers clearly better than their most common answer on these items.
LEARNED_KINDS = {"image": ("count", "color"), "video": ("first", "motion")}


def _assert_beats_majority(items, scores, kinds):
    for kind in kinds:
        answers = [item.answer for item in items if item.kind == kind]
        majority = max(answers.count(answer) for answer in set(answers)) / len(answers)
        assert scores[kind] > majority + 0.1, (kind, scores, majority)


@pytest.fixture(scope="module")
def tiny():
    return trained_qwen2_vl(batch=2)


@pytest.fixture(scope="module")
def images():
    return [vqa_item("test", index) for index in range(IMAGE_ITEMS)]


@pytest.fixture(scope="module")
def clips():
    return [clip_item("test", index) for index in range(CLIP_ITEMS)]


def test_loader_inputs_have_the_promised_token_counts(tiny):
    ids = tiny.inputs["input_ids"]
    per_row = (ids == tiny.info["image_token_id"]).sum(-1)
    assert per_row.tolist() == [tiny.info["num_image_tokens"]] * 2 == [144, 144]
    assert tiny.info["media"] == "image"
    assert [item.question for item in tiny.info["items"]] == [
        vqa_item("test", index).question for index in range(2)
    ]
    video = trained_qwen2_vl(batch=3, video=True)
    ids = video.inputs["input_ids"]
    assert (ids == video.info["video_token_id"]).sum(-1).tolist() == [576] * 3
    assert video.info["num_video_tokens"] == 576 and video.info["media"] == "video"
    assert video.inputs["video_grid_thw"].tolist() == [[4, 24, 24]] * 3


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch"):
        trained_qwen2_vl(batch=0)
    with pytest.raises(ValueError, match="attn_implementation"):
        trained_qwen2_vl(attn_implementation="flash")
    with pytest.raises(TypeError, match="video"):
        trained_qwen2_vl(video="yes")


def test_image_accuracy_uncompressed(tiny, images):
    scores = vqa_accuracy(tiny, images)
    assert scores["all"] >= IMAGE_THRESHOLD, scores
    _assert_beats_majority(images, scores, LEARNED_KINDS["image"])


def test_video_accuracy_uncompressed(tiny, clips):
    scores = vqa_accuracy(tiny, clips)
    assert scores["all"] >= VIDEO_THRESHOLD, scores
    _assert_beats_majority(clips, scores, LEARNED_KINDS["video"])


def test_batched_left_padded_generation_matches_batch_one(tiny, images, clips):
    # Scene questions all have 6 words; motion questions have 5 or 8, so a batch of them is
    # left-padded by different amounts per row.
    picked = [item for item in images if item.kind in ("count", "where")][:3]
    picked += [item for item in images if item.kind in ("color", "exists")][:3]
    assert answer_questions(tiny, picked, batch_size=6) == answer_questions(
        tiny, picked, batch_size=1
    )
    videos = [item for item in clips if item.kind == "first"][:1]
    videos += [item for item in clips if item.kind == "present"][:2]
    assert len({len(item.question.split()) for item in videos}) > 1
    inputs = vqa_inputs(tiny.info["processor"], "qwen2_vl", videos)
    assert (inputs["attention_mask"] == 0).any()  # some row is padded
    assert answer_questions(tiny, videos, batch_size=3) == answer_questions(
        tiny, videos, batch_size=1
    )


def test_eager_attention_gives_the_same_logits(tiny):
    eager = trained_qwen2_vl(batch=2, attn_implementation="eager")
    with torch.no_grad():
        expected = tiny.model(**tiny.inputs).logits[:, -1]
        got = eager.model(**eager.inputs).logits[:, -1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

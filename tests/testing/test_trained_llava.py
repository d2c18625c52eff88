"""The trained LLaVA loads offline and answers scene questions as trained."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from leanvision.testing import trained_llava
from leanvision.testing.scenes import vqa_item
from leanvision.testing.trained.vqa import answer_questions, vqa_accuracy
from leanvision.testing.trained.weights import load_weights, weights_path

# The shipped weights score 0.86 on the first 200 test questions (colour 1.0, count 1.0,
# where 0.89; existence is not learned: the model says "yes" to almost every one, so issue
# 15's 90% target is not met yet, see docs/accuracy.md). The thresholds leave a margin for
# BLAS differences between machines; raise them when better weights ship.
TEST_SLICE = 200
MIN_ACCURACY = 0.82
MIN_KIND_ACCURACY = {"color": 0.95, "count": 0.95, "where": 0.8}


@pytest.fixture(scope="module")
def llava():
    return trained_llava()


def test_loader_builds_the_real_class_with_144_image_tokens(llava):
    assert type(llava.model) is tf.LlavaForConditionalGeneration
    image_token = llava.info["image_token_id"]
    assert (llava.inputs["input_ids"] == image_token).sum(1).tolist() == [144, 144]
    dtypes = {tensor.dtype for tensor in load_file(str(weights_path("llava"))).values()}
    assert dtypes == {torch.float16}


def test_uncompressed_accuracy_reaches_the_target(llava):
    items = [vqa_item("test", index) for index in range(TEST_SLICE)]
    scores = vqa_accuracy(llava, items)
    assert scores["all"] >= MIN_ACCURACY, scores
    for kind, least in MIN_KIND_ACCURACY.items():
        assert scores[kind] >= least, (kind, scores)


def test_batched_left_padded_answers_equal_one_at_a_time(llava):
    items = [vqa_item("test", index) for index in range(200, 212)]
    # Every scene question has 6 words; two reworded ones make the batch's rows differ in
    # length, so that left padding is exercised.
    items[0] = dataclasses.replace(items[0], question="how many shapes are there here ?")
    items[1] = dataclasses.replace(items[1], question=f"? {items[1].question}")
    batched = answer_questions(llava, items, batch_size=12)
    single = [answer_questions(llava, [item])[0] for item in items]
    assert batched == single


def test_random_weights_do_not_answer(llava):
    # The oracle of the accuracy test: the same model class untrained scores near zero.
    from leanvision.testing.trained.llava import LLAVA_SHAPE
    from leanvision.testing.trained.vqa import build_scene_vlm

    untrained = build_scene_vlm(LLAVA_SHAPE, seed=1)
    items = [vqa_item("test", index) for index in range(48)]
    assert vqa_accuracy(untrained, items)["all"] < 0.3


def test_weights_must_match_the_architecture():
    from leanvision.testing.trained.vqa import build_scene_vlm
    from leanvision.testing.vlm_shapes import TINY_SHAPES

    other = build_scene_vlm(TINY_SHAPES["llava"])
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(other.model, "llava")

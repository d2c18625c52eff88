"""segment(): class map and overlay shapes, palettes, preprocessing, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from leanvision.datasets import load_image, sample_image_paths
from leanvision.vision import PALETTES, Palette, colorize, efficientvit_seg, segment
from leanvision.vision.segmentation import IMAGENET_MEAN, IMAGENET_STD


class _ConstantClass(torch.nn.Module):
    """Logits at 1/8 resolution whose argmax is ``winner`` everywhere; records its input."""

    def __init__(self, num_classes, winner):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.num_classes, self.winner, self.seen = num_classes, winner, None

    def forward(self, x):
        self.seen = x
        logits = torch.zeros(x.shape[0], self.num_classes, -(-x.shape[2] // 8), -(-x.shape[3] // 8))
        logits[:, self.winner] = 1.0
        return logits * self.scale


def test_palettes_have_the_dataset_sizes_and_distinct_colours():
    assert len(PALETTES["cityscapes"]) == 19 and len(PALETTES["ade20k"]) == 150
    for palette in PALETTES.values():
        assert palette.colors.dtype == np.uint8 and palette.colors.shape == (len(palette), 3)
        assert len(set(palette.classes)) == len(palette)
    assert len({tuple(c) for c in PALETTES["cityscapes"].colors.tolist()}) == 19
    # The standard ADE20K palette draws 'road' and 'skyscraper' in the same grey.
    assert len({tuple(c) for c in PALETTES["ade20k"].colors.tolist()}) == 149
    assert PALETTES["cityscapes"].classes[0] == "road"
    assert PALETTES["ade20k"].classes[0] == "wall"


def test_segment_real_model_on_a_sample_photo(tiny_seg):
    path = sample_image_paths()[0]
    image = load_image(path)
    result = segment(tiny_seg, path)
    assert result.class_map.shape == (image.height, image.width)
    assert result.class_map.dtype == np.int64
    assert result.class_map.min() >= 0 and result.class_map.max() < 5
    assert result.overlay.size == image.size and result.overlay.mode == "RGB"
    assert result.logits.shape == (5, image.height, image.width)
    np.testing.assert_array_equal(result.class_map, result.logits.argmax(0).numpy())
    assert result.palette.name == "generated-5"  # no dataset palette has 5 classes


@pytest.mark.parametrize("name, classes", [("cityscapes", 19), ("ade20k", 150)])
def test_overlay_uses_the_palette_colour_of_the_class(name, classes):
    winner = 11
    image = np.full((40, 56, 3), 200, dtype=np.uint8)
    model = _ConstantClass(classes, winner)
    result = segment(model, image, alpha=0.5)
    assert result.palette.name == name
    assert (result.class_map == winner).all()
    expected = np.round(0.5 * 200 + 0.5 * PALETTES[name].colors[winner].astype(np.float32))
    assert (np.asarray(result.overlay) == expected.astype(np.uint8)).all()
    full = segment(model, image, alpha=1.0)
    np.testing.assert_array_equal(np.asarray(full.overlay), colorize(full.class_map, name))
    untouched = segment(model, image, alpha=0.0)
    np.testing.assert_array_equal(np.asarray(untouched.overlay), image)


def test_preprocessing_is_imagenet_normalisation_and_resizing():
    model = _ConstantClass(19, 0)
    image = np.zeros((40, 56, 3), dtype=np.uint8)
    image[..., 0] = 255
    segment(model, image)
    seen = model.seen[0]
    assert seen.shape == (3, 40, 56)
    expected_red = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    torch.testing.assert_close(seen[0], torch.full((40, 56), expected_red))
    torch.testing.assert_close(seen[1], torch.full((40, 56), -IMAGENET_MEAN[1] / IMAGENET_STD[1]))
    result = segment(model, Image.fromarray(image), size=(64, 96))
    assert model.seen.shape[-2:] == (64, 96)
    assert result.class_map.shape == (40, 56)  # back at the image's own size


def test_palette_can_be_chosen_and_bad_choices_raise():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    model = _ConstantClass(19, 3)
    assert segment(model, image, palette="ade20k").palette.name == "ade20k"
    custom = Palette(
        "mine", tuple("abcdefghijklmnopqrs"), np.arange(57, dtype=np.uint8).reshape(19, 3)
    )
    assert (
        np.asarray(segment(model, image, palette=custom, alpha=1.0).overlay) == [9, 10, 11]
    ).all()
    with pytest.raises(ValueError, match=r"palette must be one of \['ade20k', 'cityscapes'\]"):
        segment(model, image, palette="voc")
    with pytest.raises(ValueError, match="at least 150"):
        segment(_ConstantClass(150, 0), image, palette="cityscapes")
    with pytest.raises(ValueError, match="alpha"):
        segment(model, image, alpha=1.5)
    with pytest.raises(ValueError, match="allows 0..18"):
        colorize(np.array([[19]]), "cityscapes")


def test_segment_bad_images_raise():
    model = efficientvit_seg("b0", num_classes=19)
    with pytest.raises(TypeError, match="image must be"):
        segment(model, 3.14)
    with pytest.raises(ValueError):
        segment(model, "/nonexistent/photo.jpg")
    with pytest.raises(ValueError, match=">= 32"):
        segment(model, np.zeros((16, 64, 3), dtype=np.uint8))

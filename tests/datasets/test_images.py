import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanvision.datasets import MediaError, load_image, sample_image_paths


def _sample(name: str) -> str:
    return next(path for path in sample_image_paths() if os.path.basename(path) == name)


def test_samples_load_as_rgb():
    for path in sample_image_paths():
        image = load_image(path)
        assert image.mode == "RGB"
        assert image.width > 0 and image.height > 0


def test_exif_orientation_turns_the_sideways_sample_upright():
    path = _sample("scene_exif_rotated.jpg")
    with Image.open(path) as raw:
        assert raw.getexif().get(0x0112) == 6
        assert raw.size == (240, 320)  # stored lying on its side
    upright = load_image(path)
    assert upright.size == (320, 240)
    pixels = np.asarray(upright).astype(int)
    # The red marker is in the upright top-left corner ...
    assert np.abs(pixels[5:25, 5:35] - [255, 0, 0]).mean() < 20
    # ... and the rest matches the unrotated scene (up to JPEG noise).
    scene = np.asarray(load_image(_sample("scene.jpg"))).astype(int)
    assert np.abs(pixels[60:, :] - scene[60:, :]).mean() < 6
    # Turning the wrong way would put the marker elsewhere.
    assert np.abs(pixels[-25:-5, -35:-5] - [255, 0, 0]).mean() > 100


def test_exif_orientation_is_applied_to_an_opened_pil_image_too():
    with Image.open(_sample("scene_exif_rotated.jpg")) as raw:
        assert load_image(raw).size == (320, 240)
        assert raw.size == (240, 320)  # the caller's image is not modified


def test_grayscale_sample_becomes_three_equal_channels():
    pixels = np.asarray(load_image(_sample("gradient_gray.png")))
    assert pixels.shape == (48, 128, 3)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    assert pixels[0, 0, 0] < pixels[0, -1, 0]  # still a ramp


def test_palette_sample_composites_its_transparent_colour_over_white():
    with Image.open(_sample("shapes_palette.png")) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    pixels = np.asarray(load_image(_sample("shapes_palette.png")))
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])  # transparent background
    np.testing.assert_array_equal(pixels[20, 20], [255, 0, 0])  # opaque red rectangle


@pytest.mark.parametrize(
    "shape,dtype",
    [((6, 8), np.uint8), ((6, 8, 1), np.uint8), ((6, 8, 3), np.uint8), ((6, 8, 3), np.float32)],
)
def test_arrays_of_each_layout_load_as_rgb(shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        array = rng.integers(0, 256, size=shape, dtype=np.uint8)
        expected = array
    else:
        array = rng.random(size=shape).astype(dtype)
        expected = np.round(array * 255).astype(np.uint8)
    pixels = np.asarray(load_image(array))
    assert pixels.shape == (6, 8, 3)
    if expected.ndim == 2 or expected.shape[-1] == 1:
        expected = np.repeat(expected.reshape(6, 8, 1), 3, axis=2)
    np.testing.assert_array_equal(pixels, expected)


def test_rgba_array_composites_over_white():
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[..., 0] = 200
    array[0, 0, 3] = 255  # one opaque pixel, the rest fully transparent
    array[1, 1, 3] = 128
    pixels = np.asarray(load_image(array)).astype(int)
    np.testing.assert_array_equal(pixels[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(pixels[3, 3], [255, 255, 255])
    assert abs(pixels[1, 1, 1] - 127) <= 2  # half way between white and black green


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "I;16", "F"])
def test_pil_modes_are_converted_to_rgb(mode):
    image = Image.new(mode, (5, 3))
    converted = load_image(image)
    assert converted.mode == "RGB" and converted.size == (5, 3)


@pytest.mark.parametrize(
    "array,match",
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "height and width"),
        (np.full((4, 4, 3), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((4, 4, 3), -0.1, np.float64), r"\[0, 1\]"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), np.int16), "dtype"),
    ],
)
def test_bad_arrays_raise_value_error_naming_the_problem(array, match):
    with pytest.raises(ValueError, match=match):
        load_image(array)


def test_other_types_raise_type_error():
    with pytest.raises(TypeError, match="path, a PIL.Image or a numpy array"):
        load_image(42)


def _assert_names_file(error: pytest.ExceptionInfo, path) -> None:
    assert isinstance(error.value, ValueError)
    assert isinstance(error.value, MediaError)
    assert os.path.basename(str(path)) in str(error.value)
    assert error.value.path == str(path)


def test_text_file_named_jpg_raises_value_error_naming_it(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(ValueError, match="not a recognised image") as error:
        load_image(path)
    _assert_names_file(error, path)


def test_truncated_jpeg_raises_value_error_naming_it(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(Path(_sample("scene.jpg")).read_bytes()[:3000])
    with pytest.raises(ValueError, match="truncated or corrupt") as error:
        load_image(path)
    _assert_names_file(error, path)


@pytest.mark.parametrize("problem", ["missing", "empty", "directory"])
def test_unusable_paths_raise_value_error_naming_them(tmp_path, problem):
    path = tmp_path / "photo.png"
    if problem == "empty":
        path.write_bytes(b"")
    elif problem == "directory":
        path.mkdir()
    expected = {"missing": "does not exist", "empty": "empty", "directory": "directory"}[problem]
    with pytest.raises(ValueError, match=expected) as error:
        load_image(str(path))
    _assert_names_file(error, path)

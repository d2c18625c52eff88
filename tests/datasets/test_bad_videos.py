"""Every bad input gives a ValueError that names the file and the problem: no crash, no hang."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leanvision.datasets import MediaError, load_video, sample_image_paths, sample_video_path
from leanvision.datasets.video_backends import import_optional

pytest.importorskip("av")
HAS_DECORD = import_optional("decord") is not None
BACKENDS = ["auto", "pyav"] + (["decord"] if HAS_DECORD else [])

# file -> what the message must say
PROBLEMS = {
    "truncated_no_index.mp4": "not a readable video",
    "truncated.mp4": "truncated: the container lists 90 frames but only",
    "corrupt.mp4": "truncated or corrupt",
    "text.mp4": "not a readable video",
    "empty.mp4": "empty",
    "zero_frames.mkv": "no video frames",
    "audio_only.mp4": "no video stream",
    "missing.mp4": "does not exist",
    "directory.mp4": "directory",
}


def _check(error: pytest.ExceptionInfo, path: str) -> None:
    assert isinstance(error.value, MediaError)
    assert error.value.path == path
    assert repr(path) in str(error.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_broken_file_raises_value_error_naming_it(broken_videos, name, backend):
    path = broken_videos[name]
    with pytest.raises(ValueError, match=PROBLEMS[name]) as error:
        load_video(path, num_frames=4, backend=backend)
    _check(error, path)


@pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_broken_file_raises_value_error_with_decord_alone(broken_videos, without_modules, name):
    # Without PyAV nothing probes the file first: decord's own errors must be translated.
    without_modules("av")
    path = broken_videos[name]
    with pytest.raises(ValueError) as error:
        load_video(path, num_frames=4)
    _check(error, path)


@pytest.mark.parametrize("fps", [0, -2.5, 0.0, float("nan")])
def test_non_positive_fps_raises_value_error_naming_the_file(fps):
    path = sample_video_path()
    with pytest.raises(ValueError, match="fps=.* is out of range") as error:
        load_video(path, fps=fps)
    _check(error, path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_frames_than_the_video_has_raises_value_error(backend):
    path = sample_video_path()
    with pytest.raises(ValueError, match="num_frames=91 is more than the 90 frames") as error:
        load_video(path, num_frames=91, backend=backend)
    _check(error, path)
    with pytest.raises(ValueError, match="30 frames the video has between") as error:
        load_video(path, num_frames=31, start=1.0, end=2.0, backend=backend)
    _check(error, path)


@pytest.mark.parametrize(
    "arguments,match",
    [
        ({"num_frames": 0}, "num_frames=0 is out of range"),
        ({"start": 3.5}, "start=3.5 is out of range"),
        ({"start": -1.0}, "start=-1.0 is out of range"),
        ({"start": 2.0, "end": 1.0}, "end=1.0 is out of range"),
        ({"num_frames": 4, "fps": 2.0}, "give at most one"),
    ],
)
def test_bad_ranges_raise_value_error_naming_the_file(arguments, match):
    path = sample_video_path()
    with pytest.raises(ValueError, match=match) as error:
        load_video(path, **arguments)
    assert os.path.basename(path) in str(error.value)


def test_unknown_backend_names_the_choices():
    with pytest.raises(
        ValueError, match=r"backend='ffmpeg' is not allowed.*'auto', 'decord', 'pyav'"
    ):
        load_video(sample_video_path(), backend="ffmpeg")


_CHILD = r"""
import json, sys
if sys.argv[1] == "decord-only":
    sys.modules["av"] = None  # nothing probes the file before decord sees it
from leanvision.datasets import load_video
results = {}
for path in sys.argv[2:]:
    for request in ({}, {"num_frames": 4}, {"fps": 1.0}):
        try:
            load_video(path, backend="auto", **request)
            outcome = "loaded"
        except ValueError as error:
            outcome = "ValueError" if path in str(error) else "ValueError without the path"
        results[f"{path} {request}"] = outcome
print(json.dumps(results))
"""


@pytest.mark.parametrize("mode", ["auto"] + (["decord-only"] if HAS_DECORD else []))
def test_broken_files_neither_crash_nor_hang_the_interpreter(broken_videos, mode):
    # A child process, so that a segfault or an endless native loop in a decoder fails this
    # test instead of taking the whole test session down with it.
    paths = [broken_videos[name] for name in sorted(PROBLEMS)]
    try:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, mode, *paths],
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"load_video hung on one of {paths} ({mode})")
    assert child.returncode == 0, (
        f"decoder crashed ({mode}): rc={child.returncode}\n{child.stderr[-2000:]}"
    )
    results = json.loads(child.stdout.strip().splitlines()[-1])
    assert len(results) == 3 * len(paths)
    assert set(results.values()) == {"ValueError"}, results


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(4))
def test_an_image_says_it_is_an_image_and_points_at_load_image(index, backend):
    path = sample_image_paths()[index]  # JPEG, EXIF JPEG, grayscale PNG, palette PNG
    with pytest.raises(ValueError, match=r"this is a (JPEG|PNG) image, not a video") as error:
        load_video(path, num_frames=4, backend=backend)
    _check(error, path)
    assert "use leanvision.datasets.load_image" in str(error.value)
    assert "frames" not in str(error.value)


def test_an_image_is_recognised_by_content_and_by_extension(tmp_path, without_modules):
    without_modules("av", "decord")  # said before any decoder is needed
    renamed = tmp_path / "holiday.mp4"
    renamed.write_bytes(Path(sample_image_paths()[0]).read_bytes())
    with pytest.raises(MediaError, match="this is a JPEG image, not a video"):
        load_video(renamed)
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"not a png at all" * 4)
    with pytest.raises(MediaError, match=r"image file \(by its \.png extension\).*load_image"):
        load_video(damaged)


def test_an_animated_gif_is_still_decoded_as_a_video(tmp_path):
    from PIL import Image

    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(5)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert len(load_video(path, backend="pyav")) == 5

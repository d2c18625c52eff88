import numpy as np
import pytest

from leanvision import MissingDependencyError
from leanvision.datasets import Video, load_video, sample_video_path
from leanvision.datasets import video as video_module
from leanvision.datasets.samples.generate import VIDEO_FPS, VIDEO_FRAMES, frame_index_from_bar
from leanvision.datasets.video_backends import DecordFailed, import_optional

pytest.importorskip("av")
HAS_DECORD = import_optional("decord") is not None
BACKENDS = ["pyav"] + (["decord"] if HAS_DECORD else [])
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")


def _shown_indices(video: Video) -> list[int]:
    """The frame numbers drawn into the frames (the sample's bottom bar)."""
    return [frame_index_from_bar(frame) for frame in video.frames]


@pytest.fixture(scope="module")
def full_decodes() -> dict[str, Video]:
    return {backend: load_video(sample_video_path(), backend=backend) for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_sample_decodes_every_frame_in_order(full_decodes, backend):
    video = full_decodes[backend]
    assert video.backend == backend
    assert video.frames.shape == (VIDEO_FRAMES, 240, 320, 3)
    assert video.frames.dtype == np.uint8 and video.frames.flags["C_CONTIGUOUS"]
    assert len(video) == VIDEO_FRAMES == video.num_source_frames
    assert video.fps == pytest.approx(VIDEO_FPS)
    assert video.duration == pytest.approx(VIDEO_FRAMES / VIDEO_FPS)
    np.testing.assert_array_equal(video.indices, np.arange(VIDEO_FRAMES))
    assert _shown_indices(video) == list(range(VIDEO_FRAMES))
    assert video.timestamps.dtype == np.float64 and video.timestamps.shape == (VIDEO_FRAMES,)
    assert video.timestamps[0] == 0.0
    assert np.all(np.diff(video.timestamps) > 0)
    np.testing.assert_allclose(video.timestamps, np.arange(VIDEO_FRAMES) / VIDEO_FPS, atol=1e-3)


@needs_decord
def test_decord_and_pyav_agree_on_count_and_pixels(full_decodes):
    a, b = full_decodes["decord"].frames, full_decodes["pyav"].frames
    assert a.shape == b.shape
    difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert difference.mean() < 1.0 and difference.max() <= 32
    np.testing.assert_allclose(full_decodes["decord"].timestamps, full_decodes["pyav"].timestamps)


@needs_decord
def test_auto_prefers_decord():
    assert load_video(sample_video_path(), num_frames=2).backend == "decord"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "request_,expected",
    [
        ({"num_frames": 8}, [0, 13, 25, 38, 51, 64, 76, 89]),
        ({"num_frames": 1}, [0]),
        ({"num_frames": VIDEO_FRAMES}, list(range(VIDEO_FRAMES))),
        ({"fps": 2.0}, [0, 15, 30, 45, 60, 75]),
        ({"fps": 120.0}, list(range(VIDEO_FRAMES))),
        ({"start": 1.0, "end": 2.0}, list(range(30, 60))),
        ({"num_frames": 4, "start": 2.0}, [60, 70, 79, 89]),
        ({"fps": 4.0, "start": 0.5, "end": 2.2}, [15, 22, 30, 37, 45, 52, 60]),
        ({"num_frames": 3, "end": 0.5}, [0, 7, 14]),
    ],
)
def test_sampling_arguments_pick_the_expected_frames(backend, request_, expected, full_decodes):
    video = load_video(sample_video_path(), backend=backend, **request_)
    assert video.indices.tolist() == expected
    # The decoder returned those very frames (seeking included), pixel for pixel.
    assert _shown_indices(video) == expected
    np.testing.assert_array_equal(video.frames, full_decodes[backend].frames[expected])
    np.testing.assert_allclose(video.timestamps, np.asarray(expected) / VIDEO_FPS, atol=1e-3)
    if "start" in request_:
        assert video.timestamps[0] >= request_["start"] - 1 / VIDEO_FPS
    if "end" in request_:
        assert video.timestamps[-1] < request_["end"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_matroska_without_a_frame_count_is_counted_by_demuxing(mkv_video, backend):
    video = load_video(mkv_video, backend=backend)
    assert video.frames.shape == (40, 48, 64, 3)
    assert video.fps == pytest.approx(20.0)
    brightness = video.frames.reshape(40, -1).mean(axis=1)
    np.testing.assert_allclose(brightness, 5 * np.arange(40), atol=4)  # the ramp, in order
    np.testing.assert_allclose(video.timestamps, np.arange(40) / 20, atol=2e-3)
    sampled = load_video(mkv_video, fps=5.0, backend=backend)
    assert sampled.indices.tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]


@pytest.mark.parametrize("backend", BACKENDS)
def test_faststart_mp4_loads(faststart_video, backend):
    video = load_video(faststart_video, num_frames=5, backend=backend)
    assert _shown_indices(video) == video.indices.tolist() == [0, 22, 44, 67, 89]


def test_auto_falls_back_to_pyav_without_decord(without_modules):
    without_modules("decord")
    video = load_video(sample_video_path(), num_frames=3)
    assert video.backend == "pyav"
    assert _shown_indices(video) == [0, 44, 89]


@needs_decord
def test_auto_falls_back_to_pyav_when_decord_cannot_open_the_file(monkeypatch):
    def refuse(decord, path):
        raise DecordFailed("simulated failure")

    monkeypatch.setattr(video_module, "open_decord", refuse)
    video = load_video(sample_video_path(), num_frames=3)
    assert video.backend == "pyav" and _shown_indices(video) == [0, 44, 89]
    with pytest.raises(ValueError, match="simulated failure"):
        load_video(sample_video_path(), num_frames=3, backend="decord")


@needs_decord
def test_auto_falls_back_to_pyav_when_decord_fails_to_decode(monkeypatch):
    def fail(decord, reader, indices):
        raise DecordFailed("simulated decode failure")

    monkeypatch.setattr(video_module, "decode_decord", fail)
    assert load_video(sample_video_path(), num_frames=2).backend == "pyav"
    with pytest.raises(ValueError, match="simulated decode failure"):
        load_video(sample_video_path(), num_frames=2, backend="decord")


@needs_decord
def test_decord_is_not_trusted_when_its_frame_count_disagrees(monkeypatch):
    real_open = video_module.open_decord

    class OverCounting:
        def __init__(self, reader):
            self.reader = reader

        def __len__(self):
            return len(self.reader) + 40  # as for files whose header over-reports frames

    monkeypatch.setattr(video_module, "open_decord", lambda d, p: OverCounting(real_open(d, p)))
    assert load_video(sample_video_path(), num_frames=2).backend == "pyav"
    with pytest.raises(ValueError, match="decord counts 130 frames but the file holds 90"):
        load_video(sample_video_path(), num_frames=2, backend="decord")


@needs_decord
def test_decord_alone_works_without_pyav(without_modules, full_decodes):
    without_modules("av")
    video = load_video(sample_video_path(), num_frames=6)
    assert video.backend == "decord" and video.num_source_frames == VIDEO_FRAMES
    assert _shown_indices(video) == video.indices.tolist()
    np.testing.assert_allclose(video.timestamps, full_decodes["pyav"].timestamps[video.indices])
    with pytest.raises(MissingDependencyError, match="'av'"):
        load_video(sample_video_path(), backend="pyav")


def test_neither_decoder_installed_raises_missing_dependency(without_modules):
    without_modules("av", "decord")
    with pytest.raises(MissingDependencyError, match=r"leanvision\[video\]"):
        load_video(sample_video_path())


def test_forcing_a_missing_decoder_raises_missing_dependency(without_modules):
    without_modules("decord")
    with pytest.raises(MissingDependencyError, match="'decord'"):
        load_video(sample_video_path(), backend="decord")


def test_frames_are_shared_with_torch_without_a_copy():
    torch = pytest.importorskip("torch")
    video = load_video(sample_video_path(), num_frames=2)
    tensor = torch.from_numpy(video.frames)
    assert tensor.shape == (2, 240, 320, 3) and tensor.dtype == torch.uint8
    assert tensor.data_ptr() == video.frames.ctypes.data

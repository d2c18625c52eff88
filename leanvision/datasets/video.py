"""Load video frames with decord, falling back to PyAV, with frame sampling built in."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from leanvision.core.errors import MissingDependencyError
from leanvision.datasets import sampling
from leanvision.datasets.errors import MediaError, check_readable_file
from leanvision.datasets.images import IMAGE_EXTENSIONS
from leanvision.datasets.video_backends import (
    DecordFailed,
    StreamInfo,
    decode_decord,
    decode_pyav,
    import_optional,
    info_from_decord,
    open_decord,
    probe_pyav,
)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
BACKENDS: tuple[str, ...] = ("auto", "decord", "pyav")


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
    """Decoded frames and where they sit in the source.

    Attributes:
        frames: ``numpy.uint8`` array (T, H, W, 3), RGB, C-contiguous
            (``torch.from_numpy(video.frames)`` shares its memory).
        timestamps: float64 (T,), seconds from the first frame of the source, increasing.
        indices: int64 (T,), the frames' positions in the source (presentation order).
        fps: the source's average frame rate.
        duration: the source's length in seconds, ``num_source_frames / fps``.
        num_source_frames: how many frames the source holds.
        backend: ``"decord"`` or ``"pyav"``, whichever decoded the frames.
        path: the file the frames came from.

    >>> from leanvision.datasets.samples import sample_video_path
    >>> video = load_video(sample_video_path(), fps=1.0)    # one frame per second of 3 s
    >>> len(video), video.frames.shape, video.timestamps.tolist(), video.indices.tolist()
    (3, (3, 240, 320, 3), [0.0, 1.0, 2.0], [0, 30, 60])
    >>> video.fps, video.duration, video.num_source_frames
    (30.0, 3.0, 90)
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    fps: float
    duration: float
    num_source_frames: int
    backend: str
    path: str

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _check_arguments(path: str, num_frames: int | None, fps: float | None, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {list(BACKENDS)}")
    if num_frames is not None and fps is not None:
        raise ValueError(
            f"num_frames={num_frames!r} and fps={fps!r} for {path!r}: give at most one of them"
        )
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int)):
        raise TypeError(f"num_frames must be an int, got {type(num_frames).__name__}")
    if num_frames is not None and num_frames < 1:
        raise MediaError(path, f"num_frames={num_frames!r} is out of range; allowed: >= 1")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)):
            raise TypeError(f"fps must be a number, got {type(fps).__name__}")
        if not math.isfinite(fps) or fps <= 0:
            raise MediaError(path, f"fps={fps!r} is out of range; allowed: finite numbers > 0")


def _select_indices(
    path: str,
    info: StreamInfo,
    num_frames: int | None,
    fps: float | None,
    start: float | None,
    end: float | None,
) -> np.ndarray:
    """Source frame indices for the request; sampler errors are re-raised naming the file."""
    try:
        if fps is not None:
            return sampling.fps_indices(info.num_frames, info.fps, fps, start, end)
        first, stop = sampling.time_range_indices(info.num_frames, info.fps, start, end)
        if num_frames is None:
            return np.arange(first, stop, dtype=np.int64)
        if num_frames > stop - first:
            span = "" if start is None and end is None else f" between start={start} and end={end}"
            raise ValueError(
                f"num_frames={num_frames} is more than the {stop - first} frames the video "
                f"has{span}"
            )
        return first + sampling.uniform_indices(stop - first, num_frames)
    except (TypeError, ValueError) as error:
        raise MediaError(path, str(error)) from error


# Formats with a signature PIL checks; single-frame files of these are images, not videos.
# (MPO, multi-picture JPEG, opens through the JPEG plugin.)
_IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")


def _refuse_image(path: str) -> None:
    """Raise :class:`MediaError` if ``path`` holds a still image (by content or extension)."""
    from PIL import Image, UnidentifiedImageError

    Image.init()  # registers every plugin: ``formats=`` only finds registered ones
    formats = [name for name in _IMAGE_FORMATS if name in Image.OPEN]
    try:
        with Image.open(path, formats=formats) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                return  # an animated GIF/WebP: a video decoder may read it
            kind = f"a {opened.format} image"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        extension = os.path.splitext(path)[1].lower()
        if extension not in IMAGE_EXTENSIONS:
            return
        kind = f"an image file (by its {extension} extension)"
    raise MediaError(
        path, f"this is {kind}, not a video; use leanvision.datasets.load_image to load it"
    )


def _available_backends(backend: str) -> tuple:
    av = import_optional("av")
    decord = import_optional("decord") if backend != "pyav" else None
    if backend == "pyav" and av is None:
        raise MissingDependencyError("av", "video", "load_video(backend='pyav')")
    if backend == "decord" and decord is None:
        raise MissingDependencyError("decord", "video", "load_video(backend='decord')")
    if av is None and decord is None:
        raise MissingDependencyError("av", "video", "load_video")
    return av, decord


def load_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    backend: str = "auto",
) -> Video:
    """Decode frames of the video at ``path`` as ``uint8`` RGB (T, H, W, 3) with timestamps.

    Which frames: all of them (default); ``num_frames`` spread uniformly, first and last
    included; or one every ``1 / fps`` seconds (an ``fps`` at or above the source rate gives
    every frame). ``start``/``end`` (seconds) restrict any of these to ``[start, end)``.

    ``backend="auto"`` decodes with decord and falls back to PyAV when decord is missing or
    fails on the file; ``"decord"`` or ``"pyav"`` forces one. When PyAV is installed it first
    probes the file (demuxing, no decoding), so a truncated or corrupt file raises a clear
    error instead of hanging decord.

    Raises ``ValueError`` (:class:`~leanvision.datasets.MediaError`) naming the file and the
    problem for a missing, empty, truncated, corrupt or frameless file, a still image (use
    :func:`load_image`), ``fps <= 0``, or more frames than the video (or the
    ``[start, end)`` range) holds;
    :class:`leanvision.MissingDependencyError` when neither decord nor PyAV is installed.

    >>> from leanvision.datasets.samples import sample_video_path
    >>> video = load_video(sample_video_path(), num_frames=8)
    >>> video.frames.shape, video.frames.dtype.name
    ((8, 240, 320, 3), 'uint8')
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    _check_arguments(path, num_frames, fps, backend)
    path = check_readable_file(path)
    _refuse_image(path)
    av, decord = _available_backends(backend)
    info = probe_pyav(av, path) if av is not None else None

    reader = None
    decord_error: DecordFailed | None = None
    if decord is not None and backend in ("auto", "decord"):
        try:
            reader = open_decord(decord, path)
            if info is None:
                info = info_from_decord(decord, reader)
            elif len(reader) != info.num_frames:
                # decord trusts the container's frame count; past real EOF it can hang.
                raise DecordFailed(
                    f"decord counts {len(reader)} frames but the file holds {info.num_frames}"
                )
        except DecordFailed as error:
            reader, decord_error = None, error
        if reader is None and (backend == "decord" or av is None):
            raise MediaError(path, f"not a readable video file (decord: {decord_error})")

    indices = _select_indices(path, info, num_frames, fps, start, end)
    unique, inverse = np.unique(indices, return_inverse=True)
    frames = None
    if reader is not None:
        try:
            frames, used = decode_decord(decord, reader, unique), "decord"
        except DecordFailed as error:
            if backend == "decord" or av is None:
                raise MediaError(
                    path, f"video data is truncated or corrupt (decord: {error})"
                ) from error
        finally:
            del reader  # free decord's native decoder now, not at some later collection
    if frames is None:
        frames, used = decode_pyav(av, path, info, unique), "pyav"
    if len(unique) != len(indices):
        frames = frames[inverse]
    return Video(
        frames=frames,
        timestamps=info.timestamps[indices],
        indices=indices,
        fps=info.fps,
        duration=info.num_frames / info.fps,
        num_source_frames=info.num_frames,
        backend=used,
        path=path,
    )

"""The two video decoders behind ``load_video``: PyAV (also the prober) and decord.

PyAV first *probes* a file: it demuxes the packets of the video stream without decoding
them, which is cheap (decord reads the same packets to build its index) and gives the true
frame count, every frame's timestamp and the keyframes. Files whose container promises more
frames than its data holds (truncated downloads) are rejected here, because decord can spin
forever in native code when asked for a frame that does not exist (dmlc/decord#373).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from types import ModuleType

import numpy as np

from leanvision.datasets.errors import MediaError


def import_optional(name: str) -> ModuleType | None:
    """The module ``name``, or ``None`` when it is not installed or fails to load."""
    try:
        return importlib.import_module(name)
    except (ImportError, OSError):  # OSError: a shared library the wheel needs is missing
        return None


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    """What a probe learns about the first video stream of a file.

    ``timestamps`` are seconds from the first frame, one per frame in presentation order.
    ``pts``/``keyframe_pts`` are in the stream's time base (``None`` when the stream has
    frames without timestamps, which PyAV then decodes sequentially).
    """

    num_frames: int
    fps: float
    timestamps: np.ndarray
    pts: np.ndarray | None = None
    keyframe_pts: np.ndarray | None = None


def _declared_rate(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


def _frame_rate(declared: float, pts: np.ndarray | None, time_base: float) -> float:
    if declared > 0:
        return declared
    if pts is not None and len(pts) > 1 and pts[-1] > pts[0]:
        return (len(pts) - 1) / (float(pts[-1] - pts[0]) * time_base)
    return 0.0


def probe_pyav(av: ModuleType, path: str) -> StreamInfo:
    """Demux (not decode) the first video stream of ``path`` and check it is complete."""
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, EOFError) as error:
        raise MediaError(path, f"not a readable video file ({error})") from error
    with container:
        if not container.streams.video:
            raise MediaError(path, "contains no video stream (0 video frames)")
        stream = container.streams.video[0]
        packet_pts: list[int | None] = []
        keyframes: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the empty packet that signals end of stream
                    continue
                packet_pts.append(packet.pts)
                if packet.is_keyframe and packet.pts is not None:
                    keyframes.append(packet.pts)
        except (av.error.FFmpegError, OSError, EOFError) as error:
            raise MediaError(path, f"video data is truncated or corrupt ({error})") from error
        declared = int(stream.frames or 0)
        time_base = float(stream.time_base) if stream.time_base else 0.0
        # Read every stream attribute inside the `with`: touching a stream of a closed
        # container crashes PyAV (segfault), it does not raise.
        declared_rate = _declared_rate(stream)
    count = len(packet_pts)
    if count == 0:
        raise MediaError(path, "contains no video frames")
    if declared > count:
        raise MediaError(
            path,
            f"video is truncated: the container lists {declared} frames but only {count} "
            f"are present",
        )
    pts = None
    if time_base > 0 and all(p is not None for p in packet_pts):
        ordered = np.sort(np.asarray(packet_pts, dtype=np.int64))
        if len(np.unique(ordered)) == count:
            pts = ordered
    fps = _frame_rate(declared_rate, pts, time_base)
    if fps <= 0:
        raise MediaError(path, "has no usable frame rate")
    if pts is not None:
        timestamps = (pts - pts[0]).astype(np.float64) * time_base
        keyframe_pts = np.unique(np.asarray(keyframes, dtype=np.int64)) if keyframes else None
    else:
        timestamps = np.arange(count, dtype=np.float64) / fps
        keyframe_pts = None
    return StreamInfo(count, fps, timestamps, pts, keyframe_pts)


def _decode_sequential(av: ModuleType, container, stream, indices: np.ndarray) -> list:
    wanted = set(indices.tolist())
    last = int(indices[-1])
    frames = []
    for position, frame in enumerate(container.decode(stream)):
        if position in wanted:
            frames.append(frame.to_ndarray(format="rgb24"))
        if position >= last:
            break
    return frames


def _decode_by_pts(av: ModuleType, container, stream, info: StreamInfo, indices: np.ndarray):
    """Decode the frames at ``indices`` (sorted, unique), seeking to a keyframe whenever the
    next wanted frame lies in a later GOP than the decoder's position."""
    targets = info.pts[indices]
    keys = info.keyframe_pts
    frames = []
    decoded = None  # iterator over decoded frames from the last (re)positioning
    last_pts = None  # pts of the most recent decoded frame
    for target in targets.tolist():
        position = np.searchsorted(keys, target, side="right") - 1 if keys is not None else -1
        key = int(keys[position]) if position >= 0 else None
        must_seek = decoded is None or last_pts is None or (key is not None and key > last_pts)
        if must_seek:
            # Opening the file already sits at the first keyframe: no seek needed there.
            if decoded is not None or (key is not None and key != int(keys[0])):
                container.seek(key if key is not None else int(info.pts[0]), stream=stream)
            decoded = container.decode(stream)
            last_pts = None
        for frame in decoded:
            if frame.pts is None:
                raise ValueError("decoded a frame without a timestamp")
            last_pts = frame.pts
            if frame.pts < target:
                continue
            if frame.pts > target:
                raise ValueError(f"the frame at pts {target} could not be decoded")
            frames.append(frame.to_ndarray(format="rgb24"))
            break
        else:
            raise ValueError(f"the stream ended before the frame at pts {target}")
    return frames


def decode_pyav(av: ModuleType, path: str, info: StreamInfo, indices: np.ndarray) -> np.ndarray:
    """uint8 frames (len(indices), H, W, 3) at sorted, unique ``indices``, decoded with PyAV."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_type = "AUTO"  # frame threads: several frames at once
            if info.pts is None or info.keyframe_pts is None:
                frames = _decode_sequential(av, container, stream, indices)
            else:
                frames = _decode_by_pts(av, container, stream, info, indices)
    except (av.error.FFmpegError, OSError, EOFError, ValueError) as error:
        if isinstance(error, MediaError):
            raise
        raise MediaError(path, f"video data is truncated or corrupt ({error})") from error
    if len(frames) != len(indices):
        raise MediaError(
            path,
            f"video data is truncated or corrupt: decoded {len(frames)} of "
            f"{len(indices)} requested frames",
        )
    return np.stack(frames)


class DecordFailed(Exception):
    """decord could not open or decode a file (PyAV may still manage)."""

    @classmethod
    def wrap(cls, error: BaseException) -> DecordFailed:
        # decord's messages repeat "[10:19:09] /github/workspace/src/...cc:292: " prefixes.
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        text = re.sub(r"\[[\d:]+\] \S+:\d+: ", "", lines[-1] if lines else type(error).__name__)
        return cls(text.strip())


def open_decord(decord: ModuleType, path: str):
    """A ``decord.VideoReader`` for ``path``, or :class:`DecordFailed`."""
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
    except (decord.DECORDError, RuntimeError, AssertionError) as error:
        # AssertionError: decord asserts a positive frame count in VideoReader.__init__.
        raise DecordFailed.wrap(error) from error


def info_from_decord(decord: ModuleType, reader) -> StreamInfo:
    """Stream facts from decord alone (used when PyAV is not installed), or
    :class:`DecordFailed`. Decodes nothing."""
    try:
        count = len(reader)
        starts = np.asarray(reader.get_frame_timestamp(np.arange(count)), dtype=np.float64)
        fps = float(reader.get_avg_fps())
    except (decord.DECORDError, RuntimeError, IndexError) as error:
        raise DecordFailed.wrap(error) from error
    if not fps > 0:
        raise DecordFailed(f"decord reports a frame rate of {fps}")
    return StreamInfo(count, fps, starts[:, 0] - starts[0, 0])


def decode_decord(decord: ModuleType, reader, indices: np.ndarray) -> np.ndarray:
    """uint8 frames (len(indices), H, W, 3) at ``indices``, or :class:`DecordFailed`."""
    try:
        return np.ascontiguousarray(reader.get_batch(indices.tolist()).asnumpy())
    except (decord.DECORDError, RuntimeError, IndexError) as error:
        raise DecordFailed.wrap(error) from error

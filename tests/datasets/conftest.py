"""Broken and unusual media files, made once per session from the sample video."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from leanvision.datasets.samples import sample_video_path
from leanvision.datasets.samples.generate import write_video


def _av():
    # Per fixture, not per module: the image tests in this folder must run without PyAV.
    return pytest.importorskip("av")


def _remux_faststart(source: str, target: str) -> None:
    """Copy the packets of ``source`` into an mp4 whose index (moov) comes first, as
    streaming files do: cutting such a file leaves a readable index that promises frames
    whose data is gone."""
    av = _av()
    with av.open(source) as reader, av.open(target, "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(reader.streams.video[0])
        for packet in reader.demux(reader.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)


def _zero_frame_mkv(path: str) -> None:
    """A Matroska file with a video stream that holds no packets (and one second of audio,
    which mp4 needs to keep the file non-empty; Matroska keeps the empty video track)."""
    av = _av()
    with av.open(path, "w") as out:
        video = out.add_stream("mpeg4", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in [*audio.encode(frame), *audio.encode()]:
            out.mux(packet)


def _audio_only_mp4(path: str) -> None:
    av = _av()
    with av.open(path, "w") as out:
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in [*audio.encode(frame), *audio.encode()]:
            out.mux(packet)


@pytest.fixture(scope="session")
def broken_videos(tmp_path_factory) -> dict[str, str]:
    """name -> path of a video file that ``load_video`` must reject with a ValueError."""
    root = tmp_path_factory.mktemp("broken_videos")
    data = Path(sample_video_path()).read_bytes()
    files: dict[str, str] = {}

    def put(name: str, payload: bytes) -> None:
        files[name] = str(root / name)
        with open(files[name], "wb") as handle:
            handle.write(payload)

    # The sample keeps its index at the end: cutting it loses the index entirely.
    put("truncated_no_index.mp4", data[: len(data) // 2])
    faststart = str(root / "faststart.mp4")
    _remux_faststart(sample_video_path(), faststart)
    whole = Path(faststart).read_bytes()
    put("truncated.mp4", whole[: len(whole) // 2])
    damaged = bytearray(whole)
    rng = random.Random(0)
    for position in range(len(damaged) // 4, len(damaged), 97):
        damaged[position] = rng.randrange(256)
    put("corrupt.mp4", bytes(damaged))
    put("text.mp4", b"this is not a video\n" * 10)
    put("empty.mp4", b"")
    files["zero_frames.mkv"] = str(root / "zero_frames.mkv")
    _zero_frame_mkv(files["zero_frames.mkv"])
    files["audio_only.mp4"] = str(root / "audio_only.mp4")
    _audio_only_mp4(files["audio_only.mp4"])
    files["missing.mp4"] = str(root / "missing.mp4")
    files["directory.mp4"] = str(root / "directory.mp4")
    os.mkdir(files["directory.mp4"])
    return files


@pytest.fixture(scope="session")
def faststart_video(broken_videos) -> str:
    """The intact sample, remuxed with its index first (a valid file)."""
    return os.path.join(os.path.dirname(broken_videos["corrupt.mp4"]), "faststart.mp4")


@pytest.fixture(scope="session")
def mkv_video(tmp_path_factory) -> str:
    """A 40-frame 64x48 Matroska clip at 20 fps: its container does not list a frame count."""
    _av()
    path = str(tmp_path_factory.mktemp("mkv") / "clip.mkv")
    ramp = [np.full((48, 64, 3), 5 * i, dtype=np.uint8) for i in range(40)]
    write_video(path, ramp, 20, 64, 48)
    return path


@pytest.fixture
def without_modules(monkeypatch):
    """``without_modules("av", ...)``: make ``import name`` fail, as when not installed."""

    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)

    return hide

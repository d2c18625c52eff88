import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leanvision.datasets import sample_image_paths, sample_video_path
from leanvision.datasets.samples import SAMPLE_DIR, SAMPLE_IMAGES, SAMPLE_VIDEO
from leanvision.datasets.samples.generate import draw_frame, draw_scene, frame_index_from_bar


def test_sample_files_exist_and_stay_small():
    paths = [*sample_image_paths(), sample_video_path()]
    assert [os.path.basename(path) for path in paths] == [*SAMPLE_IMAGES, SAMPLE_VIDEO]
    assert all(os.path.dirname(path) == SAMPLE_DIR for path in paths)
    assert sum(os.path.getsize(path) for path in paths) < 500_000


def test_frame_counter_bar_reads_back_every_index_before_compression():
    scene = draw_scene()
    for index in (0, 1, 44, 88, 89):
        assert frame_index_from_bar(draw_frame(index, scene)) == index


def test_ball_moves_between_frames():
    scene = draw_scene()
    a, b = draw_frame(10, scene), draw_frame(20, scene)
    changed = np.abs(a.astype(int) - b.astype(int)).sum(axis=2)[:-10] > 0  # above the bar
    assert 100 < changed.sum() < 0.1 * changed.size


def test_regenerate_writes_the_same_files(tmp_path):
    pytest.importorskip("av")
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "leanvision.datasets.samples",
            "--regenerate",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    for name in (*SAMPLE_IMAGES, SAMPLE_VIDEO):
        fresh = (tmp_path / name).read_bytes()
        shipped = Path(SAMPLE_DIR, name).read_bytes()
        if name.endswith(".mp4"):
            # x264 builds may differ by a few bytes; the decoded pixels may not differ much.
            from leanvision.datasets import load_video

            a = load_video(str(tmp_path / name), backend="pyav").frames.astype(int)
            b = load_video(os.path.join(SAMPLE_DIR, name), backend="pyav").frames.astype(int)
            assert a.shape == b.shape and np.abs(a - b).mean() < 2.0
        else:
            assert fresh == shipped, name

"""Frame samplers: pure functions from (number of source frames, source fps) to frame indices.

They know nothing about files, so they are cheap to test and reuse (a dataset can sample
indices in ``__getitem__`` and decode only those). Every sampler returns a sorted ``int64``
array of indices in ``[0, n_total)`` and raises ``ValueError`` naming the bad argument.

Frame ``i`` of a constant-rate video covers the time ``[i / fps, (i + 1) / fps)``.
"""

from __future__ import annotations

import math

import numpy as np

# Tolerance for float times that land exactly on a frame boundary (1.0 s * 30 fps = 29.999...).
_EPS = 1e-6


def _check_count(name: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name}={value!r} is out of range; allowed: integers >= {low}")


def _check_rate(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is out of range; allowed: finite numbers > 0")


def time_range_indices(
    n_total: int, source_fps: float, start: float | None = None, end: float | None = None
) -> tuple[int, int]:
    """The frames shown during ``[start, end)`` seconds, as a half-open range ``(first, stop)``.

    ``first`` is the frame on screen at ``start``; ``stop`` excludes frames that begin at or
    after ``end``. ``end`` past the end of the video is clipped to it.

    >>> time_range_indices(90, 30.0, start=1.0, end=2.0)
    (30, 60)
    """
    _check_count("n_total", n_total)
    _check_rate("source_fps", source_fps)
    duration = n_total / source_fps
    start = 0.0 if start is None else float(start)
    end = duration if end is None else float(end)
    if not math.isfinite(start) or start < 0:
        raise ValueError(f"start={start!r} is out of range; allowed: seconds >= 0")
    if start >= duration:
        raise ValueError(
            f"start={start!r} is out of range; allowed: seconds < the duration {duration:.3f}"
        )
    if math.isnan(end) or end <= start:
        raise ValueError(f"end={end!r} is out of range; allowed: seconds > start={start!r}")
    first = int(math.floor(start * source_fps + _EPS))
    stop = min(n_total, int(math.ceil(min(end, duration) * source_fps - _EPS)))
    return first, max(stop, first + 1)


def uniform_indices(n_total: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices spread evenly over ``n_total`` frames, first and last included.

    ``num_frames == n_total`` returns every frame; ``num_frames == 1`` returns frame 0.

    >>> uniform_indices(90, 4).tolist()
    [0, 30, 59, 89]
    """
    _check_count("n_total", n_total)
    _check_count("num_frames", num_frames)
    if num_frames > n_total:
        raise ValueError(
            f"num_frames={num_frames} is out of range; allowed: 1..{n_total} "
            f"(the number of frames available)"
        )
    # Round to nearest: floor would bias every index towards the start of the video.
    return np.round(np.linspace(0, n_total - 1, num_frames)).astype(np.int64)


def fps_indices(
    n_total: int,
    source_fps: float,
    target_fps: float,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """Frames at a fixed rate: the frame on screen at ``start, start + 1/target_fps, ...``.

    Times run over ``[start, end)`` seconds (default: the whole video). A ``target_fps`` at or
    above ``source_fps`` returns every frame in the range once; frames are never duplicated.

    >>> fps_indices(90, 30.0, 2.0).tolist()
    [0, 15, 30, 45, 60, 75]
    >>> fps_indices(90, 30.0, 1.0, start=0.5, end=2.0).tolist()
    [15, 45]
    """
    _check_rate("target_fps", target_fps)
    first, stop = time_range_indices(n_total, source_fps, start, end)
    if target_fps >= source_fps:
        return np.arange(first, stop, dtype=np.int64)
    begin = first / source_fps if start is None else float(start)
    finish = stop / source_fps if end is None else min(float(end), n_total / source_fps)
    count = max(1, int(math.ceil((finish - begin) * target_fps - _EPS)))
    times = begin + np.arange(count) / target_fps
    indices = np.floor(times * source_fps + _EPS).astype(np.int64)
    return np.unique(np.clip(indices, first, stop - 1))


def segment_indices(
    n_total: int,
    num_segments: int,
    frames_per_segment: int = 1,
    jitter: bool = False,
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """TSN-style sampling: split the video into ``num_segments`` equal segments and take
    ``frames_per_segment`` consecutive frames from each.

    Without ``jitter`` the run sits in the middle of its segment (deterministic, for
    evaluation); with ``jitter`` its start is drawn uniformly inside the segment (training),
    from ``rng``: an int seed, a ``numpy.random.Generator``, or ``None`` for a fresh unseeded
    one. Runs longer than a segment overlap the next one; indices never pass the last frame.
    Returns ``num_segments * frames_per_segment`` indices, segment by segment.

    >>> segment_indices(90, 3).tolist()
    [15, 45, 75]
    >>> segment_indices(90, 2, frames_per_segment=2).tolist()
    [22, 23, 67, 68]
    """
    _check_count("n_total", n_total)
    _check_count("num_segments", num_segments)
    _check_count("frames_per_segment", frames_per_segment)
    if num_segments > n_total:
        raise ValueError(
            f"num_segments={num_segments} is out of range; allowed: 1..{n_total} "
            f"(the number of frames available)"
        )
    segment_length = n_total / num_segments
    # Room left in a segment after the run; a run starting anywhere in [0, slack + 1) stays
    # inside its segment (as in TSN: randint(segment_length - frames_per_segment + 1)).
    slack = max(segment_length - frames_per_segment, 0.0)
    if jitter:
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        offsets = generator.uniform(0.0, slack + 1.0, size=num_segments)
    else:
        offsets = np.full(num_segments, (slack + 1.0) / 2)
    starts = np.floor(np.arange(num_segments) * segment_length + offsets + _EPS).astype(np.int64)
    indices = starts[:, None] + np.arange(frames_per_segment, dtype=np.int64)[None, :]
    return np.clip(indices, 0, n_total - 1).reshape(-1)

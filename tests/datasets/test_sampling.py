import numpy as np
import pytest

from leanvision.datasets import fps_indices, segment_indices, time_range_indices, uniform_indices


@pytest.mark.parametrize(
    "n_total,num_frames", [(90, 8), (90, 90), (90, 1), (7, 3), (1, 1), (1000, 17)]
)
def test_uniform_indices_are_sorted_unique_in_range_and_cover_both_ends(n_total, num_frames):
    indices = uniform_indices(n_total, num_frames)
    assert indices.dtype == np.int64
    assert len(indices) == num_frames
    assert len(np.unique(indices)) == num_frames
    assert np.all(np.diff(indices) > 0)
    assert indices[0] == 0
    if num_frames > 1:
        assert indices[-1] == n_total - 1
        gaps = np.diff(indices)
        assert gaps.max() - gaps.min() <= 1  # evenly spread


def test_uniform_indices_with_every_frame_is_arange():
    np.testing.assert_array_equal(uniform_indices(33, 33), np.arange(33))


@pytest.mark.parametrize("n_total,num_frames", [(10, 11), (10, 0), (0, 1), (5, -2)])
def test_uniform_indices_rejects_impossible_counts(n_total, num_frames):
    with pytest.raises(ValueError, match="out of range"):
        uniform_indices(n_total, num_frames)


def test_uniform_indices_rejects_non_integers():
    with pytest.raises(TypeError, match="num_frames"):
        uniform_indices(10, 2.5)


def test_fps_indices_pick_the_frame_on_screen_at_each_tick():
    indices = fps_indices(90, 30.0, 2.0)
    np.testing.assert_array_equal(indices, np.arange(0, 90, 15))
    # 25 fps source at 3 fps: ticks at k/3 s fall in frame floor(k * 25 / 3).
    np.testing.assert_array_equal(
        fps_indices(100, 25.0, 3.0), np.floor(np.arange(12) * 25 / 3).astype(int)
    )


def test_fps_indices_at_or_above_the_source_rate_return_every_frame_once():
    np.testing.assert_array_equal(fps_indices(90, 30.0, 30.0), np.arange(90))
    np.testing.assert_array_equal(fps_indices(90, 30.0, 240.0), np.arange(90))
    np.testing.assert_array_equal(
        fps_indices(90, 30.0, 100.0, start=1.0, end=1.5), np.arange(30, 45)
    )


def test_fps_indices_respect_start_and_end():
    indices = fps_indices(90, 30.0, 4.0, start=0.5, end=2.2)
    times = indices / 30.0
    assert times[0] == pytest.approx(0.5)
    assert np.all(times < 2.2) and np.all(times >= 0.5)
    np.testing.assert_allclose(np.diff(times), 0.25, atol=1 / 30)


def test_fps_indices_end_past_the_video_is_clipped():
    np.testing.assert_array_equal(fps_indices(90, 30.0, 1.0, end=100.0), [0, 30, 60])


@pytest.mark.parametrize("target_fps", [0, -1.0, float("nan"), float("inf")])
def test_fps_indices_reject_non_positive_or_non_finite_rates(target_fps):
    with pytest.raises(ValueError, match="target_fps"):
        fps_indices(90, 30.0, target_fps)


@pytest.mark.parametrize(
    "start,end,match",
    [
        (-0.1, None, "start"),
        (3.0, None, "start"),
        (5.0, 6.0, "start"),
        (1.0, 1.0, "end"),
        (2.0, 1.0, "end"),
    ],
)
def test_time_range_rejects_empty_or_negative_ranges(start, end, match):
    with pytest.raises(ValueError, match=match):
        time_range_indices(90, 30.0, start, end)


def test_time_range_is_half_open_on_frame_boundaries():
    assert time_range_indices(90, 30.0, 1.0, 2.0) == (30, 60)
    assert time_range_indices(90, 30.0, 1.01, 2.01) == (30, 61)
    assert time_range_indices(90, 30.0) == (0, 90)
    # A range inside one frame still holds that frame.
    assert time_range_indices(90, 30.0, 1.001, 1.002) == (30, 31)


def test_segment_indices_take_the_middle_of_each_segment():
    np.testing.assert_array_equal(segment_indices(90, 3), [15, 45, 75])
    indices = segment_indices(100, 4, frames_per_segment=3)
    assert indices.shape == (12,)
    runs = indices.reshape(4, 3)
    np.testing.assert_array_equal(np.diff(runs, axis=1), 1)  # consecutive frames
    for segment, run in enumerate(runs):
        assert segment * 25 <= run[0] and run[-1] < (segment + 1) * 25


def test_segment_indices_with_one_segment_per_frame_is_arange():
    np.testing.assert_array_equal(segment_indices(12, 12), np.arange(12))


def test_segment_indices_jitter_stays_in_its_segment_and_is_seeded():
    first = segment_indices(90, 6, frames_per_segment=2, jitter=True, rng=7)
    again = segment_indices(90, 6, frames_per_segment=2, jitter=True, rng=7)
    np.testing.assert_array_equal(first, again)
    draws = {
        tuple(segment_indices(90, 6, frames_per_segment=2, jitter=True, rng=seed))
        for seed in range(20)
    }
    assert len(draws) > 1  # jitter moves the runs
    for draw in draws:
        runs = np.asarray(draw).reshape(6, 2)
        for segment, run in enumerate(runs):
            assert segment * 15 <= run[0] and run[1] < (segment + 1) * 15


def test_segment_indices_accept_a_generator():
    generator = np.random.default_rng(0)
    a = segment_indices(90, 3, jitter=True, rng=generator)
    b = segment_indices(90, 3, jitter=True, rng=generator)
    assert a.shape == b.shape == (3,)
    assert np.all((a >= 0) & (a < 90))


def test_segment_runs_longer_than_segments_never_pass_the_last_frame():
    indices = segment_indices(10, 5, frames_per_segment=4)
    assert indices.max() <= 9 and indices.min() >= 0


def test_segment_indices_reject_more_segments_than_frames():
    with pytest.raises(ValueError, match="num_segments"):
        segment_indices(5, 6)

from __future__ import annotations

import numpy as np
import pytest

from harness.data.sampling import clip_span, sample_segment_indices, spread_window_starts
from harness.errors import DataError


def test_clip_span_uses_the_video_fps() -> None:
    assert clip_span(25.0, 2.0) == 50
    assert clip_span(12.0, 2.0) == 24
    assert clip_span(30.0, 0.01) == 1
    with pytest.raises(DataError, match="must be > 0, but got fps=0"):
        clip_span(0.0, 2.0)


def test_eval_is_centred_and_deterministic() -> None:
    # 100 frames, span 40: window [30, 70), segments of 5, centres at 2.5 -> frame offsets 2, 7, ...
    indices = sample_segment_indices(100, 8, 40, None)
    assert indices.tolist() == [32, 37, 42, 47, 52, 57, 62, 67]
    assert np.array_equal(indices, sample_segment_indices(100, 8, 40, None))


def test_train_offsets_are_random_and_in_their_segments() -> None:
    rng = np.random.default_rng(0)
    draws = np.stack([sample_segment_indices(100, 8, 40, rng) for _ in range(500)])  # (500, 8)
    assert draws.min() >= 0 and draws.max() <= 99
    assert (np.diff(draws, axis=1) >= 0).all()  # segments are in time order
    assert (draws.max(axis=1) - draws.min(axis=1) < 40).all()  # one window of 40 frames
    assert len({tuple(d) for d in draws}) > 450  # random, not a few fixed clips
    assert draws[:, 0].min() <= 2 and draws[:, -1].max() >= 97  # windows reach both ends
    window = sample_segment_indices(100, 8, 40, np.random.default_rng(1), start=10)
    assert ((window - 10) // 5 == np.arange(8)).all()  # one frame in each 5-frame segment


def test_short_videos_repeat_frames_and_stay_in_range() -> None:
    assert sample_segment_indices(4, 8, 24, None).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    rng = np.random.default_rng(0)
    for n_frames in (1, 3, 7):
        for _ in range(50):
            indices = sample_segment_indices(n_frames, 8, 24, rng)
            assert len(indices) == 8 and indices.min() >= 0 and indices.max() < n_frames


def test_spread_windows_cover_the_video_evenly() -> None:
    assert spread_window_starts(100, 40, 1).tolist() == [30]
    assert spread_window_starts(100, 40, 3).tolist() == [0, 30, 60]
    assert spread_window_starts(10, 40, 3).tolist() == [0, 0, 0]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(DataError, match="must be >= 1, but got n_frames=0"):
        sample_segment_indices(0, 8, 24, None)

"""Which frames make a clip: TSN-style segment sampling inside a window of the video."""

from __future__ import annotations

import numpy as np

from harness.errors import DataError

__all__ = ["clip_span", "sample_segment_indices", "spread_window_starts"]


def clip_span(fps: float, clip_seconds: float) -> int:
    """Frames a clip of `clip_seconds` covers at the video's own frame rate (at least 1)."""
    if fps <= 0 or clip_seconds <= 0:
        raise DataError(f"fps and clip_seconds must be > 0, but got fps={fps}, clip_seconds={clip_seconds}")
    return max(1, round(fps * clip_seconds))


def spread_window_starts(n_frames: int, span: int, n_clips: int) -> np.ndarray:
    """Start frames of `n_clips` windows spread evenly over the video; one clip sits in the centre."""
    room = max(0, n_frames - span)
    if n_clips == 1:
        return np.array([room // 2])
    return np.round(np.linspace(0, room, n_clips)).astype(int)


def sample_segment_indices(
    n_frames: int,
    n_segment: int,
    span: int,
    rng: np.random.Generator | None,
    start: int | None = None,
) -> np.ndarray:
    """Frame indices (n_segment,) of one clip: a window of `span` frames cut into equal segments.

    With `rng` (training) the window starts anywhere and each segment gives a random frame; without
    it (evaluation) the window is centred (or starts at `start`) and each segment gives its centre.
    A video shorter than `span` is one whole window, so indices repeat rather than run out of range.
    """
    if n_frames < 1 or n_segment < 1 or span < 1:
        raise DataError(
            f"n_frames, n_segment and span must be >= 1, but got n_frames={n_frames}, n_segment={n_segment}, span={span}"
        )
    span = min(span, n_frames)
    if start is None:
        start = int(rng.integers(0, n_frames - span + 1)) if rng is not None else (n_frames - span) // 2
    start = min(max(0, start), n_frames - span)
    segment = span / n_segment  # may be < 1 for short windows: then neighbouring segments share frames
    offsets = rng.random(n_segment) if rng is not None else np.full(n_segment, 0.5)
    within = np.floor((np.arange(n_segment) + offsets) * segment).astype(int)
    return start + np.clip(within, 0, span - 1)

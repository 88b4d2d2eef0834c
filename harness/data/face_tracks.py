"""From per-frame detections to one smooth face box per frame: link, pick one identity, fill, smooth.

Detections come from every k-th frame ("samples"). Boxes of consecutive samples that overlap are
linked into tracks; the track with the largest total face area (large and present the longest) is
the video's subject, as FF++ videos show one main face. Samples where that face was missed are
filled by interpolation, the track is smoothed with a centred moving average (detector boxes jitter
by several pixels from frame to frame, which a crop would turn into camera shake), and the boxes of
the frames between samples are interpolated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FaceTrack", "box_iou", "link_tracks", "pick_track", "smooth_track", "square_crop_boxes"]

_LINK_IOU = 0.3  # consecutive samples of one face overlap well above this at any sensible detect_every


@dataclass
class FaceTrack:
    """Boxes of one face, by sample number: {sample: (x0, y0, x1, y1, score)}."""

    boxes: dict[int, np.ndarray]

    @property
    def last(self) -> int:
        return max(self.boxes)

    def area(self) -> float:
        return float(sum((b[2] - b[0]) * (b[3] - b[1]) for b in self.boxes.values()))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, >=4) with every box in b (m, >=4) -> (n, m)."""
    a, b = np.asarray(a, dtype=np.float64)[:, None, :4], np.asarray(b, dtype=np.float64)[None, :, :4]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def link_tracks(detections: list[np.ndarray], max_gap: int = 3) -> list[FaceTrack]:
    """Link each sample's boxes (k, 5) to the track whose last box overlaps most, greedily by IoU.

    A track missing for more than `max_gap` samples is closed, so a face that leaves and a different
    one that later appears in the same place do not merge.
    """
    tracks: list[FaceTrack] = []
    for sample, boxes in enumerate(detections):
        open_tracks = [t for t in tracks if sample - t.last <= max_gap]
        taken: set[int] = set()
        if open_tracks and len(boxes):
            iou = box_iou(np.stack([t.boxes[t.last] for t in open_tracks]), boxes)  # (tracks, boxes)
            for flat in np.argsort(-iou, axis=None):
                t, b = divmod(int(flat), iou.shape[1])
                if iou[t, b] < _LINK_IOU:
                    break
                if b in taken or open_tracks[t].last == sample:
                    continue
                open_tracks[t].boxes[sample] = boxes[b]
                taken.add(b)
        tracks += [FaceTrack({sample: boxes[b]}) for b in range(len(boxes)) if b not in taken]
    return tracks


def pick_track(tracks: list[FaceTrack]) -> FaceTrack | None:
    """The subject: the track with the largest summed box area (big faces seen longest); None if no track."""
    return max(tracks, key=FaceTrack.area, default=None)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along axis 0.

    Near the ends the window shrinks symmetrically (to 1 at the first and last sample): a one-sided
    window would pull the boxes of a moving face towards the inside of the video.
    """
    if window <= 1 or len(values) < 2:
        return values
    idx = np.arange(len(values))
    half = np.minimum(window // 2, np.minimum(idx, len(values) - 1 - idx))
    cumsum = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    lo, hi = idx - half, idx + half + 1
    return (cumsum[hi] - cumsum[lo]) / (hi - lo)[:, None]


def smooth_track(track: FaceTrack, sample_frames: np.ndarray, n_frames: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n_frames, 4) float32, scores (n_frames,) float32) for every frame of the video.

    Smoothing works on centre and size, not corners, so a box that grows does not drift. A frame's
    score is that of the detection at its nearest sample, NaN where that sample missed the face
    (the box there is filled from the track).
    """
    found = np.array(sorted(track.boxes))
    boxes = np.stack([track.boxes[s] for s in found]).astype(np.float64)  # (n_found, 5)
    geometry = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                         boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)  # (n_found, 4): cx, cy, w, h
    samples = np.arange(len(sample_frames))
    # Fill the samples that missed the face, then smooth over samples, then spread to every frame.
    filled = np.stack([np.interp(samples, found, geometry[:, j]) for j in range(4)], axis=1)
    smooth = _moving_average(filled, window)
    frames = np.arange(n_frames)
    cx, cy, w, h = (np.interp(frames, sample_frames, smooth[:, j]) for j in range(4))
    out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    score_at_sample = np.full(len(sample_frames), np.nan)
    score_at_sample[found] = boxes[:, 4]
    nearest = np.clip(np.rint(np.interp(frames, sample_frames, samples)).astype(int), 0, len(samples) - 1)
    return out, score_at_sample[nearest].astype(np.float32)


def square_crop_boxes(boxes: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """Integer squares (n, 4) of side margin x the box's longer side, centred on it and kept inside the frame.

    A square that would leave the frame is shifted back in (not shrunk, so the face keeps its scale);
    only a square larger than the frame's shorter side is shrunk to it.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * margin
    side = np.clip(np.rint(side), 2, min(width, height)).astype(np.int64)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x0 = np.clip(np.rint(cx - side / 2).astype(np.int64), 0, width - side)
    y0 = np.clip(np.rint(cy - side / 2).astype(np.int64), 0, height - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)

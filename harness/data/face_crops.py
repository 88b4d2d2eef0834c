"""Face crops: each video's face found once, tracked and smoothed, and every frame cropped square around it.

`FaceCropReader` is a `FrameReader`: it decodes frames at native size through the configured decoder
and returns the crops at the asked size, so clip sampling, augmentation and the frame cache work on
top of it unchanged. The boxes of a video are found on first use and kept in a `FaceBoxStore` under
the cache folder (`<cache root>/faces-v1-.../`), keyed by the video's size and mtime like the frame
cache, so runs, trials and loader workers never detect the same video twice. A video whose face is
found in too few detection frames is remembered as such and fails every read with a `DataError`,
which the cache build and the datasets turn into "skipped, warned, counted".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.config.schema import DataConfig, FaceConfig
from harness.data.face_detectors import FaceDetector, detect_faces, make_detector
from harness.data.face_tracks import link_tracks, pick_track, smooth_track, square_crop_boxes
from harness.data.entries import stamped_entry
from harness.data.readers import FrameReader, _LRU, make_reader, resize_frame, resolve_backend
from harness.errors import DataError
from harness.io import atomic_path

__all__ = [
    "VideoFaces",
    "FaceBoxStore",
    "FaceCropReader",
    "find_faces",
    "face_box_store_for",
    "face_setting_tag",
    "reader_for",
    "write_face_boxes_csv",
    "FACE_BOXES_FILE",
]

FACE_BOXES_FILE = "face_boxes.csv"
_VERSION = 1
_DETECT_CHUNK = 32  # detection frames decoded per read: bounds memory on 1080p videos


@dataclass(frozen=True)
class VideoFaces:
    """The tracked face of one video, in the original frame's pixels."""

    boxes: np.ndarray  # (n_frames, 4) float32 x0, y0, x1, y1 after smoothing; (0, 4) when no face was kept
    scores: np.ndarray  # (n_frames,) float32 detector score at the nearest detection frame, NaN where filled
    width: int
    height: int
    detected_fraction: float  # share of the detection frames in which the kept track had a box

    @property
    def found(self) -> bool:
        return len(self.boxes) > 0


def find_faces(decoder: FrameReader, path: str, n_frames: int, cfg: FaceConfig, detector: FaceDetector) -> VideoFaces:
    """Detect on every `cfg.detect_every`-th frame, keep the subject's track, smooth it over the video."""
    # The last frame is always a detection frame: boxes beyond the last detection could only be held still,
    # and a face that moves on through the final frames would leave its crop.
    sample_frames = np.union1d(np.arange(0, n_frames, cfg.detect_every), [n_frames - 1])
    detections: list[np.ndarray] = []
    height = width = 0
    for start in range(0, len(sample_frames), _DETECT_CHUNK):
        frames = decoder.read(path, sample_frames[start:start + _DETECT_CHUNK], None)  # (T, H, W, 3) native
        height, width = frames.shape[1:3]
        detections += [detect_faces(detector, frame, cfg) for frame in frames]
    track = pick_track(link_tracks(detections))
    fraction = len(track.boxes) / len(sample_frames) if track else 0.0
    if track is None or fraction < cfg.min_detected_fraction:
        return VideoFaces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), width, height, fraction)
    boxes, scores = smooth_track(track, sample_frames, n_frames, cfg.smooth_window)
    return VideoFaces(boxes, scores, width, height, fraction)


def face_setting_tag(cfg: FaceConfig) -> str:
    """A short name for the detection settings: boxes found with other settings are never reused."""
    detection = cfg.model_dump(exclude={"margin"})  # the margin shapes the crop, not the boxes
    digest = hashlib.sha1(json.dumps(detection, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.detector}-{digest}"


class FaceBoxStore:
    """Each video's `VideoFaces` as `<dir>/<hash of the path>/<file size>-<mtime ns>.npz`."""

    def __init__(self, root: Path, cfg: FaceConfig, backend: str) -> None:
        self.cfg = cfg
        self.dir = Path(root) / f"faces-v{_VERSION}-{backend}-{face_setting_tag(cfg)}"

    def path(self, video: str) -> Path:
        return stamped_entry(self.dir, video, ".npz", "find its face")

    def load(self, video: str) -> VideoFaces | None:
        path = self.path(video)
        if not path.is_file():
            return None
        with np.load(path) as z:
            return VideoFaces(z["boxes"], z["scores"], int(z["width"]), int(z["height"]), float(z["detected_fraction"]))

    def save(self, video: str, faces: VideoFaces) -> None:
        path = self.path(video)
        # Written atomically: two loader workers may find the same face at once.
        with atomic_path(path) as tmp:
            np.savez(tmp, boxes=faces.boxes, scores=faces.scores, width=faces.width, height=faces.height,
                     detected_fraction=faces.detected_fraction)
        # Boxes of earlier versions of this file; a dot-name is another writer's temporary file, still open.
        for stale in path.parent.glob("[!.]*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)


class FaceCropReader:
    """A FrameReader of square face crops: `read(path, indices, size)` -> uint8 (T, size, size, 3).

    `n_frames` maps each video path to its length (the manifest's), which the detection needs.
    """

    def __init__(self, decoder: FrameReader, store: FaceBoxStore, n_frames: Mapping[str, int]) -> None:
        self.decoder = decoder
        self.store = store
        self.cfg = store.cfg
        self.n_frames = n_frames
        self._faces = _LRU(512)
        self._detector: FaceDetector | None = None

    def __getstate__(self) -> dict:
        # Detectors hold native handles that do not pickle (spawned loader workers): each makes its own.
        return {**self.__dict__, "_detector": None}

    def faces(self, path: str) -> VideoFaces:
        """The video's tracked face, from the store or found now (and stored)."""
        return self._faces.get((path, self.store.path(path).name), lambda: self._load_or_find(path))

    def _load_or_find(self, path: str) -> VideoFaces:
        faces = self.store.load(path)
        if faces is None:
            if path not in self.n_frames:
                raise DataError(f"{path} must be in the manifest to find its face, but it is not")
            if self._detector is None:
                self._detector = make_detector(self.cfg)
            faces = find_faces(self.decoder, path, int(self.n_frames[path]), self.cfg, self._detector)
            self.store.save(path, faces)
        return faces

    def read(self, path: str, indices: np.ndarray, size: int | None) -> np.ndarray:
        if size is None:
            raise DataError("face crops are read at data.input_size, but a native-size read was asked for")
        faces = self.faces(path)
        if not faces.found:
            raise DataError(
                f"{path} must show a face in at least {self.cfg.min_detected_fraction:.0%} of its detection frames "
                f"(data.face.min_detected_fraction), but its face track covers {faces.detected_fraction:.0%}"
            )
        indices = np.asarray(indices, dtype=np.int64)
        frames = self.decoder.read(path, indices, None)  # (T, H, W, 3) native
        height, width = frames.shape[1:3]
        if (width, height) != (faces.width, faces.height):
            raise DataError(f"{path} must decode at {faces.width}x{faces.height} as when its face was found, but got {width}x{height}")
        squares = square_crop_boxes(faces.boxes[indices], self.cfg.margin, width, height)
        return np.stack([resize_frame(f[y0:y1, x0:x1], size) for f, (x0, y0, x1, y1) in zip(frames, squares)])


def face_box_store_for(data_cfg: DataConfig) -> FaceBoxStore:
    """The box store of a config: beside its frame cache, one folder per backend and detection setting."""
    from harness.data.cache import cache_root

    return FaceBoxStore(cache_root(data_cfg), data_cfg.face, resolve_backend(data_cfg.backend))


def reader_for(data_cfg: DataConfig, n_frames: Mapping[str, int]) -> FrameReader:
    """The reader a run decodes with: the backend's frames, or face crops of them with data.face_crop."""
    decoder = make_reader(data_cfg.backend)
    if not data_cfg.face_crop:
        return decoder
    return FaceCropReader(decoder, face_box_store_for(data_cfg), n_frames)


def write_face_boxes_csv(manifest: pd.DataFrame, store: FaceBoxStore, out: Path) -> int:
    """One row per frame of every video whose face was kept: video_id, frame, x0, y0, x1, y1, score.

    Coordinates are the smoothed face boxes in the original frame's pixels (the crop is the square of
    data.face.margin x the longer side around each); score is empty where the box was filled from the
    track. Returns the number of videos written.
    """
    parts = []
    for video_id, path in manifest[["video_id", "path"]].drop_duplicates("path").itertuples(index=False):
        faces = store.load(str(path))
        if faces is None or not faces.found:
            continue
        part = pd.DataFrame(np.round(faces.boxes, 1), columns=["x0", "y0", "x1", "y1"])
        part.insert(0, "frame", np.arange(len(faces.boxes)))
        part.insert(0, "video_id", video_id)
        part["score"] = np.round(faces.scores, 4)
        parts.append(part)
    table = pd.concat(parts) if parts else pd.DataFrame(columns=["video_id", "frame", "x0", "y0", "x1", "y1", "score"])
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    return len(parts)

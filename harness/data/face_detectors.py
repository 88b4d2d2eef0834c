"""Face detectors by name (`data.face.detector`): each finds the face boxes on one RGB frame.

The weights ship inside the packages (dlib's built-in HOG model, OpenCV's bundled Haar cascades), so
nothing is fetched at run time. Both packages are optional: `pip install -e '.[faces]'` brings them.
The candidates were measured side by side on the same frames (bench/face_detectors.py, README).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from PIL import Image

from harness.config.schema import FaceConfig
from harness.errors import DataError

__all__ = ["FaceDetector", "DETECTORS", "make_detector", "detect_faces"]

_INSTALL_HINT = "install the face extra: pip install -e '.[faces]'"


class FaceDetector(Protocol):
    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Boxes on one uint8 (H, W, 3) RGB frame: (k, 5) float32 rows of x0, y0, x1, y1, score."""
        ...


def _boxes(rows: list[tuple[float, float, float, float, float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal-face detector, the one FF++'s own crop script uses."""

    def __init__(self, cfg: FaceConfig) -> None:
        try:
            import dlib
        except ImportError:
            raise DataError(f"data.face.detector=dlib_hog needs dlib, but it is not installed; {_INSTALL_HINT}") from None
        self._detector = dlib.get_frontal_face_detector()
        self._upsample = cfg.upsample
        self._threshold = cfg.min_score

    def detect(self, frame: np.ndarray) -> np.ndarray:
        rects, scores, _ = self._detector.run(np.ascontiguousarray(frame), self._upsample, self._threshold)
        return _boxes([(r.left(), r.top(), r.right() + 1, r.bottom() + 1, s) for r, s in zip(rects, scores)])


class OpenCVHaarDetector:
    """OpenCV's Viola-Jones cascade (haarcascade_frontalface_alt2: no false boxes on the empty test frames at 640 px,
    where the default cascade drew 0.3 a frame); the score is the last stage's weight."""

    def __init__(self, cfg: FaceConfig) -> None:
        try:
            import cv2
        except ImportError:
            raise DataError(f"data.face.detector=opencv_haar needs OpenCV, but it is not installed; {_INSTALL_HINT}") from None
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if folder is None:
            raise DataError(
                f"data.face.detector=opencv_haar needs OpenCV's bundled cascades (opencv-python-headless<5), but "
                f"OpenCV {cv2.__version__} ships none; {_INSTALL_HINT}"
            )
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(folder + "haarcascade_frontalface_alt2.xml")
        self._threshold = cfg.min_score

    def detect(self, frame: np.ndarray) -> np.ndarray:
        gray = self._cv2.cvtColor(np.ascontiguousarray(frame), self._cv2.COLOR_RGB2GRAY)
        boxes, _, weights = self._cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=5, outputRejectLevels=True)
        rows = [(x, y, x + w, y + h, float(s)) for (x, y, w, h), s in zip(boxes, np.ravel(weights))]
        return _boxes([r for r in rows if r[4] >= self._threshold])


DETECTORS: dict[str, Callable[[FaceConfig], FaceDetector]] = {
    "dlib_hog": DlibHogDetector,
    "opencv_haar": OpenCVHaarDetector,
}


def make_detector(cfg: FaceConfig) -> FaceDetector:
    """The detector `cfg.detector` names, with its options."""
    if cfg.detector not in DETECTORS:
        raise DataError(f"data.face.detector must be one of {', '.join(DETECTORS)}, but got {cfg.detector!r}")
    return DETECTORS[cfg.detector](cfg)


def detect_faces(detector: FaceDetector, frame: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    """Boxes in `frame`'s own pixels, found on a copy shrunk to `cfg.detect_size` (speed), small ones dropped."""
    height, width = frame.shape[:2]
    scale = min(1.0, cfg.detect_size / max(height, width))
    if scale < 1.0:
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = np.asarray(Image.fromarray(frame).resize(small, Image.Resampling.BILINEAR))
    boxes = detector.detect(frame)
    boxes[:, :4] /= scale
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return boxes[sides >= cfg.min_face_px]

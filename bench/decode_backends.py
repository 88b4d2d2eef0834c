"""Video decoders on the same clips, and indexing from container metadata vs the old full-demux probe.

Decoding: every installed backend (decord, PyAV, torchcodec) reads the same clips of the same videos,
8 frames spread over 2 s from a random start (as a training clip of FF++), from a 480p and a 720p h264
video, at native size and resized to 224. Each clip gets a fresh reader, as training does with far more
videos than a reader keeps open, so the cost of opening the file is in the figure. Then each backend
reads each video whole in chunks of 64 consecutive frames at 224 px (as the frame cache fills an entry).
"vs decord" is the mean |diff| (0..255) of a backend's frames against decord's on the same clips.

Indexing: a generated FF++ tree (>= 300 h264 videos at 480p, copies of a few encoded ones), probed with
the old probe (decord opens the file, which demuxes all of it, then decodes the first and last frame),
with the container-metadata probe without its tail check, and with it (harness.data.index.probe_video).

Videos are written with PyAV/libx264 under --workdir (kept between runs, so a rerun skips encoding).
The default run takes 2-4 minutes on a 2-core machine.

Usage: python bench/decode_backends.py [--clips 12] [--index-videos 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from machine import cpu_description  # bench/machine.py: scripts run from bench/

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.data.index import index_ffpp, probe_video  # noqa: E402
from harness.data.readers import make_reader  # noqa: E402
from harness.errors import DataError  # noqa: E402

FPS = 25
METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")


def write_video(path: Path, width: int, height: int, frames: int, preset: str, seed: int) -> None:
    """A moving gradient with a moving block: cheap to draw, not trivial to encode. x264's default GOP (250)."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    noise = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset, "crf": "23"}
        for t in range(frames):
            image = np.stack([(xx + 3 * t) % 256, (yy + 2 * t) % 256, (xx + yy + t) // 3 % 256], -1).astype(np.uint8)
            image = image + np.roll(noise, t, axis=1)
            y0, x0 = (height // 3 + 4 * t) % (height - height // 4), (width // 3 + 6 * t) % (width - width // 4)
            image[y0:y0 + height // 4, x0:x0 + width // 4] = (200, 120, 90)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    tmp.replace(path)


def ensure_video(path: Path, *args) -> Path:
    if not path.is_file():
        write_video(path, *args)
    return path


def installed_backends() -> list[str]:
    backends = []
    for name in ("decord", "pyav", "torchcodec"):
        try:
            make_reader(name)
        except DataError as error:
            print(f"  {name}: not usable here ({str(error)[:110]}...)")
            continue
        backends.append(name)
    return backends


def bench_clips(backends: list[str], videos: dict[str, Path], n_clips: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for label, video in videos.items():
        n_frames = probe_video(video)[0]
        span = 2 * FPS  # 8 frames over 2 s, as data.clip_seconds=2, data.n_segment=8
        starts = rng.integers(0, n_frames - span, n_clips)
        clips = [np.linspace(s, s + span - 1, 8).round().astype(np.int64) for s in starts]
        for size in (None, 224):
            reference = None
            for backend in backends:
                out = []
                start = time.perf_counter()
                for clip in clips:
                    out.append(make_reader(backend).read(str(video), clip, size))
                seconds = (time.perf_counter() - start) / len(clips)
                frames = np.stack(out).astype(np.int16)
                reference = frames if backend == "decord" else reference
                diff = "-" if reference is None or backend == "decord" else f"{np.abs(frames - reference).mean():.2f}"
                rows.append([label, "native" if size is None else str(size), backend, f"{1 / seconds:.1f}",
                             f"{seconds * 1e3:.1f}", diff])
    return rows


def bench_sequential(backends: list[str], videos: dict[str, Path]) -> list[list[str]]:
    rows = []
    for label, video in videos.items():
        n_frames = probe_video(video)[0]
        for backend in backends:
            reader = make_reader(backend)
            start = time.perf_counter()
            for first in range(0, n_frames, 64):
                reader.read(str(video), np.arange(first, min(first + 64, n_frames)), 224)
            seconds = time.perf_counter() - start
            rows.append([label, backend, f"{n_frames / seconds:.0f}"])
    return rows


def ensure_tree(workdir: Path, n_videos: int, preset: str) -> Path:
    """An FF++-layout tree of >= n_videos 480p videos: copies of 12 encoded ones (3-5 s), 5 methods."""
    n_reals = max(2, -(-n_videos // 6)) // 2 * 2
    root = workdir / f"tree{n_reals}"
    if (root / ".complete").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = [ensure_video(workdir / f"src480_{i}.mp4", 854, 480, FPS * (3 + i % 3), preset, i) for i in range(12)]
    ids = [f"{i:03d}" for i in range(n_reals)]
    real_dir = root / "original_sequences/youtube/c23/videos"
    real_dir.mkdir(parents=True)
    pairs = [[ids[i], ids[i + 1]] for i in range(0, n_reals, 2)]
    for i, video_id in enumerate(ids):
        shutil.copyfile(sources[i % len(sources)], real_dir / f"{video_id}.mp4")
    for m, method in enumerate(METHODS):
        fake_dir = root / f"manipulated_sequences/{method}/c23/videos"
        fake_dir.mkdir(parents=True)
        for i, (a, b) in enumerate(pairs):
            for k, (target, source) in enumerate(((a, b), (b, a))):
                shutil.copyfile(sources[(i + m + k) % len(sources)], fake_dir / f"{target}_{source}.mp4")
    (root / "splits").mkdir()
    thirds = np.array_split(np.arange(len(pairs)), 3)
    for split, part in zip(("train", "val", "test"), thirds):
        (root / "splits" / f"{split}.json").write_text(json.dumps([pairs[i] for i in part]))
    (root / ".complete").touch()
    return root


def old_probe(path: Path) -> tuple[int, float]:
    """The probe the index used before: decord demuxes the whole file on open, then decodes the last frame."""
    import decord

    vr = decord.VideoReader(str(path), num_threads=1)
    n = len(vr)
    vr.get_batch([0, n - 1])
    return n, float(vr.get_avg_fps())


def header_only_probe(path: Path) -> tuple[int, float]:
    """The metadata probe without its tail check: what that check costs."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames, float(stream.average_rate)


def bench_index(root: Path, have_decord: bool) -> list[list[str]]:
    videos = sorted(root.glob("*_sequences/**/*.mp4"))
    rows = []
    probes = [("metadata, no tail check", header_only_probe), ("metadata + tail check (new)", probe_video)]
    if have_decord:
        probes.insert(0, ("decord full demux + last frame (old)", old_probe))
    results = {}
    for name, probe in probes:
        start = time.perf_counter()
        results[name] = [probe(v) for v in videos]
        seconds = time.perf_counter() - start
        rows.append([name, str(len(videos)), f"{len(videos) / seconds:.0f}", f"{seconds / len(videos) * 1e3:.2f}",
                     f"{6000 * seconds / len(videos):.0f}"])
    if have_decord:
        same = results[probes[0][0]] == results[probes[-1][0]]
        print(f"  old and new probes agree on (n_frames, fps) for every video: {same}")
    start = time.perf_counter()
    result = index_ffpp(root, None, backend="pyav", progress=False)
    seconds = time.perf_counter() - start
    rows.append(["index_ffpp (listing, splits, new probe)", str(len(result.manifest)),
                 f"{len(result.manifest) / seconds:.0f}", f"{seconds / len(result.manifest) * 1e3:.2f}",
                 f"{6000 * seconds / len(result.manifest):.0f}"])
    return rows


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--clips", type=int, default=12, help="random clips per video and size (default 12)")
    parser.add_argument("--seconds", type=int, default=10, help="length of the 480p and 720p test videos (default 10)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset of the decode test videos (default veryfast; "
                        "the index tree always uses ultrafast)")
    parser.add_argument("--index-videos", type=int, default=300, help="videos in the index tree, at least (default 300)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "harness-bench-decode",
                        help="where the videos are written and kept between runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    print(f"CPU: {cpu_description()}")
    print(f"videos under {args.workdir} (x264 {args.preset}, {args.seconds} s at {FPS} fps, keyframe every 250 frames)")
    start = time.perf_counter()
    n = args.seconds * FPS
    videos = {"480p": ensure_video(args.workdir / f"v480_{args.seconds}s_{args.preset}.mp4", 854, 480, n, args.preset, 1),
              "720p": ensure_video(args.workdir / f"v720_{args.seconds}s_{args.preset}.mp4", 1280, 720, n, args.preset, 2)}
    tree = ensure_tree(args.workdir, args.index_videos, "ultrafast")
    print(f"test data ready in {time.perf_counter() - start:.0f} s")
    backends = installed_backends()

    print_table(f"8-frame clips over 2 s, random starts, {args.clips} per video and size, a fresh reader each",
                ["video", "size", "backend", "clips/s", "ms/clip", "vs decord"],
                bench_clips(backends, videos, args.clips, args.seed))
    print_table("whole video in consecutive 64-frame chunks at 224 px (as the frame cache fills an entry)",
                ["video", "backend", "frames/s"], bench_sequential(backends, videos))
    print_table(f"indexing {tree}", ["probe", "videos", "videos/s", "ms/video", "s for 6000"],
                bench_index(tree, "decord" in backends))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

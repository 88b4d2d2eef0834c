"""The frame cache: equal to fresh decodes (raw), close to them (jpeg/webp), invalidated by a changed file, safe
under two builders and a killed one."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.config.schema import DataConfig
from harness.data.cache import CachedReader, FrameCache, build_cache, frame_cache_for, snap_to_stride
from harness.data.dataset import ClipDataset
from harness.data.frame_codec import encode_frames, frame_decoder
from harness.data.index import index_ffpp
from harness.data.readers import DecordReader
from harness.errors import DataError


def _cfg(root: Path, cache_dir: Path, **overrides) -> DataConfig:
    # 32x32 synthetic videos read at 24x24, so the cache must hold resized frames; raw, so that cached frames
    # must equal decoded ones exactly (the jpeg/webp tests below set the format).
    base = dict(source="ffpp", root=root, methods=["Deepfakes"], input_size=24, n_segment=4, clip_seconds=1.0,
                cache_dir=cache_dir, backend="decord", cache_format="raw")
    return DataConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def manifest(synthetic_root: Path) -> pd.DataFrame:
    # index_ffpp, not build_manifest: the session tree stays as generated (no cached index written into it).
    return index_ffpp(synthetic_root, ["Deepfakes"], progress=False).manifest


@pytest.mark.parametrize("stride", [1, 3])
def test_cached_frames_equal_freshly_decoded_resized_frames(synthetic_root, manifest, tmp_path, stride) -> None:
    cfg = _cfg(synthetic_root, tmp_path, cache_stride=stride)
    stats = build_cache(manifest, cfg, progress=False)
    assert (stats.videos, stats.decoded, stats.reused) == (12, 12, 0)
    cache, decoder = frame_cache_for(cfg), DecordReader()
    reader = CachedReader(cache, DecordReader(), dict(zip(manifest["path"], manifest["n_frames"])))
    for path, n_frames in manifest[["path", "n_frames"]].itertuples(index=False):
        stored = np.arange(0, n_frames, stride)
        assert cache.load(path).shape == (len(stored), 24, 24, 3)
        indices = np.array([stored[-1], 0, stored[len(stored) // 2], stored[-1]])
        assert np.array_equal(reader.read(path, indices, 24), decoder.read(path, indices, 24))
    assert stats.bytes == 12 * len(np.arange(0, 24, stride)) * 24 * 24 * 3 + 12 * 128  # frames + .npy headers


def test_second_build_decodes_nothing_and_every_video_was_decoded_once(synthetic_root, manifest, tmp_path) -> None:
    cfg = _cfg(synthetic_root, tmp_path)
    build_cache(manifest, cfg, progress=False)
    again = build_cache(manifest, cfg, progress=False)
    assert (again.decoded, again.reused) == (0, 12)
    counts = frame_cache_for(cfg).decode_counts()
    assert len(counts) == 12 and set(counts.values()) == {1}


def test_a_changed_video_is_decoded_again_and_its_stale_entry_removed(synthetic_root, manifest, tmp_path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    first, second = (Path(p) for p in manifest["path"][:2])
    video = videos / "clip.mp4"
    shutil.copy(first, video)
    cache = FrameCache(tmp_path / "cache", size=24, frame_format="raw")
    reader = CachedReader(cache, DecordReader(), {str(video): 24})
    indices = np.arange(0, 24, 5)
    before = reader.read(str(video), indices, 24)
    old_entry = cache.entry_path(str(video))

    shutil.copy(second, video)
    os.utime(video, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    after = reader.read(str(video), indices, 24)

    assert np.array_equal(after, DecordReader().read(str(second), indices, 24))
    assert not np.array_equal(before, after)
    assert not old_entry.exists() and cache.entry_path(str(video)).exists()
    assert cache.decode_counts()[str(video)] == 2


class _SlowReader:
    """Decord, slowed down so that two builders surely overlap in time."""

    def __init__(self) -> None:
        self._decord = DecordReader()

    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray:
        time.sleep(0.05)
        return self._decord.read(path, indices, size)


def _build_in_child(manifest: pd.DataFrame, cfg: DataConfig, start: float, queue) -> None:
    time.sleep(max(0.0, start - time.time()))  # both children start building at the same moment
    stats = build_cache(manifest, cfg, progress=False, reader=_SlowReader())
    queue.put(stats.decoded)


def test_two_processes_building_one_cache_split_the_videos_without_corruption(synthetic_root, manifest, tmp_path) -> None:
    cfg = _cfg(synthetic_root, tmp_path)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 0.5
    children = [ctx.Process(target=_build_in_child, args=(manifest, cfg, start, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
    decoded = sorted(queue.get(timeout=5) for _ in children)

    assert [child.exitcode for child in children] == [0, 0]
    assert sum(decoded) == 12 and decoded[0] >= 3  # each video decoded by exactly one builder; both worked
    cache = frame_cache_for(cfg)
    assert set(cache.decode_counts().values()) == {1}
    assert not list(cache.dir.glob("*/.*.tmp*"))
    decoder = DecordReader()
    for path in manifest["path"]:
        assert np.array_equal(cache.load(path), decoder.read(path, np.arange(24), 24))


def test_clips_are_identical_with_the_cache_on_and_off(synthetic_root, manifest, tmp_path) -> None:
    for stride in (1, 2):
        on = ClipDataset(manifest, _cfg(synthetic_root, tmp_path, cache_stride=stride), train=True, seed=3)
        off = ClipDataset(manifest, _cfg(synthetic_root, tmp_path, cache=False, cache_stride=stride), train=True, seed=3)
        for i in (0, 5, 11):
            assert np.array_equal(on[i]["clip"].numpy(), off[i]["clip"].numpy())
    assert frame_cache_for(_cfg(synthetic_root, tmp_path, cache_stride=2)).decode_counts().total() == 3


def test_snap_to_stride_keeps_only_stored_frames() -> None:
    assert snap_to_stride(np.array([0, 1, 2, 5, 6, 23]), 3).tolist() == [0, 0, 0, 3, 6, 21]
    assert snap_to_stride(np.array([4, 7]), 1).tolist() == [4, 7]


def test_the_cache_defaults_to_a_folder_beside_the_data(tmp_path) -> None:
    cache = frame_cache_for(DataConfig(root=tmp_path / "ffpp", input_size=64, cache_stride=2, backend="decord"))
    assert cache.dir == (tmp_path / "ffpp" / ".harness_frame_cache" / "v2-decord-64px-stride2-jpeg-q90").resolve()


def test_a_cache_too_large_for_the_disk_is_refused_before_decoding(synthetic_root, manifest, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DataError, match=r"frame cache must fit on disk, but it needs .* data.cache_stride"):
        build_cache(manifest, _cfg(synthetic_root, tmp_path), progress=False)
    assert frame_cache_for(_cfg(synthetic_root, tmp_path)).decode_counts().total() == 0


def test_a_read_at_another_size_is_refused(tmp_path) -> None:
    reader = CachedReader(FrameCache(tmp_path, size=24), DecordReader(), {})
    with pytest.raises(DataError, match="must ask for size 24, but got 32"):
        reader.read("x.mp4", np.arange(2), 32)


def test_harness_cache_builds_then_reports_everything_cached(synthetic_root, tmp_path, capsys) -> None:
    from harness.cli import main

    root = shutil.copytree(synthetic_root, tmp_path / "ffpp")  # the command writes its cached index into the tree
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"data: {{source: ffpp, root: {root}, methods: [Deepfakes], input_size: 24, "
                        f"cache_dir: {tmp_path / 'cache'}, cache_format: raw}}\n")
    assert main(["cache", "--config", str(cfg_file), "--quiet"]) == 0
    assert "12 videos (12 decoded now, 0 already cached)" in capsys.readouterr().out
    assert main(["cache", "--config", str(cfg_file), "--quiet"]) == 0
    assert "12 videos (0 decoded now, 12 already cached), 0.5 MiB" in capsys.readouterr().out


# --- jpeg and webp entries -------------------------------------------------------------------------------------


class _ArrayReader:
    """Serves frames from an array, as a decoder would from a video (counts how often it was asked)."""

    def __init__(self, frames: np.ndarray, fail_after: int | None = None, hang_after: int | None = None) -> None:
        self.frames, self.fail_after, self.hang_after, self.reads = frames, fail_after, hang_after, 0

    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray:
        if self.reads == self.fail_after:
            raise DataError(f"{path} must decode, but this test stops it here")
        if self.reads == self.hang_after:
            time.sleep(60)  # killed meanwhile
        self.reads += 1
        return self.frames[indices]


def _face_crops(n: int, size: int) -> np.ndarray:
    """Real image content: squares of 1.3x to 2.3x the face box of scikit-image's astronaut, resized, (n, size, size, 3)."""
    from PIL import Image
    from skimage.data import astronaut

    image, (x0, y0, x1, y1) = astronaut(), (175, 75, 270, 172)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    crops = []
    for i in range(n):
        half = int(1.3 * (y1 - y0) * (1 + i / max(1, n - 1))) // 2
        crop = image[max(0, cy - half):cy + half, max(0, cx - half):cx + half]
        crops.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR)))
    return np.stack(crops)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def _video_file(tmp_path: Path) -> str:
    video = tmp_path / "video.mp4"  # the cache keys entries by the file's path, size and mtime only
    video.write_bytes(b"not decoded: an _ArrayReader serves its frames")
    return str(video)


@pytest.mark.parametrize("frame_format", ["jpeg", "webp"])
def test_encoded_entries_round_trip_face_crops_above_34_db_and_within_their_size_estimate(tmp_path, frame_format) -> None:
    frames = _face_crops(8, 64)
    video = _video_file(tmp_path)
    cache = FrameCache(tmp_path / "cache", size=64, frame_format=frame_format, quality=90)
    assert cache.ensure(video, len(frames), _ArrayReader(frames)) is True
    loaded = cache.load(video)

    assert loaded.shape == frames.shape and loaded.dtype == np.uint8
    assert _psnr(loaded, frames) > 34.0  # measured: jpeg q90 36.3 dB, webp q90 38.3 dB on these crops
    entry_bytes = cache.entry_path(video).stat().st_size
    assert cache.disk_bytes() == entry_bytes < len(frames) * cache.frame_bytes() < frames.nbytes


def test_an_encoded_clip_decodes_only_its_frames_in_order_with_repeats_and_stride(tmp_path) -> None:
    # Frames that differ in flat colour, so each read frame can be told apart from its neighbours.
    colours = np.linspace(0, 255, 12).astype(np.uint8)
    # 24 frames, of which stride 2 keeps 0, 2, .., 22: stored frame k has colour k.
    frames = np.broadcast_to(np.repeat(colours, 2)[:, None, None, None], (24, 16, 16, 3)).copy()
    video = _video_file(tmp_path)
    cache = FrameCache(tmp_path / "cache", size=16, stride=2, frame_format="jpeg", quality=95)
    reader = CachedReader(cache, _ArrayReader(frames), {video: 24})
    reader.read(video, np.array([0]), 16)  # builds the entry
    entry = cache.entry_path(video)

    # Damage every stored frame the clip below does not use: a reader that touched them would fail.
    offsets = np.frombuffer(entry.read_bytes(), dtype="<i8", count=13, offset=32)
    used = {3, 0, 5}  # frames 6, 0, 10 of the video
    data = bytearray(entry.read_bytes())
    for i in set(range(12)) - used:
        data[offsets[i]:offsets[i + 1]] = bytes(offsets[i + 1] - offsets[i])
    entry.write_bytes(bytes(data))

    clip = CachedReader(cache, _ArrayReader(frames), {video: 24}).read(video, np.array([6, 0, 6, 10, 0]), 16)
    assert clip.shape == (5, 16, 16, 3)
    assert np.abs(clip.mean(axis=(1, 2, 3)) - colours[[3, 0, 3, 5, 0]]).max() < 2
    with pytest.raises(DataError, match="must decode"):
        CachedReader(cache, _ArrayReader(frames), {video: 24}).read(video, np.array([2]), 16)


def test_opencv_and_pil_decode_cached_frames_identically(monkeypatch) -> None:
    frames = _face_crops(3, 48)
    for codec in ("jpeg", "webp"):
        blobs = [np.frombuffer(b, dtype=np.uint8) for b in encode_frames(frames, codec, 90)]
        by_opencv, by_pil = np.empty_like(frames), np.empty_like(frames)
        frame_decoder(codec)(blobs, by_opencv)
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "cv2", None)  # `import cv2` now fails: the PIL path
            frame_decoder(codec)(blobs, by_pil)
        assert np.array_equal(by_opencv, by_pil)


def test_each_format_and_quality_has_its_own_folder(tmp_path) -> None:
    caches = [FrameCache(tmp_path, 224, frame_format=f, quality=q) for f, q in
              [("raw", 90), ("raw", 50), ("jpeg", 90), ("jpeg", 85), ("webp", 90)]]
    assert [c.dir.name for c in caches] == ["v2-decord-224px-stride1-raw", "v2-decord-224px-stride1-raw",
                                            "v2-decord-224px-stride1-jpeg-q90", "v2-decord-224px-stride1-jpeg-q85",
                                            "v2-decord-224px-stride1-webp-q90"]  # raw ignores the quality
    cfg = DataConfig(root=tmp_path, cache_format="webp", cache_quality=80, backend="auto")
    assert frame_cache_for(cfg).dir.name.endswith("-webp-q80")
    assert frame_cache_for(cfg).dir == frame_cache_for(cfg.model_copy(update={"backend": "decord"})).dir
    with pytest.raises(DataError, match="data.cache_format must be one of raw, jpeg, webp .* but got 'png'"):
        FrameCache(tmp_path, 224, frame_format="png")


@pytest.mark.parametrize("frame_format", ["raw", "jpeg"])
def test_a_failed_write_leaves_no_entry_and_no_temporary_file(tmp_path, frame_format) -> None:
    video = _video_file(tmp_path)
    cache = FrameCache(tmp_path / "cache", size=16, frame_format=frame_format)
    with pytest.raises(DataError, match="this test stops it here"):
        cache.ensure(video, 100, _ArrayReader(np.zeros((100, 16, 16, 3), np.uint8), fail_after=1))  # 2nd chunk
    assert not cache.has(video)
    assert [p.name for p in cache.entry_path(video).parent.iterdir()] == [".lock"]


def test_the_temporary_file_of_a_killed_writer_is_removed_by_the_next_one(tmp_path) -> None:
    video = _video_file(tmp_path)
    frames = _face_crops(100, 16)
    cache = FrameCache(tmp_path / "cache", size=16, frame_format="jpeg")
    writer = mp.get_context("fork").Process(target=cache.ensure, args=(video, 100, _ArrayReader(frames, hang_after=1)))
    writer.start()
    folder, deadline = cache.entry_path(video).parent, time.time() + 30
    while not list(folder.glob(".*.tmp*")) and time.time() < deadline:
        time.sleep(0.02)
    writer.kill()  # SIGKILL: no cleanup runs
    writer.join()
    assert len(list(folder.glob(".*.tmp*"))) == 1 and not cache.has(video)

    assert cache.ensure(video, 100, _ArrayReader(frames)) is True
    assert not list(folder.glob(".*.tmp*")) and cache.load(video).shape == (100, 16, 16, 3)


def test_the_disk_check_counts_the_formats_size_estimate(synthetic_root, manifest, tmp_path, monkeypatch) -> None:
    # 12 videos x 24 frames at 24 px: raw needs 498 kB; jpeg q90 is estimated at ~1 kB per frame (tiny images
    # carry a ~600-byte header each), ~274 kB.
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 400_000, 400_000))
    with pytest.raises(DataError, match=r"needs .* GiB .*\(1.7 KiB per frame\)"):
        build_cache(manifest, _cfg(synthetic_root, tmp_path), progress=False)
    jpeg = _cfg(synthetic_root, tmp_path, cache_format="jpeg")
    stats = build_cache(manifest, jpeg, progress=False)
    assert stats.decoded == 12
    assert stats.bytes < 12 * 24 * frame_cache_for(jpeg).frame_bytes() < 0.95 * 400_000

    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DataError, match=r"KiB per frame, a high estimate for webp q90\) .* data.cache_quality"):
        build_cache(manifest, _cfg(synthetic_root, tmp_path, cache_format="webp"), progress=False)


def test_clips_from_a_jpeg_cache_are_close_to_decoded_ones(synthetic_root, manifest, tmp_path) -> None:
    on = ClipDataset(manifest, _cfg(synthetic_root, tmp_path, cache_format="jpeg", cache_quality=95), train=False, seed=0)
    off = ClipDataset(manifest, _cfg(synthetic_root, tmp_path, cache=False), train=False, seed=0)
    for i in (0, 7):
        a, b = on[i]["clip"].numpy(), off[i]["clip"].numpy()
        assert a.shape == b.shape and _psnr(a, b) > 30.0, _psnr(a, b)

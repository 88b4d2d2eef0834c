"""The frame cache: equal to fresh decodes, invalidated by a changed file, safe under two builders."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.config.schema import DataConfig
from harness.data.cache import CachedReader, FrameCache, build_cache, frame_cache_for, snap_to_stride
from harness.data.dataset import ClipDataset
from harness.data.index import index_ffpp
from harness.data.readers import DecordReader
from harness.errors import DataError


def _cfg(root: Path, cache_dir: Path, **overrides) -> DataConfig:
    # 32x32 synthetic videos read at 24x24, so the cache must hold resized frames.
    base = dict(source="ffpp", root=root, methods=["Deepfakes"], input_size=24, n_segment=4, clip_seconds=1.0,
                cache_dir=cache_dir)
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
    cache = FrameCache(tmp_path / "cache", size=24)
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
    assert not list(cache.dir.glob("*/.*.tmp.npy"))
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
    cache = frame_cache_for(DataConfig(root=tmp_path / "ffpp", input_size=64, cache_stride=2))
    assert cache.dir == (tmp_path / "ffpp" / ".harness_frame_cache" / "v1-decord-64px-stride2").resolve()


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
                        f"cache_dir: {tmp_path / 'cache'}}}\n")
    assert main(["cache", "--config", str(cfg_file), "--quiet"]) == 0
    assert "12 videos (12 decoded now, 0 already cached)" in capsys.readouterr().out
    assert main(["cache", "--config", str(cfg_file), "--quiet"]) == 0
    assert "12 videos (0 decoded now, 12 already cached), 0.5 MiB" in capsys.readouterr().out

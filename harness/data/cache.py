"""The frame cache: each video decoded once, resized to the model's input, kept on disk as raw or encoded frames.

A sweep reads the same videos trials x epochs times; decoding an h264 clip from its keyframe costs
hundreds of milliseconds at 720p, reading it from the cache a few. One entry per video holds every
stored frame (every `stride`-th), (n_stored, size, size, 3) uint8, written through the same reader a
run without the cache uses. `data.cache_format` picks how (see harness/data/frame_codec.py): `raw`
is a memory-mapped `.npy`, so cached frames equal freshly decoded ones; `jpeg`/`webp` store one image
per frame at `data.cache_quality` in one file with an offset table, 10-40x smaller and still read ~100x
faster than the video is decoded (bench/cache_formats.py: full FF++ c23 as 224 px face crops needs
~460 GB raw, ~30 GB as jpeg q90).

Layout: `<cache_dir>/v2-<backend>-<size>px-stride<k>-<raw|jpeg-q<Q>|webp-q<Q>>/<hash of the video path>/
<file size>-<mtime ns>.npy|.frames`, with cache_dir `data.cache_dir` or else `<data.root>/.harness_frame_cache`.
A changed video gets a new name (and the stale entry is removed), and another format or quality another
folder, so nothing is served stale.
Each video has its own lock: of two processes building one cache, one decodes a video while the
other skips to the next one and later reads what the first wrote. Entries are written to a
temporary file and renamed, so a reader never sees half an entry; the temporary file of a writer
that was killed is removed by the next one. Every decode appends one line to `decodes.log`, which is
how a sweep proves it decoded each video once.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from harness.config.schema import DataConfig
from harness.data.frame_codec import (FRAME_FORMATS, FrameFile, entry_suffix, estimate_frame_bytes, open_frame_file,
                                      open_frame_writer)
from harness.data.entries import stamped_entry, video_folder
from harness.data.face_crops import (FACE_BOXES_FILE, face_box_store_for, face_setting_tag, reader_for,
                                     write_face_boxes_csv)
from harness.data.readers import FrameReader, _LRU, resolve_backend
from harness.errors import DataError
from harness.io import atomic_path, file_lock, reporting_disk_full, reserve_blocks

__all__ = ["FrameCache", "CachedReader", "CacheStats", "frame_cache_for", "build_cache", "cache_root", "snap_to_stride", "DEFAULT_CACHE_FOLDER"]

log = logging.getLogger(__name__)

_VERSION = 2  # 2: the format and quality joined the folder name; jpeg/webp entries
_CHUNK = 64  # frames decoded per read while filling an entry: bounds memory for long videos
_DECODE_LOG = "decodes.log"
_CACHE_DIR_KEY = "data.cache_dir"  # named in a full disk's message: where the cache can move


def snap_to_stride(indices: np.ndarray, stride: int) -> np.ndarray:
    """Frame indices moved down to the nearest stored frame (a multiple of `stride`)."""
    indices = np.asarray(indices, dtype=np.int64)
    return indices if stride == 1 else (indices // stride) * stride


@dataclass(frozen=True)
class CacheStats:
    videos: int  # videos in the manifest
    decoded: int  # decoded by this call
    reused: int  # already in the cache (or written meanwhile by another process)
    bytes: int  # size of the entries of these videos on disk
    seconds: float
    failed: tuple[str, ...] = ()  # videos that failed to decode (or showed no face): left out, and skipped by training too
    face_boxes: Path | None = None  # face_boxes.csv of a face-crop cache


class FrameCache:
    """Entries of one (backend, size, stride, format, quality) setting under `root`; safe to share between processes.

    `frame_format` is raw (exact), jpeg or webp (at `quality`, 1..100, which raw ignores).
    """

    def __init__(self, root: Path, size: int, stride: int = 1, backend: str = "decord", frame_format: str = "raw",
                 quality: int = 90, variant: str = "") -> None:
        if size < 1 or stride < 1:
            raise DataError(f"cache size and stride must be >= 1, but got size={size}, stride={stride}")
        if frame_format not in FRAME_FORMATS or not 1 <= quality <= 100:
            raise DataError(f"data.cache_format must be one of {', '.join(FRAME_FORMATS)} and data.cache_quality in "
                            f"1..100, but got {frame_format!r} and {quality}")
        self.root = Path(root)
        self.size = size
        self.stride = stride
        self.backend = backend
        self.frame_format = frame_format
        self.quality = quality
        stored_as = "raw" if frame_format == "raw" else f"{frame_format}-q{quality}"
        # `variant` names what the frames are of (e.g. face crops and their setting); empty for whole frames.
        self.dir = self.root / f"v{_VERSION}-{backend}-{size}px-stride{stride}-{stored_as}{'-' + variant if variant else ''}"
        self._suffix = entry_suffix(frame_format)

    def __repr__(self) -> str:
        return f"FrameCache({str(self.dir)!r})"

    def n_stored(self, n_frames: int) -> int:
        return -(-n_frames // self.stride)  # frames 0, k, 2k, ... below n_frames

    def frame_bytes(self) -> int:
        """Disk bytes per stored frame: exact for raw, a conservative estimate for jpeg/webp (see frame_codec)."""
        return estimate_frame_bytes(self.frame_format, self.quality, self.size, self.size)

    def entry_path(self, video: str) -> Path:
        """The entry for the video as it is now on disk: its size and mtime are in the name."""
        return stamped_entry(self.dir, video, self._suffix, "be cached")

    def has(self, video: str) -> bool:
        return self.entry_path(video).is_file()

    @contextmanager
    def _video_lock(self, video: str, blocking: bool) -> Iterator[bool]:
        """Hold the video's lock (True), or yield False at once when another process holds it and not blocking."""
        lock = video_folder(self.dir, video) / ".lock"
        # A new video's folder takes a disk block on most filesystems, so a full disk can show here first.
        with reporting_disk_full(lock, _CACHE_DIR_KEY):
            lock.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(lock, blocking) as held:
            yield held

    def ensure(self, video: str, n_frames: int, reader: FrameReader, blocking: bool = True) -> bool | None:
        """Make sure the video's entry exists: True if this call decoded it, False if it was there,
        None if another process is building it and `blocking` is false."""
        entry = self.entry_path(video)
        if entry.is_file():
            return False
        with self._video_lock(video, blocking) as held:
            if not held:
                return None
            if entry.is_file():  # built by the process we waited for
                return False
            # Under the lock no other writer of this video is alive, so temporary files here are a killed writer's.
            for orphan in entry.parent.glob(".*.tmp*"):
                orphan.unlink(missing_ok=True)
            self._write_entry(video, n_frames, entry, reader)
            return True

    def _write_entry(self, video: str, n_frames: int, entry: Path, reader: FrameReader) -> None:
        """Fill the video's entry; a full disk raises DiskFull (not a DataError: the video is not to blame)."""
        stored = np.arange(0, n_frames, self.stride)
        with atomic_path(entry, setting=_CACHE_DIR_KEY) as tmp:
            out = open_frame_writer(tmp, self.frame_format, self.quality, len(stored), self.size, self.size)
            try:
                if self.frame_format == "raw":
                    # A memory map of a sparse file dies of SIGBUS when the disk fills; claimed blocks cannot run out.
                    reserve_blocks(tmp)
                for start in range(0, len(stored), _CHUNK):
                    out.append(reader.read(video, stored[start:start + _CHUNK], self.size))
                out.finish()
            except BaseException:
                out.abort()  # closes the file (or map), so the temporary file can go
                raise
        for stale in entry.parent.glob(f"[!.]*{self._suffix}"):  # entries of earlier versions of this file
            if stale != entry:
                stale.unlink(missing_ok=True)
        # O_APPEND writes this short must not interleave, so concurrent builders share one log.
        with reporting_disk_full(self.dir / _DECODE_LOG, _CACHE_DIR_KEY), open(self.dir / _DECODE_LOG, "a") as log:
            log.write(f"{time.time():.3f}\t{os.getpid()}\t{os.path.abspath(video)}\n")

    def open_entry(self, entry: Path) -> FrameFile:
        """An entry (a path from `entry_path`) opened for reading; FileNotFoundError if absent."""
        return open_frame_file(entry, self.frame_format)

    def load(self, video: str) -> np.ndarray:
        """Every stored frame (n_stored, size, size, 3): a read-only memory map for raw, decoded for jpeg/webp;
        FileNotFoundError if absent."""
        return self.open_entry(self.entry_path(video)).read_all()

    def decode_counts(self, since: float = 0.0) -> Counter:
        """How often each video was decoded into this cache since `since` (a time.time() value)."""
        counts: Counter = Counter()
        log = self.dir / _DECODE_LOG
        if not log.is_file():
            return counts
        for line in log.read_text().splitlines():
            stamp, _, path = line.split("\t", 2)
            if float(stamp) >= since:
                counts[path] += 1
        return counts

    def disk_bytes(self) -> int:
        """Bytes of every entry under this setting's folder."""
        return sum(p.stat().st_size for p in self.dir.glob(f"*/[!.]*{self._suffix}")) if self.dir.is_dir() else 0


class CachedReader:
    """A FrameReader that serves frames from a FrameCache, decoding a missing video whole on first use.

    `n_frames` maps each video path to its length (the manifest's n_frames), needed to fill an entry.
    """

    def __init__(self, cache: FrameCache, decoder: FrameReader, n_frames: dict[str, int], open_maps: int = 256) -> None:
        self.cache = cache
        self.decoder = decoder
        self.n_frames = n_frames
        # Open entries (memory maps) per process, keyed by entry (so a changed video opens its new entry);
        # _LRU drops them after a fork, so no loader worker reads through its parent's maps.
        self._maps = _LRU(open_maps)

    def _entry(self, path: str, indices: np.ndarray, size: int) -> tuple[FrameFile, np.ndarray]:
        """The video's opened entry (filled first if missing) and the stored positions of `indices`."""
        if size != self.cache.size:
            raise DataError(f"a read from {self.cache} must ask for size {self.cache.size}, but got {size}")
        entry = self.cache.entry_path(path)
        try:
            frames = self._maps.get(entry, lambda: self.cache.open_entry(entry))
        except FileNotFoundError:
            if path not in self.n_frames:
                raise DataError(f"{path} must be in the manifest to be cached, but it is not") from None
            self.cache.ensure(path, self.n_frames[path], self.decoder)
            entry = self.cache.entry_path(path)
            frames = self._maps.get(entry, lambda: self.cache.open_entry(entry))
        positions = np.asarray(indices, dtype=np.int64) // self.cache.stride
        if positions.size and (positions.min() < 0 or positions.max() >= len(frames)):
            raise DataError(f"frame indices of {path} must lie in [0, {len(frames) * self.cache.stride}), but got {indices}")
        return frames, positions

    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray:
        frames, positions = self._entry(path, indices, size)
        return frames.read(positions)  # (T, size, size, 3) uint8, a copy

    def read_encoded(self, path: str, indices: np.ndarray, size: int) -> list[np.ndarray]:
        """The chosen frames still encoded (a jpeg cache): one byte array per index, for a decoder on the device."""
        frames, positions = self._entry(path, indices, size)
        if not hasattr(frames, "blobs"):
            raise DataError(f"encoded frames need data.cache_format jpeg, but {self.cache} stores raw frames")
        return [np.array(blob) for blob in frames.blobs(positions.tolist())]  # copies: the map may close


DEFAULT_CACHE_FOLDER = ".harness_frame_cache"


def cache_root(data_cfg: DataConfig) -> Path:
    """Where a config's caches live: data.cache_dir, else a folder beside the data."""
    root = data_cfg.cache_dir
    if root is None:
        # Beside the data, like the manifest cache: the same videos share one cache whatever the working folder.
        base = Path(data_cfg.manifest).parent if data_cfg.source == "csv" and data_cfg.manifest else Path(data_cfg.root)
        root = base / DEFAULT_CACHE_FOLDER
    return Path(root).resolve()


def frame_cache_for(data_cfg: DataConfig) -> FrameCache:
    """The cache a config reads from: data.cache_dir, else beside the data (its size, stride, backend, format and
    quality pick the folder)."""
    # The resolved name ("auto" -> decord or pyav): "auto" and the backend it picks share one cache.
    backend = resolve_backend(data_cfg.backend)
    variant = ""
    if data_cfg.face_crop:  # crops of another margin or detection setting are other frames
        variant = f"face{data_cfg.face.margin:g}-{face_setting_tag(data_cfg.face)}"
    return FrameCache(cache_root(data_cfg), data_cfg.input_size, data_cfg.cache_stride, backend,
                      data_cfg.cache_format, data_cfg.cache_quality, variant)


def _check_disk(cache: FrameCache, missing: pd.DataFrame) -> None:
    # jpeg/webp sizes depend on the content, so their need is an upper bound (FrameCache.frame_bytes).
    need = int(sum(cache.n_stored(int(n)) for n in missing["n_frames"])) * cache.frame_bytes()
    try:
        cache.dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # FF++ often sits on a read-only share; the default cache folder lives beside the data.
        raise DataError(
            f"the frame cache folder must be writable, but {cache.dir} is not ({error.strerror}); "
            f"set data.cache_dir to a writable folder, or data.cache=false"
        ) from None
    free = shutil.disk_usage(cache.dir).free
    if need > 0.95 * free:
        bound = "" if cache.frame_format == "raw" else f", a high estimate for {cache.frame_format} q{cache.quality}"
        raise DataError(
            f"the frame cache must fit on disk, but it needs {need / 2**30:.1f} GiB under {cache.dir} "
            f"({cache.frame_bytes() / 1024:.1f} KiB per frame{bound}) and only {free / 2**30:.1f} GiB are free; "
            f"raise data.cache_stride, set data.cache_format to jpeg or webp or lower data.cache_quality, "
            f"point data.cache_dir at a larger disk, or set data.cache=false"
        )


def _build_in_helper(manifest: pd.DataFrame, data_cfg: DataConfig) -> None:
    build_cache(manifest, data_cfg, progress=False, write_boxes=False)


def build_cache(
    manifest: pd.DataFrame, data_cfg: DataConfig, progress: bool = True, reader: FrameReader | None = None,
    workers: int = 1, write_boxes: bool = True,
) -> CacheStats:
    """Decode every manifest video that is not cached yet; safe to run in several processes at once.

    Videos another process is building are skipped at first and waited for at the end, so two
    builders split the work instead of decoding the same videos. `reader` defaults to the backend's.
    `workers` > 1 starts that many builders in all (this process and workers - 1 helpers): face
    detection and decoding use one core each, so a face-crop build scales with the cores.
    """
    start = time.perf_counter()
    helpers = []
    if workers > 1:
        import multiprocessing

        # spawn: a fork would copy this process's open decoders and torch's thread pool.
        context = multiprocessing.get_context("spawn")
        helpers = [context.Process(target=_build_in_helper, args=(manifest, data_cfg), daemon=True)
                   for _ in range(workers - 1)]
        for helper in helpers:
            helper.start()
    cache = frame_cache_for(data_cfg)
    rows = manifest[["path", "n_frames"]].drop_duplicates("path")
    missing = rows[[not cache.has(str(p)) for p in rows["path"]]]
    if not missing.empty:
        _check_disk(cache, missing)
    # The reader a run without the cache would use: whole frames, or face crops with data.face_crop.
    reader = reader or reader_for(data_cfg, dict(zip(rows["path"].astype(str), rows["n_frames"].astype(int))))
    decoded, deferred, failed = 0, [], []
    bar = tqdm(total=len(rows), initial=len(rows) - len(missing), desc=f"frame cache {cache.size}px",
               unit="video", disable=not progress or missing.empty)

    def ensure(path: str, n_frames: int, blocking: bool) -> bool | None:
        # One broken file must not stop a day-long sweep from starting; training skips it again.
        try:
            return cache.ensure(path, n_frames, reader, blocking=blocking)
        except DataError as error:
            log.warning("frame cache: skipping %s", str(error).splitlines()[0])
            failed.append(path)
            return False

    for path, n_frames in missing.itertuples(index=False):
        done = ensure(str(path), int(n_frames), blocking=False)
        if done is None:
            deferred.append((str(path), int(n_frames)))
            continue
        decoded += int(done)
        bar.update(1)
    for path, n_frames in deferred:
        decoded += int(ensure(path, n_frames, blocking=True))
        bar.update(1)
    bar.close()
    for helper in helpers:  # every video is done once this process has waited for the deferred ones
        helper.join()
        if helper.exitcode:
            log.warning("frame cache: a helper builder exited with code %s; this process built what it left", helper.exitcode)
    if helpers:
        # The helpers' decodes count as reused above; every video missing at the start and not failed is new.
        decoded = len(missing) - len(failed)
    size = sum(cache.entry_path(str(p)).stat().st_size for p in rows["path"] if str(p) not in failed)
    face_boxes = None
    if data_cfg.face_crop and write_boxes:
        # Written whole after every video's boxes are known, so it always matches the crops in this folder.
        face_boxes = cache.dir / FACE_BOXES_FILE
        write_face_boxes_csv(manifest, face_box_store_for(data_cfg), face_boxes)
    return CacheStats(len(rows), decoded, len(rows) - decoded - len(failed), size, time.perf_counter() - start,
                      tuple(failed), face_boxes)


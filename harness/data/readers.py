"""Frame readers: decode chosen frames of one video, resized to a square, as uint8 (T, H, W, 3).

Two backends behind one `read(path, indices, size)`: decord on video files, PIL on folders of
extracted frames (FF++'s `images/` layout). `make_reader` picks one by name.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from harness.data.index import list_frame_images
from harness.errors import DataError

__all__ = ["FrameReader", "DecordReader", "FrameFolderReader", "make_reader", "READERS", "resize_frame"]

# decord resizes with libswscale inside the decoder (in YUV, before RGB conversion); of PIL's filters,
# bilinear comes closest (mean |diff| ~1.8 of 255 on the synthetic videos), so the two backends and
# decord's own fallback below resize alike.
_RESAMPLE = Image.Resampling.BILINEAR


class FrameReader(Protocol):
    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray: ...


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize one uint8 (H, W, 3) frame to (size, size, 3), as decord's decode-time resize does."""
    if frame.shape[:2] == (size, size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), _RESAMPLE))


class _LRU:
    """A few open handles per process; emptied after a fork, so no worker reuses its parent's decoder."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def get(self, key, make: Callable):
        if self._pid != os.getpid():
            self._items.clear()
            self._pid = os.getpid()
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def __getstate__(self) -> dict:
        # Decoders do not pickle (DataLoader workers under spawn): each worker opens its own.
        return {"capacity": self.capacity, "_items": OrderedDict(), "_pid": -1}


def _expand(read_unique: Callable[[list[int]], np.ndarray], indices: np.ndarray) -> np.ndarray:
    """Decode each distinct frame once, in order (cheap seeks), then repeat them as `indices` asks."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    return read_unique(unique.tolist())[inverse]  # (T, H, W, 3)


class DecordReader:
    """Video files through decord, resized at decode time."""

    def __init__(self, cache_size: int = 8) -> None:
        self._readers = _LRU(cache_size)
        # Sizes at which decord returns wrongly strided frames for a video (a decord quirk, e.g. 48x48
        # from 64x64): those are decoded at native size and resized here instead.
        self._native_fallback: set[tuple[str, int]] = set()

    def _open(self, path: str, size: int | None):
        import decord

        def make():
            if size is None:
                return decord.VideoReader(path, num_threads=1)
            return decord.VideoReader(path, width=size, height=size, num_threads=1)

        # The file's stamp is part of the key: a video rewritten in place (the frame cache relies on this)
        # must not be served by a decoder still open on its old contents.
        st = os.stat(path)
        return self._readers.get((path, size, st.st_size, st.st_mtime_ns), make)

    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray:
        import decord

        key = (path, size)
        try:
            if key not in self._native_fallback:
                try:
                    reader = self._open(path, size)
                    return _expand(lambda idx: reader.get_batch(idx).asnumpy(), indices)
                except decord.DECORDError as error:
                    if "size must exactly match" not in str(error):
                        raise
                    self._native_fallback.add(key)
            reader = self._open(path, None)
            frames = _expand(lambda idx: reader.get_batch(idx).asnumpy(), indices)
        except (decord.DECORDError, RuntimeError, OSError) as error:  # decord raises RuntimeError when it cannot open
            raise DataError(f"{path} must decode, but decord failed: {str(error).splitlines()[0]}") from error
        return np.stack([resize_frame(f, size) for f in frames])


class FrameFolderReader:
    """Folders of extracted frames (one image per frame, sorted by name) through PIL."""

    def __init__(self, cache_size: int = 64) -> None:
        self._listings = _LRU(cache_size)

    def read(self, path: str, indices: np.ndarray, size: int) -> np.ndarray:
        images = self._listings.get(path, lambda: list_frame_images(Path(path)))

        def load(idx: list[int]) -> np.ndarray:
            frames = []
            for i in idx:
                with Image.open(images[i]) as im:
                    frames.append(resize_frame(np.asarray(im.convert("RGB")), size))
            return np.stack(frames)

        return _expand(load, indices)


READERS: dict[str, type] = {"decord": DecordReader, "frames": FrameFolderReader}


def make_reader(backend: str) -> FrameReader:
    """A reader by backend name (data.backend)."""
    if backend not in READERS:
        raise DataError(f"data.backend must be one of {', '.join(READERS)}, but got {backend!r}")
    return READERS[backend]()

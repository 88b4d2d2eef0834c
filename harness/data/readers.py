"""Frame readers: decode chosen frames of one video as uint8 (T, H, W, 3), native or resized to a square.

Four backends behind one `read(path, indices, size)`: decord, PyAV and torchcodec on video files,
PIL on folders of extracted frames (FF++'s `images/` layout). `size=None` returns frames at their
native resolution; an int resizes each frame to (size, size). `make_reader` picks one by name
(data.backend); `resolve_backend` turns "auto" into the decoder that will actually run.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from harness.data.index import list_frame_images
from harness.errors import DataError

__all__ = [
    "FrameReader",
    "DecordReader",
    "PyAVReader",
    "TorchCodecReader",
    "FrameFolderReader",
    "make_reader",
    "resolve_backend",
    "BACKENDS",
    "READERS",
    "resize_frame",
]

# decord resizes with libswscale inside the decoder (in YUV, before RGB conversion); of PIL's filters,
# bilinear comes closest (mean |diff| ~1.8 of 255 on the synthetic videos), so the backends and
# decord's own fallback below resize alike.
_RESAMPLE = Image.Resampling.BILINEAR

# Frames PyAV decodes forward, rather than seeking, to reach the next frame wanted. A seek lands on the
# keyframe before the target, and FF++ encodes a keyframe every ~250 frames, so a seek rarely saves
# decoding: carrying on wins for clip frames a few apart and for the frame cache's consecutive chunks.
_FORWARD_LIMIT = 128


class FrameReader(Protocol):
    def read(self, path: str, indices: np.ndarray, size: int | None) -> np.ndarray: ...


def resize_frame(frame: np.ndarray, size: int | None) -> np.ndarray:
    """Resize one uint8 (H, W, 3) frame to (size, size, 3), as decord's decode-time resize does; None keeps it."""
    if size is None or frame.shape[:2] == (size, size):
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


def _stamped(path: str, *key) -> tuple:
    # The file's stamp is part of the key: a video rewritten in place (the frame cache relies on this)
    # must not be served by a decoder still open on its old contents.
    st = os.stat(path)
    return (path, *key, st.st_size, st.st_mtime_ns)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _decord_missing() -> DataError:
    return DataError(
        "data.backend=decord needs the decord package, but it is not installed (decord 0.6.0 has wheels for "
        "Linux x86_64 and Windows x86_64 only); pip install decord there, or set data.backend=pyav (or auto)"
    )


class DecordReader:
    """Video files through decord, resized at decode time."""

    def __init__(self, cache_size: int = 8) -> None:
        try:
            import decord  # noqa: F401
        except ImportError:
            raise _decord_missing() from None
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

        return self._readers.get(_stamped(path, size), make)

    def read(self, path: str, indices: np.ndarray, size: int | None) -> np.ndarray:
        import decord

        key = (path, size)
        try:
            if key not in self._native_fallback:
                try:
                    reader = self._open(path, size)
                    return _expand(lambda idx: reader.get_batch(idx).asnumpy(), indices)
                except decord.DECORDError as error:
                    if size is None or "size must exactly match" not in str(error):
                        raise
                    self._native_fallback.add(key)
            reader = self._open(path, None)
            frames = _expand(lambda idx: reader.get_batch(idx).asnumpy(), indices)
        except (decord.DECORDError, RuntimeError, OSError) as error:  # decord raises RuntimeError when it cannot open
            raise DataError(f"{path} must decode, but decord failed: {_first_line(error)}") from error
        return np.stack([resize_frame(f, size) for f in frames])


class _AVVideo:
    """One open video file and where its decoder stands, so the next read can carry on instead of seeking."""

    def __init__(self, path: str) -> None:
        import av

        self.container = av.open(path)
        if not self.container.streams.video:
            raise ValueError("no video stream")
        self.stream = self.container.streams.video[0]
        # One thread, like decord's num_threads=1: DataLoader workers are the parallelism.
        self.stream.codec_context.thread_count = 1
        rate = self.stream.average_rate or self.stream.guessed_rate
        if not rate:
            raise ValueError("no frame rate in the container")
        self.rate = Fraction(rate)
        self.time_base = Fraction(self.stream.time_base)
        self.start = self.stream.start_time or 0
        self._frames = None  # the decode iterator, from the last seek on
        self._held = None  # (index, frame): the last frame decoded
        self._before = -1  # index of the frame decoded before the held one

    def _index(self, frame, previous: int) -> int:
        # Frame numbers follow decord's: presentation time x average frame rate (FF++ is constant-rate).
        if frame.pts is None:
            return previous + 1
        return round((frame.pts - self.start) * self.time_base * self.rate)

    def _pull(self) -> None:
        frame = next(self._frames, None)
        if frame is None:
            last = self._held[0] if self._held else "its start"
            raise ValueError(f"frames end at {last}")
        previous = self._held[0] if self._held else -1
        self._before, self._held = previous, (self._index(frame, previous), frame)

    def _seek(self, index: int) -> None:
        target = self.start + int(index / self.rate / self.time_base)
        self.container.seek(target, stream=self.stream, backward=True)
        self._frames, self._held, self._before = self.container.decode(self.stream), None, -1
        self._pull()
        if self._held[0] > index and target > self.start:
            # The demuxer seeks by decode time; with B-frames it can land past the frame wanted. Rare: start over.
            self.container.seek(self.start, stream=self.stream, backward=True)
            self._frames, self._held, self._before = self.container.decode(self.stream), None, -1
            self._pull()

    def frame_at(self, index: int):
        """The frame shown at `index`; a missing frame number gets the next frame, as a constant-rate player shows."""
        held = self._held
        reachable = held is not None and self._frames is not None and (
            self._before < index <= held[0] or 0 < index - held[0] <= _FORWARD_LIMIT
        )
        try:
            if not reachable:
                self._seek(index)
            while self._held[0] < index:
                self._pull()
        except BaseException:
            self._frames = None  # a failed decode leaves the iterator spent: the next read seeks afresh
            raise
        return self._held[1]


def _to_array(frame, size: int | None) -> np.ndarray:
    from av.video.reformatter import Interpolation

    if size is None:
        return frame.to_ndarray(format="rgb24")
    # swscale's bilinear from YUV is what decord runs at decode time (mean |diff| to decord ~0.45 of 255).
    return frame.reformat(width=size, height=size, format="rgb24", interpolation=Interpolation.BILINEAR).to_ndarray()


class PyAVReader:
    """Video files through PyAV: seek to the keyframe before the first frame wanted, decode forward from there.

    The open file stays positioned after a read, so consecutive reads (the frame cache's chunks) carry on
    decoding instead of starting over.
    """

    def __init__(self, cache_size: int = 8) -> None:
        self._videos = _LRU(cache_size)

    def read(self, path: str, indices: np.ndarray, size: int | None) -> np.ndarray:
        import av

        try:
            video = self._videos.get(_stamped(path), lambda: _AVVideo(path))
            return _expand(lambda idx: np.stack([_to_array(video.frame_at(i), size) for i in idx]), indices)
        except (av.FFmpegError, OSError, ValueError) as error:
            raise DataError(f"{path} must decode, but PyAV failed: {_first_line(error)}") from error


def _torchcodec_missing(reason: str) -> DataError:
    return DataError(
        f"data.backend=torchcodec needs torchcodec and FFmpeg 4-8 shared libraries, but {reason}; "
        f"pip install torchcodec and install FFmpeg's libraries (e.g. apt-get install libavcodec59 libavformat59 "
        f"libavutil57 libswscale6 libavdevice59 libavfilter8), or set data.backend=auto"
    )


class TorchCodecReader:
    """Video files through torchcodec, resized at decode time (bilinear, antialiased)."""

    def __init__(self, cache_size: int = 8) -> None:
        try:
            from torchcodec._core import ops
        except ImportError as error:
            raise _torchcodec_missing(f"it cannot be imported ({_first_line(error)})") from None
        # torchcodec imports without FFmpeg and fails on first use; failing here stops a run before it starts.
        if not getattr(ops, "_FFMPEG_AVAILABLE", True):
            raise _torchcodec_missing("it cannot load FFmpeg's libraries")
        self._decoders = _LRU(cache_size)

    def read(self, path: str, indices: np.ndarray, size: int | None) -> np.ndarray:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        def make():
            # Approximate seeking trusts the header's frame count and rate, as PyAV's reader does;
            # exact mode would scan the whole file on open, as decord does.
            return VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode="approximate",
                                transforms=None if size is None else [Resize((size, size))])

        try:
            decoder = self._decoders.get(_stamped(path, size), make)
            return _expand(lambda idx: decoder.get_frames_at(idx).data.numpy(), indices)
        except (RuntimeError, ValueError, IndexError, OSError) as error:
            raise DataError(f"{path} must decode, but torchcodec failed: {_first_line(error)}") from error


class FrameFolderReader:
    """Folders of extracted frames (one image per frame, sorted by name) through PIL."""

    def __init__(self, cache_size: int = 64) -> None:
        self._listings = _LRU(cache_size)

    def read(self, path: str, indices: np.ndarray, size: int | None) -> np.ndarray:
        images = self._listings.get(path, lambda: list_frame_images(Path(path)))

        def load(idx: list[int]) -> np.ndarray:
            frames = []
            for i in idx:
                with Image.open(images[i]) as im:
                    frames.append(resize_frame(np.asarray(im.convert("RGB")), size))
            return np.stack(frames)

        return _expand(load, indices)


READERS: dict[str, type] = {"decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchCodecReader,
                            "frames": FrameFolderReader}
BACKENDS = ("auto", *READERS)


def resolve_backend(name: str) -> str:
    """The backend that `name` (data.backend) runs: "auto" is decord where it imports, else PyAV."""
    if name not in BACKENDS:
        raise DataError(f"data.backend must be one of {', '.join(BACKENDS)}, but got {name!r}")
    if name != "auto":
        return name
    # decord first (bench/decode_backends.py): random clips cost the same in decord, PyAV and torchcodec
    # (the keyframe distance dominates), but decord fills the frame cache ~30% faster (consecutive
    # 64-frame chunks at 224 px), and frame caches built before the other backends carry its name.
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def make_reader(backend: str) -> FrameReader:
    """A reader by backend name (data.backend), "auto" resolved by `resolve_backend`."""
    return READERS[resolve_backend(backend)]()

"""How the frame cache stores one video's frames: raw uint8 `.npy`, or one JPEG/WebP image per frame.

Raw entries are `.npy` arrays (n, H, W, 3) read through a memory map. Encoded entries are one file
per video with an offset table, so a clip reads and decodes only its own frames:

    bytes 0..31    header: magic b"HFRAMES1", codec (b"jpeg" or b"webp"), uint32 height, uint32 width,
                   4 reserved bytes, int64 n (all little-endian)
    bytes 32..     int64 offsets[n + 1]: frame i is bytes offsets[i]:offsets[i + 1] of the file
    then           the n encoded images, back to back

Frames are encoded with PIL (the bytes do not depend on which optional libraries are installed) and
decoded with OpenCV where it is installed, else PIL: both wrap libjpeg-turbo/libwebp and give identical
pixels, OpenCV ~20% faster on 224 px clips (bench/cache_formats.py measures it; torchvision's CPU
decode_jpeg is slower once its (3, H, W) output is made (H, W, 3)).
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from harness.errors import DataError

__all__ = ["FRAME_FORMATS", "CODECS", "FrameFile", "FrameWriter", "open_frame_file", "open_frame_writer",
           "encode_frames", "frame_decoder", "estimate_frame_bytes", "entry_suffix"]

FRAME_FORMATS = ("raw", "jpeg", "webp")
CODECS = ("jpeg", "webp")  # the encoded ones

_MAGIC = b"HFRAMES1"
_HEADER = struct.Struct("<8s4sIIIq")  # magic, codec, height, width, reserved, n: 32 bytes
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP"}

# Upper bounds of PIL's bits per pixel, measured on 224 px crops of scikit-image's most textured photos
# (immunohistochemistry, astronaut; the largest of 6 random crops each) and raised by 25%. Frames of h264
# video (FF++ c23) are smoother and come out about half this size; only noise exceeds it.
_BPP_QUALITY = [1, 50, 75, 85, 90, 95, 100]
_BPP = {"jpeg": [1.7, 1.7, 2.45, 3.25, 4.1, 5.8, 10.6], "webp": [1.4, 1.4, 2.0, 3.0, 3.8, 5.0, 6.6]}
_HEADER_BYTES = {"jpeg": 650, "webp": 40}  # per image: PIL's JPEG writes its quantisation and Huffman tables


def entry_suffix(frame_format: str) -> str:
    return ".npy" if frame_format == "raw" else ".frames"


def estimate_frame_bytes(frame_format: str, quality: int, height: int, width: int) -> int:
    """Bytes one stored frame takes on disk: exact for raw, a conservative estimate for jpeg/webp."""
    if frame_format == "raw":
        return height * width * 3
    bpp = float(np.interp(quality, _BPP_QUALITY, _BPP[frame_format]))
    return int(np.ceil(bpp * height * width / 8)) + _HEADER_BYTES[frame_format] + 8  # + its offset-table slot


def encode_frames(frames: np.ndarray, codec: str, quality: int) -> list[bytes]:
    """Each uint8 (H, W, 3) frame of `frames` (T, H, W, 3) as one image file's bytes."""
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format=_PIL_FORMAT[codec], quality=quality)
        out.append(buffer.getvalue())
    return out


def frame_decoder(codec: str) -> Callable[[Sequence[np.ndarray], np.ndarray], None]:
    """A function that decodes images (uint8 byte arrays) into `out` (T, H, W, 3): OpenCV's if installed, else PIL's."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        # Older OpenCV has no RGB read mode: decode to BGR and flip the channels.
        rgb_mode = getattr(cv2, "IMREAD_COLOR_RGB", None)

        def decode_cv2(blobs: Sequence[np.ndarray], out: np.ndarray) -> None:
            for i, blob in enumerate(blobs):
                image = cv2.imdecode(blob, cv2.IMREAD_COLOR if rgb_mode is None else rgb_mode)
                if image is None or image.shape != out.shape[1:]:
                    raise DataError(f"a cached {codec} frame must decode to {out.shape[1:]}, but got "
                                    f"{None if image is None else image.shape}; delete the cache entry")
                out[i] = image if rgb_mode is not None else image[..., ::-1]

        return decode_cv2

    def decode_pil(blobs: Sequence[np.ndarray], out: np.ndarray) -> None:
        for i, blob in enumerate(blobs):
            try:
                with Image.open(io.BytesIO(blob)) as image:
                    frame = np.asarray(image.convert("RGB"))
            except (OSError, SyntaxError, ValueError) as error:  # PIL's ways of saying "not an image"
                raise DataError(f"a cached {codec} frame must decode to {out.shape[1:]}, but PIL failed: {error}; "
                                f"delete the cache entry") from None
            if frame.shape != out.shape[1:]:
                raise DataError(f"a cached {codec} frame must decode to {out.shape[1:]}, but got {frame.shape}; "
                                f"delete the cache entry")
            out[i] = frame

    return decode_pil


class FrameFile(Protocol):
    """One entry, opened: its length, and chosen frames as uint8 (T, H, W, 3)."""

    def __len__(self) -> int: ...
    def read(self, positions: np.ndarray) -> np.ndarray: ...
    def read_all(self) -> np.ndarray: ...


class FrameWriter(Protocol):
    """A new entry being written: frames appended in order, then `finish` (or `abort` on failure)."""

    def append(self, frames: np.ndarray) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


class _RawFile:
    def __init__(self, path: Path) -> None:
        self._frames = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self._frames)

    def read(self, positions: np.ndarray) -> np.ndarray:
        return self._frames[positions]  # fancy indexing copies: (T, H, W, 3) uint8

    def read_all(self) -> np.ndarray:
        return self._frames  # read-only memory map


class _EncodedFile:
    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)  # FileNotFoundError when absent, as for a raw entry
        try:
            size = os.fstat(fd).st_size
            # A read-only map: pages are read on demand, so a clip touches only its frames' bytes.
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
        finally:
            os.close(fd)
        if size < _HEADER.size:
            raise DataError(f"{path} must be a frame cache entry, but it has only {size} bytes; delete it")
        magic, codec, height, width, _, n = _HEADER.unpack_from(self._map)
        codec = codec.decode(errors="replace")
        if magic != _MAGIC or codec not in CODECS:
            raise DataError(f"{path} must start with {_MAGIC!r} and a codec of {CODECS}, but got {magic!r}, {codec!r}; "
                            f"delete it")
        if n < 0 or _HEADER.size + 8 * (n + 1) > size:
            raise DataError(f"{path} must hold the offset table of its {n} frames, but it has only {size} bytes; "
                            f"delete it")
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        self._offsets = np.frombuffer(self._map, dtype="<i8", count=n + 1, offset=_HEADER.size)
        if self._offsets[-1] != size or np.any(np.diff(self._offsets) <= 0):
            raise DataError(f"{path} must end where its offset table says ({self._offsets[-1]} bytes), but it has "
                            f"{size} bytes; delete it (it was cut short)")
        self.codec, self.shape = codec, (height, width, 3)
        self._decode = frame_decoder(codec)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def blobs(self, positions: Sequence[int]) -> list[np.ndarray]:
        """The encoded bytes of chosen frames (read-only views of the file): for decoders elsewhere, e.g. on a GPU."""
        return [self._bytes[self._offsets[i]:self._offsets[i + 1]] for i in positions]

    def read(self, positions: np.ndarray) -> np.ndarray:
        # Each distinct frame decoded once, then repeated as `positions` asks (short videos repeat frames).
        unique, inverse = np.unique(np.asarray(positions, dtype=np.int64), return_inverse=True)
        out = np.empty((len(unique), *self.shape), dtype=np.uint8)
        self._decode(self.blobs(unique.tolist()), out)
        return out if np.array_equal(unique, positions) else out[inverse]

    def read_all(self) -> np.ndarray:
        return self.read(np.arange(len(self)))


def open_frame_file(path: Path, frame_format: str) -> FrameFile:
    """An entry for reading; FileNotFoundError if it is absent."""
    return _RawFile(path) if frame_format == "raw" else _EncodedFile(path)


class _RawWriter:
    def __init__(self, path: Path, n: int, height: int, width: int) -> None:
        self._path, self._written = path, 0
        self._out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, height, width, 3))

    def append(self, frames: np.ndarray) -> None:
        self._out[self._written:self._written + len(frames)] = frames
        self._written += len(frames)

    def finish(self) -> None:
        if self._written != len(self._out):
            raise DataError(f"a frame cache entry must receive {len(self._out)} frames, but got {self._written}")
        self._out.flush()
        del self._out

    def abort(self) -> None:
        self.__dict__.pop("_out", None)


class _EncodedWriter:
    def __init__(self, path: Path, codec: str, quality: int, n: int, height: int, width: int) -> None:
        self._codec, self._quality, self._shape = codec, quality, (height, width, 3)
        self._offsets = np.zeros(n + 1, dtype="<i8")
        self._written = 0
        self._file = open(path, "wb")
        # The offset table is written last (it is known only then); its room is reserved here.
        self._file.write(_HEADER.pack(_MAGIC, codec.encode(), height, width, 0, n))
        self._file.write(self._offsets.tobytes())
        self._offsets[0] = self._file.tell()

    def append(self, frames: np.ndarray) -> None:
        if frames.shape[1:] != self._shape or self._written + len(frames) >= len(self._offsets):
            raise DataError(f"frames appended to a frame cache entry must be (T, {', '.join(map(str, self._shape))}) "
                            f"and at most {len(self._offsets) - 1} in all, but got {frames.shape} after "
                            f"{self._written}")
        for blob in encode_frames(frames, self._codec, self._quality):
            self._file.write(blob)
            self._offsets[self._written + 1] = self._offsets[self._written] + len(blob)
            self._written += 1

    def finish(self) -> None:
        if self._written != len(self._offsets) - 1:
            raise DataError(f"a frame cache entry must receive {len(self._offsets) - 1} frames, but got "
                            f"{self._written}")
        self._file.seek(_HEADER.size)
        self._file.write(self._offsets.tobytes())
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def open_frame_writer(path: Path, frame_format: str, quality: int, n: int, height: int, width: int) -> FrameWriter:
    """A new entry of `n` frames at `path` (a temporary name: the caller renames it when finished)."""
    if frame_format == "raw":
        return _RawWriter(path, n, height, width)
    return _EncodedWriter(path, frame_format, quality, n, height, width)

from __future__ import annotations

import pickle
import sys
from fractions import Fraction
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from harness.data.readers import (
    DecordReader,
    FrameFolderReader,
    PyAVReader,
    TorchCodecReader,
    make_reader,
    resolve_backend,
)
from harness.errors import DataError

# Mean |diff| (0..255) of each backend's resized frames against decord's. Measured on these 32x32
# videos (where decord itself resizes 24 and 48 with PIL): PyAV 2.0-3.2, torchcodec 0.3-2.3, PIL 0-2.4;
# on 480p/720p videos resized to 224 (bench/decode_backends.py): PyAV ~0.45, torchcodec ~2.2-3.0.
# At native size every video backend returns decord's frames exactly.
RESIZE_TOLERANCE = {"pyav": 3.5, "torchcodec": 3.5, "frames": 4.0}


def _video_reader(backend: str):
    """The backend's reader, or a skip where torchcodec (optional, needs FFmpeg's libraries) is not usable."""
    try:
        return make_reader(backend)
    except DataError as error:
        if backend == "torchcodec":
            pytest.skip(str(error))
        raise


@pytest.fixture(scope="module")
def wide_video(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 64x48 h264 video (B-frames, keyframe every 10 frames), so native size is not square and seeks matter."""
    import av

    path = tmp_path_factory.mktemp("wide") / "wide.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "10", "bf": "2", "preset": "fast", "threads": "1"}
        for _ in range(40):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture
def video_and_frames(synthetic_root: Path, tmp_path: Path) -> tuple[str, str, np.ndarray]:
    """A 32x32 synthetic video, its frames extracted to PNG by decord, and those frames (F, 32, 32, 3)."""
    video = synthetic_root / "original_sequences/youtube/c23/videos/002.mp4"
    frames = decord.VideoReader(str(video)).get_batch(list(range(24))).asnumpy()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{i:04d}.png")
    return str(video), str(tmp_path), frames


def test_both_backends_give_the_same_frames_at_native_size(video_and_frames) -> None:
    video, folder, frames = video_and_frames
    indices = np.array([5, 0, 5, 23, 12, 12])
    from_video = DecordReader().read(video, indices, 32)
    from_folder = FrameFolderReader().read(folder, indices, 32)
    assert from_video.dtype == np.uint8 and from_video.shape == (6, 32, 32, 3)
    assert np.array_equal(from_video, frames[indices])  # unique-then-expand keeps order and repeats
    assert np.array_equal(from_folder, from_video)


@pytest.mark.parametrize("backend", ["pyav", "torchcodec"])
def test_video_backends_give_decords_frames_at_native_size(video_and_frames, backend: str) -> None:
    video, _, frames = video_and_frames
    indices = np.array([5, 0, 5, 23, 12, 12])
    got = _video_reader(backend).read(video, indices, None)
    assert got.dtype == np.uint8 and np.array_equal(got, frames[indices])


@pytest.mark.parametrize("size", [24, 48, 64])  # 24 and 48 hit decord's stride quirk from 32x32 (fallback path)
@pytest.mark.parametrize("backend", ["pyav", "torchcodec", "frames"])
def test_backends_resize_like_decord(video_and_frames, size: int, backend: str) -> None:
    video, folder, _ = video_and_frames
    indices = np.arange(0, 24, 3)
    from_decord = DecordReader().read(video, indices, size).astype(int)
    other = _video_reader(backend).read(folder if backend == "frames" else video, indices, size).astype(int)
    assert from_decord.shape == other.shape == (8, size, size, 3)
    # decord scales in YUV inside the decoder, the others partly in RGB: close, not equal.
    assert np.abs(from_decord - other).mean() < RESIZE_TOLERANCE[backend]


@pytest.mark.parametrize("backend", ["decord", "pyav", "torchcodec"])
def test_size_none_gives_native_frames_and_seeks_land_on_the_frame_asked(wide_video: str, backend: str) -> None:
    reference = decord.VideoReader(wide_video).get_batch(list(range(40))).asnumpy()  # (40, 48, 64, 3)
    reader = _video_reader(backend)
    for indices in ([39, 3, 17], [0, 1, 2], [25, 31, 38], [8, 8, 30]):  # backward, forward and past keyframes
        got = reader.read(wide_video, np.array(indices), None)
        assert got.shape == (3, 48, 64, 3) and np.array_equal(got, reference[indices])
    chunks = np.concatenate([reader.read(wide_video, np.arange(s, s + 8), None) for s in range(0, 40, 8)])
    assert np.array_equal(chunks, reference)  # consecutive chunks, as the frame cache reads them


def test_size_none_keeps_native_frames_in_folders(video_and_frames) -> None:
    _, folder, frames = video_and_frames
    assert np.array_equal(FrameFolderReader().read(folder, np.array([3, 1]), None), frames[[3, 1]])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_readers_survive_pickling_for_spawned_workers(video_and_frames, backend: str) -> None:
    video, _, frames = video_and_frames
    reader = make_reader(backend)
    reader.read(video, np.array([0]), 32)
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(clone.read(video, np.array([1]), 32)[0], frames[1])


@pytest.mark.parametrize(("backend", "name"), [("decord", "decord"), ("pyav", "PyAV"), ("torchcodec", "torchcodec")])
def test_a_broken_video_raises_a_data_error(tmp_path: Path, backend: str, name: str) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    with pytest.raises(DataError, match=f"bad.mp4 must decode, but {name} failed"):
        _video_reader(backend).read(str(tmp_path / "bad.mp4"), np.array([0]), 32)


def test_a_frame_past_the_end_raises_a_data_error(video_and_frames) -> None:
    video, _, _ = video_and_frames
    with pytest.raises(DataError, match="002.mp4 must decode, but PyAV failed: frames end at 23"):
        PyAVReader().read(video, np.array([3, 30]), None)


def test_make_reader_lists_the_choices() -> None:
    assert isinstance(make_reader("decord"), DecordReader)
    assert isinstance(make_reader("pyav"), PyAVReader)
    assert isinstance(make_reader("frames"), FrameFolderReader)
    assert resolve_backend("auto") == "decord" and isinstance(make_reader("auto"), DecordReader)
    with pytest.raises(DataError, match=r"data.backend must be one of auto, decord, pyav, torchcodec, frames, but got 'opencv'"):
        make_reader("opencv")


def test_auto_falls_back_to_pyav_without_decord(monkeypatch: pytest.MonkeyPatch, video_and_frames) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now fails, as where it has no wheel
    assert resolve_backend("auto") == "pyav"
    reader = make_reader("auto")
    assert isinstance(reader, PyAVReader)
    video, _, frames = video_and_frames
    assert np.array_equal(reader.read(video, np.array([2]), None), frames[[2]])
    with pytest.raises(DataError, match=r"^data.backend=decord needs the decord package, but it is not installed .*set data.backend=pyav"):
        make_reader("decord")


def test_torchcodec_missing_names_the_backend_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("torchcodec", "torchcodec._core"):  # as if not installed, even after an earlier import
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(DataError, match=r"data.backend=torchcodec needs torchcodec .*pip install torchcodec"):
        TorchCodecReader()

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import decord
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.config.schema import FFPP_METHODS, DataConfig, SyntheticConfig
from harness.data.index import MANIFEST_COLUMNS, build_manifest, index_ffpp, probe_video, read_manifest_csv, write_manifest
from harness.data.synth import generate_synthetic
from harness.errors import DataError

REAL_DIR = "original_sequences/youtube/c23/videos"


@pytest.fixture
def tree(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session tree as generated, free to break.

    Without the manifest and frame caches other tests' runs left in the session tree: which of them
    ran first depends on the order (and on pytest-xdist's split), and a cached index changes what
    these tests see.
    """
    return Path(shutil.copytree(synthetic_root, tmp_path / "ffpp", ignore=shutil.ignore_patterns(".harness_*")))


def _splits(root: Path) -> dict[str, list[list[str]]]:
    return {s: json.loads((root / "splits" / f"{s}.json").read_text()) for s in ("train", "val", "test")}


def test_index_labels_splits_and_ids(synthetic_root: Path) -> None:
    result = index_ffpp(synthetic_root, FFPP_METHODS, progress=False)
    df = result.manifest
    assert list(df.columns) == MANIFEST_COLUMNS and result.skipped == []
    assert len(df) == 36 and df["label"].sum() == 30  # 6 reals, 5 x 6 fakes
    assert df["video_id"].is_unique
    # The same target_source pair in two methods stays two videos.
    assert "youtube/000" in set(df.video_id)
    assert df.loc[df.method == "Deepfakes", "video_id"].str.split("/").str[1].tolist() == \
        df.loc[df.method == "FaceSwap", "video_id"].str.split("/").str[1].tolist()
    assert (df["n_frames"] == 24).all() and (df["fps"] == 12.0).all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    id_split = {v: s for s, pairs in _splits(synthetic_root).items() for pair in pairs for v in pair}
    reals = df[df.label == 0]
    assert (reals["method"] == "real").all() and (reals["source_id"] == reals["target_id"]).all()
    assert [id_split[v] for v in reals["target_id"]] == reals["split"].tolist()
    fakes = df[df.label == 1]
    stems = fakes["video_id"].str.split("/").str[1]
    assert (stems == fakes["target_id"] + "_" + fakes["source_id"]).all()
    assert (fakes["split"] == fakes["target_id"].map(id_split)).all()
    assert (fakes["split"] == fakes["source_id"].map(id_split)).all()
    for split in ("train", "val", "test"):
        assert set(df.loc[df.split == split, "label"]) == {0, 1}


def test_bad_files_are_skipped_with_one_warning_each(tree: Path, capsys: pytest.CaptureFixture) -> None:
    real_dir = tree / REAL_DIR
    (real_dir / "000.mp4").write_bytes(b"")  # empty
    data = (real_dir / "001.mp4").read_bytes()
    (real_dir / "001.mp4").write_bytes(data[: len(data) // 2])  # truncated
    short = SyntheticConfig(n_sources=6, frames=5, size=32, burst_frames=2, methods=["Deepfakes"])
    short_root = generate_synthetic(tree.parent / "short", short, progress=False)
    shutil.copy(short_root / REAL_DIR / "002.mp4", real_dir / "002.mp4")  # 5 frames < min_frames 8
    (real_dir / "999.mp4").write_bytes((real_dir / "003.mp4").read_bytes())  # in no split

    result = index_ffpp(tree, FFPP_METHODS, min_frames=8, progress=False)

    err = capsys.readouterr().err.strip().splitlines()
    reasons = {Path(p).name: r for p, r in result.skipped}
    assert set(reasons) == {"000.mp4", "001.mp4", "002.mp4", "999.mp4"}
    assert reasons["000.mp4"].startswith("unreadable") and reasons["001.mp4"].startswith("unreadable")
    assert reasons["002.mp4"] == "too short: 5 frames < min_frames=8"
    assert len([line for line in err if line.startswith("warning: skipping")]) == 4
    assert err[-1].startswith("warning: skipped 4 of 37 videos: ")
    df = result.manifest
    assert len(df) == 33 and set(df.loc[df.label == 0, "target_id"]) == {"003", "004", "005"}
    assert df["label"].sum() == 30  # every fake still indexed


def test_a_fake_split_apart_from_its_real_video_is_refused(tree: Path) -> None:
    splits = _splits(tree)
    (a, b), (c, d) = splits["train"][0], splits["val"][0]
    splits["train"][0], splits["val"][0] = [a, c], [b, d]  # fake a_b now spans train (a) and val (b)
    for name, pairs in splits.items():
        (tree / "splits" / f"{name}.json").write_text(json.dumps(pairs))
    with pytest.raises(DataError) as info:
        index_ffpp(tree, ["Deepfakes"], progress=False)
    message = str(info.value)
    assert f"Deepfakes/c23/videos/{a}_{b}.mp4" in message and f"{REAL_DIR}/{b}.mp4" in message
    assert "must share a split" in message


def test_an_id_in_two_split_files_is_refused(tree: Path) -> None:
    splits = _splits(tree)
    splits["val"].append(list(splits["train"][0]))
    (tree / "splits" / "val.json").write_text(json.dumps(splits["val"]))
    with pytest.raises(DataError, match="must sit in one split file, but it is in both"):
        index_ffpp(tree, ["Deepfakes"], progress=False)


def test_missing_root_or_splits_say_how_to_fix(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(DataError, match="does not exist; download FF"):
        index_ffpp(tmp_path / "nowhere", FFPP_METHODS, progress=False)
    shutil.rmtree(tree / "splits")
    with pytest.raises(DataError, match=r"copy them from the FaceForensics repository \(dataset/splits\)"):
        index_ffpp(tree, FFPP_METHODS, progress=False)


def test_frame_folder_layout(tree: Path) -> None:
    for video in sorted((tree / REAL_DIR).glob("*.mp4"))[:3] + sorted((tree / "manipulated_sequences/FaceSwap/c23/videos").glob("*.mp4")):
        folder = video.parent.parent / "images" / video.stem
        folder.mkdir(parents=True)
        frames = decord.VideoReader(str(video)).get_batch(list(range(10))).asnumpy()
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{i:04d}.png")
    (tree / REAL_DIR.replace("videos", "images") / "000" / "fps.txt").write_text("30\n")
    result = index_ffpp(tree, ["FaceSwap"], backend="frames", progress=False)
    df = result.manifest.set_index("video_id")
    assert len(df) == 9 and (df["n_frames"] == 10).all()
    assert df.loc["youtube/000", "fps"] == 30.0 and df.loc["youtube/001", "fps"] == 25.0
    assert Path(df.loc["youtube/000", "path"]).is_dir()


def test_manifest_cache_is_reused_until_a_file_changes(tree: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = DataConfig(source="ffpp", root=tree, methods=["Deepfakes"])
    first = build_manifest(cfg, progress=False)
    caches = list(tree.glob(".harness_manifest_*.csv"))
    assert len(caches) == 1
    second = build_manifest(cfg, progress=False)
    pd.testing.assert_frame_equal(first, second)
    (tree / REAL_DIR / "000.mp4").write_bytes(b"")  # changes size and mtime: the key changes
    third = build_manifest(cfg, progress=False)
    assert len(third) == len(first) - 1 and len(list(tree.glob(".harness_manifest_*.csv"))) == 2
    capsys.readouterr()
    build_manifest(cfg, progress=False)
    assert "skipped 1 videos (cached index" in capsys.readouterr().err


def test_read_manifest_csv_fills_columns_and_skips_bad_files(synthetic_root: Path, tmp_path: Path) -> None:
    video = synthetic_root / REAL_DIR / "000.mp4"
    shutil.copy(video, tmp_path / "a.mp4")
    (tmp_path / "clips").mkdir()
    shutil.copy(video, tmp_path / "clips" / "b.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    csv = tmp_path / "list.csv"
    pd.DataFrame({"path": ["a.mp4", str(tmp_path / "clips/b.mp4"), "broken.mp4"], "label": ["0", "fake", "1"],
                  "split": ["train", "val", "test"]}).to_csv(csv, index=False)
    df = read_manifest_csv(csv, progress=False)
    assert list(df.columns) == MANIFEST_COLUMNS
    assert df["video_id"].tolist() == [f"{tmp_path.name}/a", "clips/b"]
    assert df["label"].tolist() == [0, 1] and df["method"].tolist() == ["real", "fake"]
    assert df["path"].tolist() == [str(tmp_path / "a.mp4"), str(tmp_path / "clips/b.mp4")]
    assert (df["n_frames"] == 24).all() and (df["fps"] == 12.0).all()
    write_manifest(df, tmp_path / "out.csv")
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == [0, 1]


@pytest.mark.parametrize(("column", "value", "match"), [
    ("label", "2", r"row 3: label must be 0/1 \(or real/fake\), but got '2'"),
    ("split", "dev", r"row 3: split must be one of train, val, test, but got 'dev'"),
])
def test_read_manifest_csv_refuses_bad_rows(tmp_path: Path, column: str, value: str, match: str) -> None:
    rows = pd.DataFrame({"path": ["a.mp4", "b.mp4"], "label": ["0", "1"], "split": ["train", "test"]})
    rows.loc[1, column] = value
    rows.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=match):
        read_manifest_csv(tmp_path / "m.csv", progress=False)


def test_build_manifest_dispatches_on_source(synthetic_root: Path, small_synthetic_config: SyntheticConfig, tmp_path: Path) -> None:
    cfg = DataConfig(source="synthetic", root=tmp_path / "syn", synthetic=small_synthetic_config.model_copy(update={"methods": ["Face2Face"]}))
    df = build_manifest(cfg, progress=False)
    assert sorted(df["method"].unique()) == ["Face2Face", "real"] and len(df) == 12
    csv = tmp_path / "m.csv"
    pd.DataFrame({"path": [df.path[0]], "label": [0], "split": ["train"]}).to_csv(csv, index=False)
    assert len(build_manifest(DataConfig(source="csv", manifest=csv), progress=False)) == 1
    assert np.array_equal(build_manifest(DataConfig(source="ffpp", root=synthetic_root, methods=["Deepfakes"]), progress=False)["label"].value_counts().sort_index().to_numpy(), [6, 6])


def _csv_rows(tmp_path: Path, synthetic_root: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    """A CSV of real files (copies of one synthetic video) with path,label,split,source_id,target_id."""
    video = synthetic_root / REAL_DIR / "000.mp4"
    for name, *_ in rows:
        shutil.copy(video, tmp_path / name)
    csv = tmp_path / "ids.csv"
    pd.DataFrame(rows, columns=["path", "label", "split", "source_id", "target_id"]).to_csv(csv, index=False)
    return csv


def test_read_manifest_csv_refuses_an_identity_in_two_splits(synthetic_root: Path, tmp_path: Path) -> None:
    csv = _csv_rows(tmp_path, synthetic_root, [
        ("alice.mp4", "0", "train", "alice", "alice"),
        ("bob.mp4", "0", "val", "bob", "bob"),
        ("bob_alice.mp4", "1", "val", "alice", "bob"),  # alice's face, already trained on, scored in val
    ])
    with pytest.raises(DataError) as info:
        read_manifest_csv(csv, progress=False)
    message = str(info.value)
    assert "must share a split" in message and str(tmp_path / "bob_alice.mp4") in message
    assert "is in val and shows alice" in message and f"which {csv} row 2 ({tmp_path / 'alice.mp4'}) puts in train" in message
    assert len(info.value.problems) == 1  # bob's identity stays in val: one leak only


def test_read_manifest_csv_accepts_identities_kept_in_one_split(synthetic_root: Path, tmp_path: Path) -> None:
    csv = _csv_rows(tmp_path, synthetic_root, [
        ("alice.mp4", "0", "train", "alice", "alice"),
        ("bob.mp4", "0", "train", "bob", "bob"),
        ("bob_alice.mp4", "1", "train", "alice", "bob"),
        ("carol.mp4", "0", "val", "carol", "carol"),
        ("dan.mp4", "0", "test", "", ""),  # no ids given: nothing to check
    ])
    df = read_manifest_csv(csv, progress=False)
    assert df["split"].tolist() == ["train", "train", "train", "val", "test"]
    assert df["source_id"].tolist() == ["alice", "bob", "alice", "carol", "dan"]


def _write_tiny_video(path: Path, rate: Fraction, frames: int, options: dict | None = None) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4", options=options or {}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for t in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), 8 * t, np.uint8), format="rgb24")))
        container.mux(stream.encode())


def test_metadata_probe_gives_what_decoding_counts(synthetic_root: Path, tmp_path: Path) -> None:
    videos = sorted(synthetic_root.glob("*_sequences/**/*.mp4"))
    ntsc = tmp_path / "ntsc.mp4"
    _write_tiny_video(ntsc, Fraction(30000, 1001), 17)
    for video in videos[:4] + videos[-4:] + [ntsc]:
        decoded = decord.VideoReader(str(video))
        assert probe_video(video) == (len(decoded), decoded.get_avg_fps())


def test_a_truncated_video_with_its_header_first_is_skipped(tmp_path: Path) -> None:
    video = tmp_path / "faststart.mp4"
    _write_tiny_video(video, Fraction(25), 30, {"movflags": "faststart"})  # sample table before the data
    assert probe_video(video) == (30, 25.0)
    data = video.read_bytes()
    for cut in (1, len(data) // 3):  # the last frame cut short, or most of the data gone
        video.write_bytes(data[:-cut])
        with pytest.raises(ValueError, match="truncated"):
            probe_video(video)


def _partial_tree(tree: Path) -> Path:
    """The tree with 3 of the 5 methods: NeuralTextures removed, FaceShifter an empty folder."""
    shutil.rmtree(tree / "manipulated_sequences" / "NeuralTextures")
    for video in (tree / "manipulated_sequences" / "FaceShifter" / "c23" / "videos").glob("*.mp4"):
        video.unlink()
    return tree


def test_a_partial_download_indexes_the_methods_present(tree: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    _partial_tree(tree)
    result = index_ffpp(tree, None, progress=False)
    assert sorted(result.manifest["method"].unique()) == ["Deepfakes", "Face2Face", "FaceSwap", "real"]
    assert len(result.manifest) == 6 + 3 * 6
    assert "indexing methods present: Deepfakes, Face2Face, FaceSwap" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"NeuralTextures/c23/videos must hold the videos of method NeuralTextures \(data.methods\), but it is missing"):
        index_ffpp(tree, ["Deepfakes", "NeuralTextures"], progress=False)
    with pytest.raises(DataError, match=r"FaceShifter/c23/videos must hold the videos of method FaceShifter \(data.methods\), but it is empty"):
        index_ffpp(tree, ["FaceShifter"], progress=False)
    with pytest.raises(DataError, match=r"manipulated_sequences must hold at least one method folder with <Method>/c40/videos"):
        index_ffpp(tree, None, compression="c40", progress=False)
    out = tree.parent / "manifest.csv"
    assert main(["index", "--root", str(tree), "--out", str(out), "--backend", "pyav"]) == 0
    assert "indexing methods present: Deepfakes, Face2Face, FaceSwap" in capsys.readouterr().err
    assert sorted(pd.read_csv(out)["method"].unique()) == ["Deepfakes", "Face2Face", "FaceSwap", "real"]


def test_a_method_downloaded_later_is_indexed_when_methods_is_null(tree: Path, synthetic_root: Path) -> None:
    cfg = DataConfig(source="ffpp", root=_partial_tree(tree), methods=None, backend="pyav")
    assert len(build_manifest(cfg, progress=False)) == 24
    shutil.copytree(synthetic_root / "manipulated_sequences" / "NeuralTextures", tree / "manipulated_sequences" / "NeuralTextures")
    df = build_manifest(cfg, progress=False)
    assert len(df) == 30 and "NeuralTextures" in set(df["method"])  # a new key, not the 24-video cache


def test_a_real_download_s_extra_folders_and_macos_litter_are_left_out(tree: Path, capsys: pytest.CaptureFixture) -> None:
    # FF++'s download script also fetches DeepFakeDetection (actor videos, other names); a copy made on a
    # Mac leaves "._NNN.mp4" resource forks and .DS_Store files beside the videos.
    dfd = tree / "manipulated_sequences" / "DeepFakeDetection" / "c23" / "videos"
    dfd.mkdir(parents=True)
    (dfd / "01_02__exit_phone_room__YVGY8LOK.mp4").write_bytes(b"\0" * 64)
    real = tree / "original_sequences" / "youtube" / "c23" / "videos"
    (real / "._000.mp4").write_bytes(b"\0" * 64)
    (real / ".DS_Store").write_bytes(b"\0" * 64)
    result = index_ffpp(tree, None, progress=False)
    err = capsys.readouterr().err
    assert "not indexing DeepFakeDetection" in err and "name it in data.methods" in err
    assert "DeepFakeDetection" not in set(result.manifest["method"])
    assert result.skipped == [] and len(result.manifest) == 6 + 5 * 6


def test_harness_index_refuses_an_unknown_backend_with_exit_2(tree: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    assert main(["index", "--root", str(tree), "--out", str(tree.parent / "m.csv"), "--backend", "ffmpeg"]) == 2
    assert "--backend must be one of auto, decord, pyav, torchcodec, frames, but got 'ffmpeg'" in capsys.readouterr().err
    assert not (tree.parent / "m.csv").exists()

"""Face crops: tracks from detections, and crops that follow a real face in real decoded videos."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.config.schema import DataConfig, FaceConfig
from harness.data.face_tracks import box_iou, link_tracks, pick_track, smooth_track, square_crop_boxes

pytest.importorskip("dlib", reason="the face extra (pip install -e '.[faces]') brings dlib")
pytest.importorskip("skimage", reason="the face extra (pip install -e '.[faces]') brings scikit-image")

from harness.data.face_crops import FaceCropReader, face_box_store_for, reader_for, write_face_boxes_csv  # noqa: E402
from harness.data.face_synth import face_video, head_image, write_video  # noqa: E402
from harness.data.readers import make_reader  # noqa: E402
from harness.errors import DataError  # noqa: E402


def box(x0: float, y0: float, side: float, score: float = 1.0) -> np.ndarray:
    return np.array([x0, y0, x0 + side, y0 + side, score], dtype=np.float32)


def test_pick_track_keeps_the_large_steady_face_over_flicker_and_one_off_boxes() -> None:
    detections = []
    for s in range(10):
        boxes = [box(100 + 3 * s, 50, 80)]  # the subject, drifting right
        if s % 3 == 0:
            boxes.append(box(400, 300, 40))  # a small face-like patch that flickers
        if s == 5:
            boxes.append(box(200, 200, 150))  # one big false box, in one frame only
        detections.append(np.stack(boxes))
    tracks = link_tracks(detections)
    subject = pick_track(tracks)
    assert sorted(subject.boxes) == list(range(10))
    assert all(subject.boxes[s][0] == 100 + 3 * s for s in range(10))
    assert pick_track([]) is None


def test_link_tracks_does_not_merge_a_face_that_leaves_with_one_that_comes_later() -> None:
    detections = [np.stack([box(100, 100, 80)])] * 3 + [np.zeros((0, 5), np.float32)] * 5 + [np.stack([box(105, 100, 80)])] * 2
    assert sorted(len(t.boxes) for t in link_tracks(detections, max_gap=3)) == [2, 3]


def test_smooth_track_fills_missed_samples_and_interpolates_between_them() -> None:
    samples = np.arange(0, 40, 4)  # detect_every 4, 40 frames
    track = link_tracks([np.stack([box(10 + 2 * f, 20, 60 + f)]) for f in samples])[0]
    del track.boxes[4]  # the detector missed sample 4 (frame 16)
    boxes, scores = smooth_track(track, samples, 40, window=5)
    # Motion and growth are linear, so filling, a centred average and interpolation all reproduce them.
    expected = np.stack([box(10 + 2 * f, 20, 60 + f)[:4] for f in range(37)])
    np.testing.assert_allclose(boxes[:37], expected, atol=1e-3)
    np.testing.assert_allclose(boxes[37:], np.repeat(boxes[36:37], 3, axis=0), atol=1e-3)  # after the last sample: held
    assert np.isnan(scores[16]) and np.isnan(scores[15]) and scores[0] == 1.0 and scores[20] == 1.0


def test_square_crop_boxes_keep_the_face_scale_and_stay_inside_the_frame() -> None:
    faces = np.array([[100, 100, 200, 180], [-20, 5, 60, 85], [600, 400, 639, 479], [0, 0, 900, 900]], dtype=float)
    squares = square_crop_boxes(faces, 1.3, 640, 480)
    sides = squares[:, 2] - squares[:, 0]
    assert (sides == squares[:, 3] - squares[:, 1]).all()
    assert list(sides) == [130, 104, 103, 480]
    assert (squares[:, :2] >= 0).all() and (squares[:, 2] <= 640).all() and (squares[:, 3] <= 480).all()
    assert tuple(squares[0]) == (85, 75, 215, 205)  # centred on the face where the frame allows


@pytest.mark.parametrize("detector", ["dlib_hog", "opencv_haar"])
def test_each_detector_finds_the_astronaut_and_nothing_on_an_empty_frame(detector: str) -> None:
    from harness.data.face_detectors import detect_faces, make_detector

    frames, truth = face_video(head_image(), 1, 640, 480, np.random.default_rng(3), scale=(1.4, 1.5))
    cfg = FaceConfig(detector=detector)
    boxes = detect_faces(make_detector(cfg), frames[0], cfg)
    assert len(boxes) == 1 and box_iou(boxes, truth).item() >= 0.5
    empty = np.full_like(frames[0], 128)
    assert len(detect_faces(make_detector(cfg), empty, cfg)) == 0


def _face_clip(tmp_path: Path, name: str, n_frames: int = 32, hide: slice | None = None, seed: int = 1) -> tuple[str, np.ndarray]:
    frames, truth = face_video(head_image(), n_frames, 480, 360, np.random.default_rng(seed))
    if hide is not None:
        frames[hide] = frames[hide].mean(axis=(1, 2), keepdims=True).astype(np.uint8)  # no face in these frames
    path = tmp_path / f"{name}.mp4"
    write_video(path, frames, 25.0)
    return str(path), truth


def _data_cfg(tmp_path: Path, **face: object) -> DataConfig:
    return DataConfig(root=tmp_path, face_crop=True, input_size=112, face=FaceConfig(**face))


def test_face_crops_follow_a_real_face_in_a_decoded_video(tmp_path: Path) -> None:
    path, truth = _face_clip(tmp_path, "moving")
    cfg = _data_cfg(tmp_path)
    reader = reader_for(cfg, {path: len(truth)})
    assert isinstance(reader, FaceCropReader)
    faces = reader.faces(path)
    assert faces.detected_fraction == 1.0 and faces.boxes.shape == (len(truth), 4)
    got = square_crop_boxes(faces.boxes, cfg.face.margin, 480, 360)
    want = square_crop_boxes(truth, cfg.face.margin, 480, 360)
    iou = box_iou(got, want).diagonal()
    assert iou.min() >= 0.7, iou.round(2)
    # The crops are what the trainer reads: the decoded frame cut at the square and resized.
    indices = np.array([0, 9, 9, 31])
    crops = reader.read(path, indices, 112)
    full = make_reader(cfg.backend).read(path, indices, None)
    assert crops.shape == (4, 112, 112, 3) and crops.dtype == np.uint8
    x0, y0, x1, y1 = got[9]
    expected = np.asarray(Image.fromarray(full[1][y0:y1, x0:x1]).resize((112, 112), Image.Resampling.BILINEAR))
    assert np.abs(crops[1].astype(int) - expected.astype(int)).mean() < 2.0
    np.testing.assert_array_equal(crops[1], crops[2])


def test_with_two_faces_the_crop_follows_the_larger_steady_one(tmp_path: Path) -> None:
    frames, truth = face_video(head_image(), 24, 640, 360, np.random.default_rng(2), scale=(1.0, 1.1))
    # A second, smaller person stands still at the side the subject is not on.
    small = np.asarray(Image.fromarray(head_image()[:, ::-1]).resize((161, 175), Image.Resampling.BILINEAR))
    x0 = 640 - 161 if truth[:, 0].mean() < 320 else 0
    frames[:, 185:360, x0:x0 + 161] = small
    path = tmp_path / "two.mp4"
    write_video(path, frames, 25.0)
    cfg = _data_cfg(tmp_path)
    faces = reader_for(cfg, {str(path): 24}).faces(str(path))
    got = square_crop_boxes(faces.boxes, cfg.face.margin, 640, 360)
    want = square_crop_boxes(truth, cfg.face.margin, 640, 360)
    assert box_iou(got, want).diagonal().min() >= 0.7


def test_frames_without_a_face_are_filled_from_the_track(tmp_path: Path) -> None:
    path, truth = _face_clip(tmp_path, "gap", hide=slice(11, 15))  # detection frame 12 sees no face
    faces = reader_for(_data_cfg(tmp_path), {path: len(truth)}).faces(path)
    assert faces.detected_fraction == 8 / 9  # frames 0, 4, ..., 28 and the last, 31
    # A frame's score is its nearest detection frame's: empty around frame 12, whose box is filled.
    assert np.isnan(faces.scores[11:14]).all() and not np.isnan(np.delete(faces.scores, [11, 12, 13])).any()
    iou = box_iou(faces.boxes[11:15], truth[11:15]).diagonal()
    assert iou.min() >= 0.5, iou  # the face did not move far while hidden: the track carries it


def test_a_video_without_a_face_fails_every_read_with_the_key_to_change(tmp_path: Path) -> None:
    path, truth = _face_clip(tmp_path, "empty", hide=slice(None))
    reader = reader_for(_data_cfg(tmp_path), {path: len(truth)})
    with pytest.raises(DataError, match="data.face.min_detected_fraction"):
        reader.read(path, np.arange(8), 112)
    # Remembered: a second reader (another worker, a later run) does not run the detector again.
    again = FaceCropReader(make_reader("auto"), face_box_store_for(_data_cfg(tmp_path)), {})
    assert not again.faces(path).found


def test_face_boxes_csv_has_one_row_per_frame_in_original_pixels(tmp_path: Path) -> None:
    path, truth = _face_clip(tmp_path, "csv", n_frames=16)
    empty, _ = _face_clip(tmp_path, "noface", n_frames=16, hide=slice(None))
    cfg = _data_cfg(tmp_path)
    reader = reader_for(cfg, {path: 16, empty: 16})
    reader.faces(path), reader.faces(empty)
    manifest = pd.DataFrame({"video_id": ["real/csv", "real/noface"], "path": [path, empty]})
    written = write_face_boxes_csv(manifest, face_box_store_for(cfg), tmp_path / "face_boxes.csv")
    table = pd.read_csv(tmp_path / "face_boxes.csv")
    assert written == 1
    assert list(table.columns) == ["video_id", "frame", "x0", "y0", "x1", "y1", "score"]
    assert (table["video_id"] == "real/csv").all() and list(table["frame"]) == list(range(16))
    assert box_iou(table[["x0", "y0", "x1", "y1"]].to_numpy(), truth).diagonal().min() >= 0.5


@pytest.mark.slow
def test_cache_then_train_on_a_real_face_ffpp_tree(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    """The README's real-data path on a generated FF++ tree of real-face videos: crops, boxes, a logged run."""
    from mlflow import MlflowClient

    from harness.cli import main
    from harness.data.face_synth import generate_face_tree

    root = generate_face_tree(tmp_path / "ffpp", n_sources=6, methods=("Deepfakes",), n_frames=16)
    # One training fake shows no face: it must be skipped, warned about and counted, not crash anything.
    a, b = json.loads((root / "splits" / "train.json").read_text())[0]
    faceless = root / "manipulated_sequences" / "Deepfakes" / "c23" / "videos" / f"{a}_{b}.mp4"
    frames, _ = face_video(head_image(), 16, 480, 360, np.random.default_rng(0))
    write_video(faceless, np.broadcast_to(frames.mean(axis=(1, 2), keepdims=True).astype(np.uint8), frames.shape), 25.0)
    monkeypatch.chdir(tmp_path)
    sets = [f"data.root={root}", "data.face_crop=true", "data.input_size=64", "data.num_workers=0",
            "data.clips_per_video_eval=1", "train.epochs=1", "train.batch_size=4", f"train.output_dir={tmp_path / 'runs'}",
            "data.max_bad_fraction=0.25"]  # the faceless fake is 1 of the 4 training videos
    config = ["--config", str(Path(__file__).resolve().parents[1] / "baseline.yaml")]
    overrides = [arg for item in sets for arg in ("--set", item)]
    # Two builders (this process and a spawned helper) split the videos; each is decoded and cropped once.
    with caplog.at_level(logging.WARNING, logger="harness.data.cache"):
        assert main(["cache", *config, *overrides, "--quiet", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "12 videos (11 decoded now, 0 already cached)" in out and "face boxes" in out
    assert f"1 video(s) failed to decode or showed no face and were left out (training skips them too): {faceless}" in out
    assert [r.getMessage() for r in caplog.records if str(faceless) in r.getMessage()] != []

    boxes = list((root / ".harness_frame_cache").glob("*/face_boxes.csv"))
    assert len(boxes) == 1
    decodes = (boxes[0].parent / "decodes.log").read_text().splitlines()
    assert len(decodes) == 11 and len({line.split("\t")[2] for line in decodes}) == 11
    table = pd.read_csv(boxes[0])
    assert table["video_id"].nunique() == 11 and len(table) == 11 * 16
    assert f"Deepfakes/{a}_{b}" not in set(table["video_id"])
    assert table["video_id"].str.startswith(("youtube/", "Deepfakes/")).all()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", *config, *overrides, "--quiet", "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("harness").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["data.face_crop"] == "True" and "val_video_auc" in run.data.metrics

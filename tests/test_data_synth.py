from __future__ import annotations

import json
import threading
from pathlib import Path

import decord
import numpy as np
import pytest

from harness.config import load_config
from harness.config.schema import FFPP_METHODS, DataConfig, SyntheticConfig
from harness.data.synth import COMPLETE_MARKER, METADATA_FILE, deal_splits, ensure_synthetic, generate_synthetic
from harness.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(small_synthetic_config: SyntheticConfig) -> SyntheticConfig:
    return small_synthetic_config


def _frames(path: Path) -> np.ndarray:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.int16)


def _real(root: Path, video_id: str) -> Path:
    return root / "original_sequences/youtube/c23/videos" / f"{video_id}.mp4"


def _fake(root: Path, method: str, stem: str) -> Path:
    return root / "manipulated_sequences" / method / "c23/videos" / f"{stem}.mp4"


def test_layout_splits_and_imbalance(synthetic_root: Path) -> None:
    reals = sorted(p.stem for p in (synthetic_root / "original_sequences/youtube/c23/videos").glob("*.mp4"))
    assert reals == [f"{i:03d}" for i in range(6)]
    for method in FFPP_METHODS:
        fakes = sorted((synthetic_root / "manipulated_sequences" / method / "c23/videos").glob("*.mp4"))
        assert len(fakes) == len(reals)  # one fake per real per method: 5 methods -> 5:1
    assert (synthetic_root / COMPLETE_MARKER).is_file()
    splits = {s: json.loads((synthetic_root / "splits" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    ids = [v for pairs in splits.values() for pair in pairs for v in pair]
    assert sorted(ids) == reals  # every id in exactly one pair of one split
    assert all(len(pairs) >= 1 for pairs in splits.values())  # both classes in each split
    assert splits == deal_splits(SyntheticConfig(n_sources=6, seed=0))  # the files are the pure function's deal
    vr = decord.VideoReader(str(_real(synthetic_root, "000")))
    assert (len(vr), vr[0].shape, vr.get_avg_fps()) == (24, (32, 32, 3), 12.0)


def test_fake_pairs_follow_split_pairs(synthetic_root: Path) -> None:
    pairs = [p for s in ("train", "val", "test") for p in json.loads((synthetic_root / "splits" / f"{s}.json").read_text())]
    expected = sorted(f"{a}_{b}" for a, b in pairs) + sorted(f"{b}_{a}" for a, b in pairs)
    stems = [p.stem for p in (synthetic_root / "manipulated_sequences/Deepfakes/c23/videos").glob("*.mp4")]
    assert sorted(stems) == sorted(expected)


def test_same_seed_same_frames_other_seed_differs(synthetic_root: Path, tmp_path: Path, small: SyntheticConfig) -> None:
    cfg = small.model_copy(update={"n_sources": 6, "methods": ["Deepfakes"]})
    again = generate_synthetic(tmp_path / "again", cfg, progress=False)
    other = generate_synthetic(tmp_path / "other", cfg.model_copy(update={"seed": 1}), progress=False)
    assert np.array_equal(_frames(_real(again, "003")), _frames(_real(synthetic_root, "003")))
    stem = next((again / "manipulated_sequences/Deepfakes/c23/videos").glob("*.mp4")).stem
    assert np.array_equal(_frames(_fake(again, "Deepfakes", stem)), _frames(_fake(synthetic_root, "Deepfakes", stem)))
    assert not np.array_equal(_frames(_real(other, "003")), _frames(_real(again, "003")))


@pytest.mark.parametrize("method", FFPP_METHODS)
def test_fake_differs_from_its_target_only_in_the_burst(synthetic_root: Path, method: str) -> None:
    bursts = json.loads((synthetic_root / METADATA_FILE).read_text())["bursts"]
    for key, (start, stop) in bursts.items():
        if not key.startswith(method + "/"):
            continue
        stem = key.split("/")[1]
        diff = np.abs(_frames(_fake(synthetic_root, method, stem)) - _frames(_real(synthetic_root, stem[:3])))
        per_frame = diff.mean(axis=(1, 2, 3))  # (F,)
        # Constant-quantiser h264: earlier frames are identical, except B-frames (up to 3) that
        # predict from the burst.
        assert per_frame[: max(0, start - 3)].max(initial=0) == 0
        assert per_frame[:start].max(initial=0) < 2
        # After the burst only the encoder's drift remains (P-frames predict from changed frames).
        assert per_frame[start:stop].mean() > 2 * max(per_frame[stop:].mean() if stop < len(per_frame) else 0, 0.3)
        assert diff[start:stop].max() > 25  # the artefact is there...
        assert per_frame[start:stop].mean() < 12  # ...but stays local to the face


def test_artefact_strength_scales_the_artefact(tmp_path: Path, small: SyntheticConfig) -> None:
    cfg = small.model_copy(update={"methods": ["Deepfakes"]})
    diffs = []
    for strength in (0.2, 1.0):
        root = generate_synthetic(tmp_path / str(strength), cfg.model_copy(update={"artefact_strength": strength}), progress=False)
        stem = "_".join(json.loads((root / "splits/train.json").read_text())[0])
        diffs.append(np.abs(_frames(_fake(root, "Deepfakes", stem)) - _frames(_real(root, stem[:3]))).mean())
    assert diffs[1] > 3 * diffs[0]


def test_odd_or_tiny_configs_are_refused(tmp_path: Path, small: SyntheticConfig) -> None:
    with pytest.raises(DataError, match=r"n_sources must be even and >= 6 .*, but got 5"):
        generate_synthetic(tmp_path, small.model_copy(update={"n_sources": 5}), progress=False)
    # model_copy skips the schema's validators; the generator asks the same rule again.
    with pytest.raises(DataError, match=r"n_sources must leave at least 2 real videos .* but got n_sources=6 with 2 for val and 4"):
        generate_synthetic(tmp_path, small.model_copy(update={"test_sources": 4}), progress=False)
    with pytest.raises(DataError, match="size must be even"):
        generate_synthetic(tmp_path, small.model_copy(update={"size": 33}), progress=False)


def test_ensure_synthetic_generates_once_even_when_racing(tmp_path: Path, capsys: pytest.CaptureFixture, small: SyntheticConfig) -> None:
    cfg = DataConfig(source="synthetic", root=tmp_path / "data", synthetic=small.model_copy(update={"methods": ["FaceSwap"]}))
    threads = [threading.Thread(target=ensure_synthetic, args=(cfg, False)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert capsys.readouterr().err.count("generating the embedded synthetic") == 1
    assert (tmp_path / "data" / COMPLETE_MARKER).is_file()
    stamp = _real(tmp_path / "data", "000").stat().st_mtime_ns
    assert ensure_synthetic(cfg, progress=False) == (tmp_path / "data").resolve()
    assert _real(tmp_path / "data", "000").stat().st_mtime_ns == stamp  # complete: not regenerated


def test_ensure_synthetic_regenerates_half_written_or_changed_tree(tmp_path: Path, capsys: pytest.CaptureFixture, small: SyntheticConfig) -> None:
    cfg = DataConfig(source="synthetic", root=tmp_path, synthetic=small.model_copy(update={"methods": ["FaceSwap"]}))
    ensure_synthetic(cfg, progress=False)
    (tmp_path / COMPLETE_MARKER).unlink()  # as if a run died while generating
    ensure_synthetic(cfg, progress=False)
    changed = cfg.model_copy(update={"synthetic": cfg.synthetic.model_copy(update={"methods": ["Deepfakes"]})})
    ensure_synthetic(changed, progress=False)
    assert capsys.readouterr().err.count("generating") == 3
    assert not (tmp_path / "manipulated_sequences/FaceSwap").exists()  # the stale method is gone
    assert len(list((tmp_path / "manipulated_sequences/Deepfakes/c23/videos").glob("*.mp4"))) == 6


def test_ensure_synthetic_never_deletes_a_foreign_tree(tmp_path: Path, small: SyntheticConfig) -> None:
    (tmp_path / "original_sequences/youtube/c23/videos").mkdir(parents=True)
    cfg = DataConfig(source="synthetic", root=tmp_path, synthetic=small)
    with pytest.raises(DataError, match="point data.root at another folder"):
        ensure_synthetic(cfg, progress=False)
    assert (tmp_path / "original_sequences/youtube/c23/videos").is_dir()


def test_eval_splits_take_the_sources_asked_for_and_train_the_rest() -> None:
    # Unset, val and test take FF++'s 14 % of the pairs each: 36 sources, 18 pairs -> 3 pairs each.
    assert SyntheticConfig(n_sources=36).sources_per_split() == {"train": 24, "val": 6, "test": 6}
    cfg = SyntheticConfig(n_sources=20, val_sources=6, test_sources=4, seed=3)
    splits = deal_splits(cfg)
    sizes = {split: 2 * len(pairs) for split, pairs in splits.items()}
    assert sizes == cfg.sources_per_split() == {"train": 10, "val": 6, "test": 4}
    ids = sorted(v for pairs in splits.values() for pair in pairs for v in pair)
    assert ids == [f"{i:03d}" for i in range(20)]  # every source in exactly one pair of one split
    assert deal_splits(cfg) == splits and deal_splits(cfg.model_copy(update={"seed": 4})) != splits


@pytest.mark.parametrize(("overrides", "match"), [
    (["data.synthetic.val_sources=31"], r"data.synthetic.val_sources must be even .*, but got 31"),
    (["data.synthetic.n_sources=60"], r"data.synthetic.n_sources must leave at least 2 real videos .* but got n_sources=60 "
                                       r"with 30 for val and 30 for test"),
])
def test_eval_source_counts_are_validated_at_load(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config([ROOT / "baseline.yaml", ROOT / "configs/demo.yaml"], overrides)


def test_shipped_demo_holds_30_real_videos_in_val_and_test() -> None:
    cfg = load_config([ROOT / "baseline.yaml", ROOT / "configs/demo.yaml"]).data.synthetic
    reals = {split: sorted(v for pair in pairs for v in pair) for split, pairs in deal_splits(cfg).items()}
    assert len(reals["val"]) >= 30 and len(reals["test"]) >= 30
    assert len(reals["train"]) == 18  # the demo sweep's 10-minute budget pays for the larger eval splits here
    assert not set(reals["val"]) & set(reals["test"]) and not set(reals["train"]) & set(reals["val"] + reals["test"])

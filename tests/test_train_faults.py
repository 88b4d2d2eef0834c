"""The trainer under faults, in process: out-of-memory back-off, its floor, and videos that stop decoding.

The same faults through real `harness` processes are in test_faults.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from harness.config import load_config
from harness.data.cache import build_cache
from harness.data.index import build_manifest
from harness.faults import ENV_VAR, Faults
from harness.errors import ConfigError
from harness.train.trainer import fit
from helpers import ROOT, corrupt_keeping_size_and_mtime, tiny_overrides


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_out_of_memory_mid_epoch_halves_the_batch_and_redoes_the_epoch(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.epochs=2", "data.cache=false"])
    # Two micro-batches an epoch. Failing at the 3rd (epoch 2's first) leaves nothing to undo; failing at
    # the 4th comes after one of epoch 2's optimizer steps, which the redo must undo. Both runs must then
    # train epoch 1 at 8 x 1 and epoch 2 at 4 x 2, identically. (Not equal to a run planned at 4 x 2 from
    # the start: BatchNorm sees half-size batches, so accumulation only keeps the effective batch.)
    monkeypatch.setenv(ENV_VAR, "oom_at_batch=3")
    reference = fit(cfg, run_dir=tmp_path / "at_start", progress=False)
    monkeypatch.setenv(ENV_VAR, "oom_at_batch=4")
    result = fit(cfg, run_dir=tmp_path / "mid_epoch", progress=False)

    assert result.status == reference.status == "completed"
    [event] = result.events
    assert event["kind"] == "oom_backoff" and event["epoch"] == 2
    assert event["micro_batch_size"] == 4 and event["grad_accum_steps"] == 2
    assert "out of memory at micro-batch 8 in epoch 2" in event["message"] and "effective batch 8" in event["message"]
    a, b = _weights(tmp_path / "at_start" / "last.pt"), _weights(tmp_path / "mid_epoch" / "last.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6)
    assert result.history[-1]["val_loss"] == pytest.approx(reference.history[-1]["val_loss"], abs=1e-6)
    assert [h["epoch"] for h in result.train_history] == [1, 2]  # epoch 2 counted once
    state = torch.load(tmp_path / "mid_epoch" / "last.pt", weights_only=True)
    assert state["batching"] == {"batch_size": 4, "grad_accum_steps": 2, "max_train_batches": None}


def test_out_of_memory_at_the_floor_ends_the_run_with_reason_oom(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, "oom_above=1")
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.min_batch_size=4"])
    result = fit(cfg, run_dir=tmp_path / "floor", progress=False)
    assert result.status == "oom"
    assert "out of memory at micro-batch 4 in epoch 1 and train.min_batch_size is 4" in result.reason
    assert [e["micro_batch_size"] for e in result.events] == [4]
    assert result.test_metrics == {}


def test_out_of_memory_without_backoff_fails_at_once(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(ENV_VAR, "oom_above=4")
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.oom_backoff=false"])
    result = fit(cfg, run_dir=tmp_path / "off", progress=False)
    assert result.status == "oom" and "train.oom_backoff is off" in result.reason and result.events == []


def test_a_bad_fault_spec_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=f"{ENV_VAR} item 'oom=3' must be one of oom_above=N, oom_at_batch=N"):
        Faults.from_env({ENV_VAR: "oom=3"})
    assert Faults.from_env({}) == Faults()


@pytest.mark.slow
@pytest.mark.parametrize("reading", [
    ["data.cache=false"],
    # Encoded frames decoded in the trainer: a left-out clip still needs a frame to decode.
    ["data.cache=true", "data.cache_format=jpeg", "data.decode_on=device"],
], ids=["decoded-video", "jpeg-cache-decoded-on-device"])
def test_videos_that_stop_decoding_are_replaced_or_left_out_and_reported(
    synthetic_root: Path, tmp_path: Path, reading: list[str]
) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".harness_frame_cache"))
    overrides = tiny_overrides(root, tmp_path) + ["train.epochs=2", "data.max_bad_fraction=0.2", *reading]
    cfg = load_config([ROOT / "baseline.yaml"], overrides)
    manifest = build_manifest(cfg.data, progress=False)
    train_fake = manifest[(manifest.split == "train") & (manifest.label == 1)].path.iloc[0]
    val_video = manifest[manifest.split == "val"].path.iloc[0]
    for path in (train_fake, val_video):
        corrupt_keeping_size_and_mtime(Path(path))
    assert len(build_manifest(cfg.data, progress=False)) == len(manifest)  # indexing still trusts them

    result = fit(cfg, run_dir=tmp_path / "run", progress=False)

    assert result.status == "completed"
    assert result.bad_videos == sorted([train_fake, val_video])
    kinds = [(e["kind"], e["path"]) for e in result.events]
    assert ("bad_video", train_fake) in kinds and ("bad_video", val_video) in kinds and len(kinds) == 2
    # Every epoch replaces the bad train video's clip and leaves the bad val video's clips out.
    assert [h.get("replaced_clips") for h in result.train_history] == [1, 1]
    k = cfg.data.clips_per_video_eval
    assert [h.get("val_skipped_clips") for h in result.history] == [k, k]
    n_val = int((manifest.split == "val").sum())
    assert result.history[0]["val_video_auc"] == result.history[0]["val_video_auc"]  # finite: scored on n_val - 1
    assert n_val - 1 >= 2


def test_the_frame_cache_leaves_out_videos_that_fail_to_decode(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".harness_frame_cache"))
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(root, tmp_path))
    manifest = build_manifest(cfg.data, progress=False)
    bad = manifest.path.iloc[3]
    corrupt_keeping_size_and_mtime(Path(bad))
    stats = build_cache(manifest, cfg.data, progress=False)
    assert stats.failed == (bad,)
    assert stats.decoded == len(manifest) - 1


def test_too_many_bad_videos_stop_the_run_with_the_limit_named(synthetic_root: Path, tmp_path: Path) -> None:
    from harness.errors import DataError

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".harness_frame_cache"))
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(root, tmp_path) + ["data.cache=false", "data.max_bad_fraction=0"])
    manifest = build_manifest(cfg.data, progress=False)
    corrupt_keeping_size_and_mtime(Path(manifest[manifest.split == "train"].path.iloc[0]))
    with pytest.raises(DataError, match="more than data.max_bad_fraction allows"):
        fit(cfg, run_dir=tmp_path / "run", progress=False)

"""The real trainer end to end on tiny synthetic videos: resume, NaN, and `harness train` into a real MLflow store."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.config import load_config
from harness.train.callbacks import Callback
from harness.train.trainer import fit
from helpers import ROOT, tiny_overrides

pytestmark = pytest.mark.slow


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation(self, epoch: int, metrics: dict[str, float]) -> bool:
        return epoch < self.epoch


def test_resume_from_last_equals_an_uninterrupted_run(synthetic_root: Path, tmp_path: Path) -> None:
    # Recommended exercises the most state: cosine schedule, attention, dropout, augmentation, frozen BN.
    cfg = load_config([ROOT / "recommended.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.val_every=1"])
    # bf16 autocast on the CPU, forced: both runs must compute alike, whatever a timing probe would pick.
    full = fit(cfg, run_dir=tmp_path / "full", progress=False, force_precision="bf16")

    cut = fit(cfg, StopAfter(2), run_dir=tmp_path / "cut", progress=False, force_precision="bf16")
    assert cut.status == "stopped" and cut.epochs_run == 2
    resumed = fit(cfg, run_dir=tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", progress=False)

    assert resumed.epochs_run == full.epochs_run == 4
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(full.history, resumed.history):
        for key in ("val_loss", "val_video_auc", "val_clip_auc"):
            assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), key
    assert full.train_history[-1]["train_loss"] == pytest.approx(resumed.train_history[-1]["train_loss"], abs=1e-6)
    assert full.test_metrics["test_video_auc"] == pytest.approx(resumed.test_metrics["test_video_auc"], abs=1e-6)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


class DrawEachEpoch(StopAfter):
    """Draws from every global random stream after each epoch, as main-process data code may, and notes the precision."""

    def __init__(self, epoch: int = 10**6) -> None:
        super().__init__(epoch)
        self.draws: dict[int, tuple[float, float, float]] = {}
        self.precision: str | None = None

    def on_run_start(self, info) -> None:
        self.precision = info.precision

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.draws[epoch] = (random.random(), float(np.random.random()), float(torch.rand(())))


@pytest.fixture
def restore_determinism(monkeypatch):
    """fit sets process-wide torch flags and CUBLAS_WORKSPACE_CONFIG; put them back for the next test."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so the teardown restores the original state
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_resume_continues_every_random_stream_and_sets_deterministic_kernels(
    synthetic_root: Path, tmp_path: Path, restore_determinism
) -> None:
    overrides = ["train.epochs=2", "train.val_every=1", "train.deterministic=true", "train.amp=true"]
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + overrides)
    full = DrawEachEpoch()
    fit(cfg, full, run_dir=tmp_path / "full", progress=False, force_precision="fp32")
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    fit(cfg, DrawEachEpoch(1), run_dir=tmp_path / "cut", progress=False, force_precision="fp32")
    resumed = DrawEachEpoch()
    fit(cfg, resumed, run_dir=tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", progress=False)
    assert resumed.draws.keys() == {2}
    assert resumed.draws[2] == full.draws[2]  # Python, numpy and torch streams continue, not restart
    assert resumed.precision == "fp32 (forced)"  # kept from the run it continues: no second probe
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key

    fit(cfg.model_copy(update={"train": cfg.train.model_copy(update={"deterministic": False})}),
        run_dir=tmp_path / "again", progress=False, force_precision="fp32")
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_the_test_split_is_scored_at_the_threshold_of_the_best_validation(synthetic_root: Path, tmp_path: Path) -> None:
    # min_delta 0.9: only the first validation can improve video AUC, so the best epoch (1) is not the last (3).
    # Loss as the secondary monitor: it is minimised even though the primary is maximised.
    overrides = ["train.epochs=3", "early_stop.min_delta=0.9", "early_stop.monitor_secondary=loss"]
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + overrides)
    result = fit(cfg, run_dir=tmp_path / "run", progress=False)
    assert result.status == "completed" and result.best_epoch == 1
    thresholds = {h["epoch"]: h["val_video_threshold"] for h in result.history}
    assert thresholds[1] != thresholds[3]  # otherwise this test could not tell the epochs apart

    assert result.test_metrics["test_threshold"] == thresholds[1]
    assert torch.load(result.best_model_path, weights_only=True)["threshold"] == thresholds[1]
    assert json.loads((result.run_dir / "run_state.json").read_text())["best_threshold"] == thresholds[1]
    videos = result.test_videos
    at_threshold = float(((videos["prob"] >= thresholds[1]).astype(int) == videos["label"]).mean())
    assert result.test_metrics["test_video_acc"] == pytest.approx(at_threshold)

    losses = [h["val_loss"] for h in result.history]
    assert max(losses) != min(losses)
    assert [h["best_loss"] for h in result.history] == [min(losses[: i + 1]) for i in range(len(losses))]


def test_a_run_told_not_to_score_the_test_split_leaves_it_alone(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.epochs=1"])
    result = fit(cfg, run_dir=tmp_path / "run", progress=False, score_test=False)
    assert result.status == "completed" and result.best_model_path is not None
    assert result.test_metrics == {} and result.test_videos is None


def test_same_seed_gives_same_metrics(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.epochs=1"])
    one = fit(cfg, run_dir=tmp_path / "a", progress=False)
    two = fit(cfg, run_dir=tmp_path / "b", progress=False)
    assert one.history[0]["val_loss"] == two.history[0]["val_loss"]
    assert one.train_history[0]["train_loss"] == two.train_history[0]["train_loss"]


def test_an_unknown_early_stop_metric_is_a_config_error(synthetic_root: Path, tmp_path: Path) -> None:
    from harness.errors import ConfigError

    # Refused when the config loads, before any run folder or data exists.
    with pytest.raises(ConfigError, match="early_stop.metric must be one of .*video_auc.*but got 'video_acu'"):
        load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["early_stop.metric=video_acu"])
    assert not (tmp_path / "runs").exists()


def test_nan_loss_ends_the_run_with_a_reason_not_a_traceback(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    import harness.train.losses as losses

    real_build = losses.build_loss

    def poisoned(cfg, counts):
        loss = real_build(cfg, counts)
        forward = loss.forward
        loss.forward = lambda logits, target: forward(logits, target) * math.nan
        return loss

    monkeypatch.setattr(losses, "build_loss", poisoned)
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path))
    result = fit(cfg, run_dir=tmp_path / "nan", progress=False)
    assert result.status == "nan"
    assert "loss became nan at epoch 1, batch 1" in result.reason
    assert result.test_metrics == {}


def test_harness_train_lands_a_complete_mlflow_run(synthetic_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", "--config", str(ROOT / "recommended.yaml"), "--config", str(ROOT / "configs/demo.yaml"), "--quiet",
            "--tracking-uri", uri, "--run-dir", str(tmp_path / "runs" / "demo")]
    for item in tiny_overrides(synthetic_root, tmp_path):
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "video_auc" in out and "MLflow run" in out

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("harness").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.aggregate"] == "attention"
    assert run.data.params["optim.lr"] == "0.0003"
    history = client.get_metric_history(run.info.run_id, "val_video_auc")
    assert sorted(m.step for m in history) == [2, 4]  # recommended validates every 2 epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [1, 2, 3, 4]
    assert "test_video_auc" in run.data.metrics and "val_attention_entropy" in run.data.metrics
    # recommended monitors clip AUC beside video AUC
    assert run.data.metrics["best_clip_auc"] == max(m.value for m in client.get_metric_history(run.info.run_id, "val_clip_auc"))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.png", "roc.png", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert run.data.tags["best_epoch"] in {"2", "4"}
    # recommended asks for AMP: on a CPU the run says what it computed in, and why (fallback or probe)
    assert run.data.tags["harness.amp"] == "bf16" or run.data.tags["harness.amp"].startswith(("bf16 (", "fp32 ("))

    # Resume by MLflow run id after extending the schedule appends to the same run.
    assert main(["train", "--resume", run.info.run_id, "--tracking-uri", uri, "--quiet", "--set", "train.epochs=5"]) == 0
    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_video_auc")) == [2, 4, 5]  # and at the last

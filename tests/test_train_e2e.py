"""The real trainer end to end on tiny synthetic videos: resume, NaN, and `harness train` into a real MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config import load_config
from harness.train.callbacks import Callback
from harness.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(root: Path, tmp: Path) -> list[str]:
    return [
        # The generated tree has FF++'s layout, so the real FF++ indexing path reads it.
        "data.source=ffpp",
        f"data.root={root}",
        "data.input_size=32",
        "data.num_workers=0",
        "train.epochs=4",
        "train.batch_size=8",
        f"train.output_dir={tmp / 'runs'}",
    ]


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation(self, epoch: int, metrics: dict[str, float]) -> bool:
        return epoch < self.epoch


def test_resume_from_last_equals_an_uninterrupted_run(synthetic_root: Path, tmp_path: Path) -> None:
    # Recommended exercises the most state: cosine schedule, attention, dropout, augmentation, frozen BN.
    cfg = load_config([ROOT / "recommended.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.val_every=1"])
    full = fit(cfg, run_dir=tmp_path / "full", progress=False)

    cut = fit(cfg, StopAfter(2), run_dir=tmp_path / "cut", progress=False)
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


def test_same_seed_gives_same_metrics(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["train.epochs=1"])
    one = fit(cfg, run_dir=tmp_path / "a", progress=False)
    two = fit(cfg, run_dir=tmp_path / "b", progress=False)
    assert one.history[0]["val_loss"] == two.history[0]["val_loss"]
    assert one.train_history[0]["train_loss"] == two.train_history[0]["train_loss"]


def test_an_unknown_early_stop_metric_is_a_config_error(synthetic_root: Path, tmp_path: Path) -> None:
    from harness.errors import ConfigError

    cfg = load_config([ROOT / "baseline.yaml"], tiny_overrides(synthetic_root, tmp_path) + ["early_stop.metric=video_acu"])
    with pytest.raises(ConfigError, match="early_stop.metric must be one of .*video_auc.*but got 'video_acu'"):
        fit(cfg, run_dir=tmp_path / "x", progress=False)


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

    # Resume by MLflow run id after extending the schedule appends to the same run.
    assert main(["train", "--resume", run.info.run_id, "--tracking-uri", uri, "--quiet", "--set", "train.epochs=5"]) == 0
    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_video_auc")) == [2, 4, 5]  # and at the last

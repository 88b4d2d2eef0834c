"""`harness sweep --estimate`: timed steps of the first trial's config, scaled to the sweep; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.sweep.estimate import DEMO_EPOCH_FRACTION, StepTimes, SweepEstimate
from helpers import write_space


def test_the_estimate_scales_steps_by_epochs_validations_trials_and_workers() -> None:
    steps = StepTimes(setup_s=2.0, train_batch_s=0.5, val_batch_s=0.1, train_batches=10, val_batches=20,
                      device="cpu", precision="fp32")
    assert steps.trial_seconds(epochs=6, validations=3) == 2.0 + 6 * 5.0 + 3 * 2.0
    e = SweepEstimate(steps, trials=40, epochs=6, validations=3, pruner="median",
                      pruned_fraction=DEMO_EPOCH_FRACTION["median"], workers=2)
    assert e.unpruned_s == pytest.approx(40 * 38.0 / 2)
    assert e.pruned_s == pytest.approx(40 * (2.0 + 36.0 * 85 / 240) / 2)  # setup is paid by every trial
    assert SweepEstimate(steps, 40, 6, 3, "hyperband", None, 1).pruned_s is None


def test_harness_sweep_estimate_times_real_steps_and_writes_nothing(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, {"type": "median", "n_warmup_steps": 0})
    journal, mlruns = tmp_path / "optuna.journal", tmp_path / "mlruns"
    args = ["sweep", "--space", str(space), "--trials", "40", "--storage", str(journal), "--estimate",
            "--tracking-uri", str(mlruns)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "s per batch of 8" in out and "4 validations in 4 epochs" in out  # tiny overlay: batch 8, 4 epochs
    assert "40 trials with 1 worker" in out and "with the median pruner" in out
    assert not journal.exists() and not mlruns.exists() and not (tmp_path / "runs").exists()


def test_the_progress_display_extrapolates_the_remaining_time_from_trials_finished_here(monkeypatch) -> None:
    import harness.sweep.report as report

    clock = [100.0]
    monkeypatch.setattr(report.time, "monotonic", lambda: clock[0])
    with report.TrialBar(10, enabled=False) as bar:
        bar.set_done(4)  # a resumed study: 4 trials finished by an earlier run
        assert bar.remaining() is None
        clock[0] += 60.0
        bar.set_done(6)  # 2 trials in 60 s here, 4 to go
        assert bar.remaining() == pytest.approx(120.0)
        assert "left ~0:02:00" in bar.progress.tasks[0].description

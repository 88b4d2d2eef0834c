"""One Optuna trial: suggest, build the config, train through callbacks, tell the study how it ended.

The objective reads like Optuna's own examples (suggest, build, train, report, prune); the
trainer stays unaware of Optuna because reporting and pruning live in `PruningReporter`.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from harness.config.loading import flatten
from harness.config.schema import Config
from harness.errors import DiskFull
from harness.io import is_disk_full
from harness.train.callbacks import Callback, CallbackList, RunInfo
from harness.train.checkpoint import load_checkpoint
from harness.train.trainer import TrainResult, fit, is_out_of_memory

if TYPE_CHECKING:
    import optuna

    from harness.track.mlflow_run import MLflowTracker

__all__ = [
    "PruningReporter", "TrialProgress", "TrialOutcome", "OutcomeState", "ResumedHistory", "run_trial",
    "prepare_resume", "objective_value", "trial_params_for_mlflow", "config_record", "disk_full_reason",
]

# How a trial ended, named as Optuna's TrialState members so `TrialState[state]` finds the one to tell.
OutcomeState = Literal["COMPLETE", "PRUNED", "FAIL"]

log = logging.getLogger(__name__)

# An out-of-memory back-off changes these during a run; a checkpoint that differs only there still fits.
_BATCHING_KEYS = ("train.batch_size", "train.grad_accum_steps", "train.max_train_batches")


class PruningReporter(Callback):
    """Reports the study's metric at step = epoch and stops the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None

    def on_validation(self, epoch: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(f"val_{self.metric}")
        if value is None or math.isnan(value):
            return True
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            return False
        return True


class TrialProgress(Callback):
    """Keeps a rich progress line current: trial n/N, epoch, the study's metric now, best of the study."""

    def __init__(self, update: Callable[..., None], metric: str) -> None:
        self.update = update
        self.metric = metric

    def on_run_start(self, info: RunInfo) -> None:
        self.update(epoch=info.start_epoch - 1, epochs=info.config.train.epochs)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.update(epoch=epoch)

    def on_validation(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.update(value=metrics.get(f"val_{self.metric}"))
        return True


class ResumedHistory(Callback):
    """A retried trial that resumes from the dead trial's checkpoint starts with that trial's past.

    Its epochs go to the new MLflow run (so its curves are whole) and its validations to the new
    Optuna trial (so the pruner compares it at every step, not only from the resumed epoch on).
    """

    def __init__(
        self, state: dict[str, Any], tracker: MLflowTracker, trial: optuna.Trial, metric: str, source: str
    ) -> None:
        self.state, self.tracker, self.trial, self.metric, self.source = state, tracker, trial, metric, source

    def on_run_start(self, info: RunInfo) -> None:
        for row in self.state["train_history"]:
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        for row in self.state["history"]:
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
            value = row.get(f"val_{self.metric}")
            if value is not None and not math.isnan(value):
                self.trial.report(value, step=int(row["epoch"]))
        self.tracker.set_tags({"harness.resumed_from": f"{self.source} after epoch {self.state['epoch']}"})


def prepare_resume(source_dir: Path, run_dir: Path, cfg: Config) -> Path | None:
    """Copy a dead trial's `last` and `best` checkpoints into its retry's folder; the checkpoint to resume from.

    None (train from epoch 0) when the dead trial left no `last` checkpoint here, or one of another config.
    """
    last = source_dir / "last.pt"
    if not last.is_file():
        return None
    saved = load_checkpoint(last).get("config", {})
    mine = {k: v for k, v in flatten(cfg.model_dump(mode="json")).items() if k not in _BATCHING_KEYS}
    theirs = {k: v for k, v in flatten(saved).items() if k not in _BATCHING_KEYS}
    if mine != theirs:
        log.warning("not resuming from %s: its config differs from this trial's; training from the start", last)
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "best.pt"):
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, run_dir / name)
    return run_dir / "last.pt"


@dataclass
class TrialOutcome:
    state: OutcomeState
    value: float | None
    reason: str
    epochs_run: int


def objective_value(history: list[dict[str, float]], metric: str, maximize: bool) -> float | None:
    """The trial's score: its best validation value of the study's metric (what its best checkpoint holds)."""
    values = [h[f"val_{metric}"] for h in history if not math.isnan(h.get(f"val_{metric}", math.nan))]
    if not values:
        return None
    return max(values) if maximize else min(values)


def run_trial(
    trial: optuna.Trial,
    cfg: Config,
    run_dir: Path,
    metric: str,
    maximize: bool,
    tracker: MLflowTracker,
    manifest: pd.DataFrame,
    progress_update: Callable[..., None] | None = None,
    resume: Path | None = None,
) -> TrialOutcome:
    """Train one trial's config; every ending (complete, pruned, NaN, OOM, exception) becomes a TrialOutcome.

    `resume`: a checkpoint from `prepare_resume`, whose past epochs are replayed to MLflow and the pruner.
    KeyboardInterrupt is not caught here: the sweep records the trial as failed ("interrupted") and stops.
    """
    reporter = PruningReporter(trial, metric)
    callbacks: list[Callback] = [tracker]
    if resume is not None:
        source = f"trial {trial.user_attrs.get('retry_of')}"
        callbacks.append(ResumedHistory(load_checkpoint(resume), tracker, trial, metric, source))
    callbacks.append(reporter)
    if progress_update is not None:
        callbacks.append(TrialProgress(progress_update, metric))
    try:
        # Validation only: trials are picked from what they log, so no trial may show a test score;
        # `harness export-best --evaluate` scores the chosen one's best checkpoint on test, once.
        result: TrainResult = fit(
            cfg, CallbackList(callbacks), run_dir=run_dir, resume=resume, manifest=manifest, progress=False,
            score_test=False,
        )
    except Exception as exc:  # a broken trial must not end the sweep
        reason = f"{type(exc).__name__}: {exc}"
        if is_out_of_memory(exc):
            reason = f"oom: {exc}"
        elif is_disk_full(exc):
            reason = disk_full_reason(exc)
        tracker.record_failure(exc, reason, tags={"optuna.state": "FAIL", "optuna.reason": reason})
        return TrialOutcome("FAIL", None, reason, 0)
    if reporter.pruned_at is not None:
        outcome = TrialOutcome("PRUNED", None, f"pruned at epoch {reporter.pruned_at}", result.epochs_run)
    elif result.status in ("nan", "oom"):
        outcome = TrialOutcome("FAIL", None, f"{result.status}: {result.reason}", result.epochs_run)
    else:
        value = objective_value(result.history, metric, maximize)
        if value is None:
            outcome = TrialOutcome("FAIL", None, f"no finite val_{metric} was ever reported", result.epochs_run)
        else:
            outcome = TrialOutcome("COMPLETE", value, result.reason, result.epochs_run)
    tracker.set_tags({"optuna.state": outcome.state, "optuna.reason": outcome.reason[:5000]})
    if outcome.value is not None:
        tracker.log_metrics({f"objective_{metric}": outcome.value}, step=result.epochs_run)
    return outcome


def disk_full_reason(exc: Exception) -> str:
    """`disk full: <folder> ...`: DiskFull's own line, which says what to free or change."""
    if isinstance(exc, DiskFull):
        return str(exc)
    # A full disk met outside harness.io's writers: an OSError (or an error raised while handling one).
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
    return f"disk full: {type(exc).__name__}: {first}"


def trial_params_for_mlflow(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled values as `trial.<name>` params, beside the trial's full flattened config."""
    return {f"trial.{k}": v for k, v in params.items()}


def config_record(cfg: Config) -> dict[str, Any]:
    """The trial's resolved config, kept as a trial user attribute so export-best needs no files."""
    return cfg.model_dump(mode="json")


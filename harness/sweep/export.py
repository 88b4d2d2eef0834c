"""`harness export-best`: the study's best trial as a complete, runnable config file.

With `--evaluate`, also the one look at the test split a sweep takes: trials score validation only
(model selection must not see test), so the chosen trial's best checkpoint is scored here, once.
With `--log-model` / `--register NAME`, that checkpoint also becomes an MLflow model in the trial's own run,
and a new version of a registered model.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config.loading import config_from_dict, save_config
from harness.errors import StudyError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from harness.track.model_log import LoggedDetector, RegisteredVersion
    from harness.train.precision import Precision

__all__ = ["BestCheckpoint", "TestScore", "export_best", "locate_best_checkpoint", "score_on_test", "evaluate_best",
           "log_best_model"]


@dataclass(frozen=True)
class BestCheckpoint:
    """Where the study's best trial left its best checkpoint, and the MLflow run it logged to."""

    study_name: str
    trial_number: int
    run_id: str
    path: Path
    epochs_run: int
    experiment: str


@dataclass(frozen=True)
class TestScore:
    checkpoint: BestCheckpoint
    epoch: int  # the epoch whose weights `best.pt` holds
    precision: str
    metrics: dict[str, float]  # test_* as `fit` reports them


def _load_study(study_name: str, storage: str | None) -> tuple[Any, str]:
    """The study (which must hold a completed trial) and the storage it came from."""
    import optuna

    from harness.sweep.storage import DEFAULT_STORAGE, is_url, open_storage
    from harness.track.mlflow_run import mask_uri

    storage = storage or DEFAULT_STORAGE
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_url(storage) and not Path(storage).exists():
        raise StudyError(f"--storage {storage}: no such study storage (run `harness sweep` first, or pass --storage)")
    opened = open_storage(storage)
    names = optuna.get_all_study_names(opened)
    if study_name not in names:
        raise StudyError(
            f"--study-name must name a study in {mask_uri(storage)}, but got {study_name!r} (studies: {', '.join(names) or 'none'})"
        )
    study = optuna.load_study(study_name=study_name, storage=opened)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        raise StudyError(f"study {study_name!r} has no completed trial yet; run or resume `harness sweep` first")
    return study, storage


def export_best(
    study_name: str, out: Path, storage: str | None = None, model_uri: str | None = None
) -> tuple[Path, int, float]:
    """Write the best completed trial's resolved config (every key, commented) to `out`.

    Each trial keeps its resolved config as a user attribute, so this needs neither the space
    file nor the base configs it was built from. The header names the trial's MLflow run and,
    when `log_best_model` logged it, `model_uri`.
    """
    from harness.track.mlflow_run import mask_uri

    study, storage = _load_study(study_name, storage)
    best = study.best_trial
    cfg = config_from_dict(best.user_attrs["config"], source=f"study {study_name} trial {best.number}")
    metric = study.user_attrs.get("metric", "value")
    header = "\n".join(
        [
            f"best trial of study {study_name!r} ({mask_uri(storage)})",
            f"trial {best.number}: {metric} = {best.value:.4f} (validation, best epoch)",
            f"origin: {best.user_attrs.get('enqueued_from', 'sampled')}; sampled values: "
            + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            f"MLflow run: {best.user_attrs.get('mlflow_run_id', 'none recorded')}; model: "
            + (model_uri or "not logged (export-best --log-model or --register NAME logs it)"),
            f"exported {time.strftime('%Y-%m-%d %H:%M:%S')}; train it with: harness train --config {Path(out).name}",
        ]
    )
    save_config(cfg, Path(out), header)
    return Path(out), best.number, float(best.value)


def locate_best_checkpoint(
    study_name: str, storage: str | None = None, tracking_uri: str | None = None, purpose: str = "score the test split"
) -> BestCheckpoint:
    """The best trial's `best.pt`, found through its MLflow run (whose `run_dir` tag the tracker set).

    Checked before anything is written, so a missing checkpoint stops `export-best --evaluate` (or
    `--log-model`) at once; `purpose` completes the error message "... must exist to <purpose>".
    """
    from harness.track.mlflow_run import mask_uri, open_client, resolve_tracking_uri

    study, _ = _load_study(study_name, storage)
    best = study.best_trial
    where = f"study {study_name!r} trial {best.number}"
    run_id = best.user_attrs.get("mlflow_run_id")
    if run_id is None:
        raise StudyError(f"{where} must record its MLflow run (user attr mlflow_run_id) to {purpose}, but it has none")
    try:
        run = open_client(tracking_uri).get_run(run_id)
    except Exception:  # MLflow raises its own error types per store; any of them means "not here"
        raise StudyError(
            f"--tracking-uri must hold the sweep's MLflow runs, but {mask_uri(resolve_tracking_uri(tracking_uri))} "
            f"has no run {run_id} ({where}); pass the --tracking-uri the sweep used"
        ) from None
    run_dir = run.data.tags.get("run_dir")
    path = Path(run_dir) / "best.pt" if run_dir else None
    if path is None or not path.is_file():
        raise StudyError(
            f"{where}'s best checkpoint must exist to {purpose}, but got no file {path or 'best.pt'} "
            f"(MLflow run {run_id}, tag run_dir={run_dir!r})"
        )
    cfg = config_from_dict(best.user_attrs["config"], source=where)
    return BestCheckpoint(study_name, best.number, run_id, path, int(best.user_attrs.get("epochs_run", 0)),
                          cfg.tracking.experiment)


def _run_precision(run_dir: Path, device: torch.device) -> Precision:
    """What the run computed in (its run_state.json), so test is scored as validation was."""
    from harness.train.precision import Precision, recorded_precision

    name = recorded_precision(run_dir) or "fp32"
    if name == "fp16" and device.type != "cuda":
        name = "fp32"  # scored away from the GPU it trained on: CPUs have no fast fp16
    return Precision(name, "as the trial ran")


def score_on_test(checkpoint: Path) -> tuple[dict[str, float], pd.DataFrame, int, str]:
    """Test metrics of a `best.pt`, scored as `fit` scores them: its config, its validation's threshold.

    Returns the test_* metrics, the per-video scores, the checkpoint's epoch and the precision used.
    """
    from harness.data.dataset import build_loaders, class_counts
    from harness.data.index import build_manifest
    from harness.model.detector import build_detector
    from harness.train.checkpoint import load_checkpoint
    from harness.train.losses import build_loss
    from harness.train.session import resolve_device, seed_everything
    from harness.train.trainer import evaluate

    best = load_checkpoint(checkpoint)
    cfg = config_from_dict(best["config"], source=str(checkpoint))
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed)
    model = build_detector(cfg.model, cfg.data.n_segment)
    model.load_state_dict(best["model"])
    model.to(device)
    manifest = build_manifest(cfg.data, progress=False)
    loaders = build_loaders(manifest, cfg.data, cfg.train.batch_size, cfg.seed, device.type,
                            clips_per_epoch=cfg.train.clips_per_epoch)
    # The train split's class counts set pos_weight, so test_loss is the loss the run trained on.
    loss_fn = build_loss(cfg.loss, class_counts(manifest, "train")).to(device)
    precision = _run_precision(checkpoint.parent, device)
    # best.pt files written before thresholds were kept fall back to the plain 0.5, as in `fit`.
    threshold = float(best.get("threshold", 0.5))
    metrics, videos = evaluate(model, loaders.test, loss_fn, cfg, device, prefix="test_", threshold=threshold,
                               precision=precision)
    return metrics, videos, int(best["epoch"]), precision.name


def evaluate_best(target: BestCheckpoint, tracking_uri: str | None = None) -> TestScore:
    """Score the best checkpoint on the test split once and log test_* to the trial's own MLflow run."""
    from harness.track.mlflow_run import MLflowTracker
    from harness.track.plots import plot_roc

    metrics, videos, epoch, precision = score_on_test(target.path)
    tracker = MLflowTracker(tracking_uri, target.experiment, run_id=target.run_id)
    # Step = epochs run, where `fit` logs test metrics for a plain training run.
    tracker.log_metrics(metrics, step=target.epochs_run)
    tracker.set_tags({"harness.test_scored_by": "export-best", "harness.test_checkpoint": str(target.path),
                      "harness.test_checkpoint_epoch": epoch})
    if len(videos):
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifact(plot_roc(videos, Path(tmp) / "roc.png"))
    return TestScore(target, epoch, precision, metrics)


def log_best_model(
    target: BestCheckpoint, tracking_uri: str | None = None, register_as: str | None = None
) -> tuple[LoggedDetector, RegisteredVersion | None]:
    """Log the best checkpoint as the MLflow model `model` of the trial's own run; register it if asked.

    Logged again on every call (the same weights: a completed trial's best.pt no longer changes), so each
    `--register` adds a version whose files are there whatever an earlier call left.
    """
    from harness.track.model_log import log_detector, register_detector

    logged = log_detector(target.path, target.run_id, tracking_uri)
    if register_as is None:
        return logged, None
    tags = {"harness.study": target.study_name, "harness.trial": target.trial_number}
    return logged, register_detector(logged, register_as, tracking_uri, tags)

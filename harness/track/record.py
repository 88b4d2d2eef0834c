"""What a run's MLflow page says besides its numbers: the code, the data, the machine, and a summary in words.

`mlflow.start_run` writes the source tags and starts the system metrics monitor itself; the harness writes
runs through MlflowClient with explicit ids (see mlflow_run.py), so it adds both here, under MLflow's names.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import DatasetInput
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from harness.config.schema import Config, DataConfig
    from harness.train.trainer import TrainResult

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "TRAINING_EXPERIMENT",
    "SPLITS",
    "source_tags",
    "git_commit",
    "dataset_label",
    "manifest_digest",
    "dataset_inputs",
    "start_system_metrics",
    "stop_system_metrics",
    "config_summary",
    "result_summary",
]

# The UI opens an experiment by its kind: runs and their charts for model training, traces for GenAI.
# MLflow's Python package has no constant for this tag; its UI reads and writes it under this name.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"

SPLITS = ("train", "val", "test")

# System metrics are sampled every second and logged as the mean of five samples: a demo run of under a
# minute still gets several points, and a day-long run ~17,000 per metric rather than 86,400.
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL and MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING override both.
SAMPLING_SECONDS = 1.0
SAMPLES_PER_POINT = 5


# --- source --------------------------------------------------------------------------------------
def source_tags() -> dict[str, str]:
    """mlflow.user, mlflow.source.name (the command), mlflow.source.type (LOCAL), and mlflow.source.git.commit
    when the working folder is in a git checkout (it holds the configs, and in a clone of this repository the code).
    """
    from mlflow.tracking.context.default_context import DefaultRunContext
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = DefaultRunContext().tags()
    commit = git_commit(Path.cwd())
    if commit is not None:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


@functools.lru_cache(maxsize=16)
def git_commit(folder: Path) -> str | None:
    """HEAD of the git checkout holding `folder`, None outside one.

    Asked once per folder and process: a commit made while a sweep runs does not change the code it loaded.
    """
    from mlflow.utils.git_utils import get_git_commit

    return get_git_commit(str(folder))


# --- data ----------------------------------------------------------------------------------------
def dataset_label(data: DataConfig) -> str:
    """A short name for the data a config reads: `ffpp-c23`, `synthetic`, or the CSV manifest's file stem."""
    if data.source == "csv" and data.manifest is not None:
        return Path(data.manifest).stem
    return "synthetic" if data.source == "synthetic" else f"ffpp-{data.compression}"


def _dataset_location(data: DataConfig) -> str:
    where = data.manifest if data.source == "csv" and data.manifest is not None else data.root
    return str(Path(where).resolve())


def manifest_digest(rows: pd.DataFrame) -> str:
    """12 hex digits of a SHA-256 over every row and column, in order.

    MLflow's own pandas digest reads only the first 10,000 rows; a manifest differing further down must differ here.
    """
    import pandas as pd

    digest = hashlib.sha256(",".join(map(str, rows.columns)).encode())
    digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:12]


def dataset_inputs(manifest: pd.DataFrame, data: DataConfig, splits: Sequence[str] = SPLITS) -> list[DatasetInput]:
    """One MLflow dataset per split present, named `<label>-<split>` with context `<split>`.

    One dataset per split because MLflow keeps one context per (name, digest) in a run: the runs table's
    Dataset column then lists each split with its own digest and context.
    """
    import mlflow.data
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split in splits:
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        if rows.empty:
            continue
        with warnings.catch_warnings():
            # A local path matches MLflow's local source twice, and integer columns get a schema hint: both warn.
            warnings.simplefilter("ignore", UserWarning)
            name = f"{dataset_label(data)}-{split}"
            # to_dict() infers the schema and profile, so it stays inside the block.
            dataset = mlflow.data.from_pandas(rows, source=_dataset_location(data), name=name,
                                              digest=manifest_digest(rows)).to_dict()
        inputs.append(DatasetInput(Dataset(**dataset), [InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    return inputs


# --- system metrics ------------------------------------------------------------------------------
def start_system_metrics(
    run_id: str, tracking_uri: str, resume: bool, gpu: bool = False
) -> SystemMetricsMonitor | None:
    """MLflow's monitor (CPU, memory, disk, network; GPU with nvidia-ml-py) logging `system/*` to the run.

    None when MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is set to false. Its thread is a daemon, so a process
    that never closes the run still exits. `gpu`: the run trains on an NVIDIA GPU, so its metrics are
    expected, and their absence is warned about.
    """
    from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    if MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.defined and not MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get():
        return None
    # Its start and stop lines at INFO, per run, would interleave with a sweep's progress display.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLING_SECONDS,
                                   samples_before_logging=SAMPLES_PER_POINT, resume_logging=resume,
                                   tracking_uri=tracking_uri)
    if gpu and not any(isinstance(m, GPUMonitor) for m in monitor.monitors):
        warnings.warn("GPU utilisation and memory are left out of this run's system metrics: MLflow reads them "
                      "through NVML, which the `gpu` extra installs (pip install 'harness[gpu]': nvidia-ml-py)",
                      stacklevel=3)
    monitor.start()
    return monitor


def stop_system_metrics(monitor: SystemMetricsMonitor) -> None:
    """Stop the monitor and log the samples taken since its last point.

    MLflow's monitor drops them, so a run shorter than one point's samples would have no system metrics at all.
    """
    monitor.finish()
    tail = monitor.aggregate_metrics()  # means over what each monitor sampled since its last point
    if tail:
        monitor.publish_metrics(tail)
        monitor.mlflow_logger.flush()


# --- notes ---------------------------------------------------------------------------------------
def config_summary(cfg: Config) -> str:
    """The named choices of a config in one line, for the run's description."""
    m, o = cfg.model, cfg.optim
    shift = "TSM " if m.temporal_shift else ""
    schedule = "" if o.scheduler.type == "none" else f", {o.scheduler.type} schedule"
    return (f"{shift}{m.backbone} ({m.aggregate} over {cfg.data.n_segment} segments), {cfg.loss.type} loss, "
            f"{o.name} lr {o.lr:g}{schedule}, {cfg.train.epochs} epochs, seed {cfg.seed}; "
            f"data {dataset_label(cfg.data)} ({cfg.data.input_size}px)")


def result_summary(result: TrainResult, metric: str) -> str:
    """How a training run ended and its best validation, in one line."""
    best = ("no validation" if result.best_epoch is None
            else f"best val {metric} {result.best_value:.4f} at epoch {result.best_epoch}")
    return f"**{result.status}** after {result.epochs_run} epochs ({result.reason}); {best}"

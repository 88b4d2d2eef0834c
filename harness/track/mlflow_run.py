"""One MLflow run per training run, written through MlflowClient with explicit run ids.

Explicit ids (rather than mlflow's active-run globals) let a sweep nest trial runs under a
parent run from any worker process, and let a resumed run append to the run it continues.
What `mlflow.start_run` would add on its own (source tags, system metrics) comes from record.py,
with the run's data as dataset inputs and a description in words.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import tempfile
import time
import traceback
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config.loading import flatten, to_yaml
from harness.track.record import (
    EXPERIMENT_KIND_TAG,
    TRAINING_EXPERIMENT,
    config_summary,
    dataset_inputs,
    result_summary,
    source_tags,
    start_system_metrics,
    stop_system_metrics,
)
from harness.track.outbox import BufferedClient, is_pending, is_unreachable, limit_http_retries
from harness.train.callbacks import Callback, RunInfo
from harness.train.trainer import TrainResult

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from harness.config.schema import Config

__all__ = ["MLflowTracker", "resolve_tracking_uri", "mask_uri", "open_client", "experiment_id", "ui_command",
           "ui_link"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# A failure's reason and traceback are cut to this many characters (MLflow keeps 8000 per tag value).
_FAILURE_CHARS = 5000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the working folder (artifacts in ./mlruns)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mask_uri(uri: str) -> str:
    """Hide a password in `scheme://user:password@host/...` before it reaches a tag or a log line."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", uri)


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_command(tracking_uri: str) -> str | None:
    """What serves a local store's runs in a browser; None for a tracking server, which serves them itself."""
    if _is_server(tracking_uri):
        return None
    # MLflow >= 3.7's `mlflow ui` opens ./mlflow.db by default, the harness's own default store.
    return "mlflow ui" if tracking_uri == DEFAULT_TRACKING_URI else f"mlflow ui --backend-store-uri {tracking_uri}"


def ui_link(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs (or of one run): on a tracking server, else where `mlflow ui`
    serves by default.

    The page opens in the UI's model-training view: MLflow 3.17 picks its GenAI or model-training pages from
    the URL's `workflowType` (else from the browser's last choice, GenAI at first), not from the experiment's
    `mlflow.experimentKind` tag, and in its GenAI view the runs table is hidden behind a traces overview.
    """
    base = tracking_uri.rstrip("/") if _is_server(tracking_uri) else "http://127.0.0.1:5000"
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def open_client(tracking_uri: str | None = None):
    """An MlflowClient on the resolved URI; a SQLite store that does not exist yet is first created whole."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    _create_sqlite_store(uri)
    return MlflowClient(uri)


def _create_sqlite_store(uri: str) -> None:
    """Build a new SQLite tracking store under a temporary name, then link it into place.

    MLflow migrates a new SQLite store with autocommitted DDL: a process killed between a migration's
    CREATE TABLE and its version stamp leaves a store that fails every later open ("table ... already
    exists"). Migrated aside, the store appears only once complete. A hard link (not a rename) puts it
    there, so a store another worker created meanwhile, and may already write to, is never replaced.
    """
    if not uri.startswith("sqlite:"):
        return
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if database in (None, "", ":memory:") or Path(database).exists():
        return
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Its "Creating initial MLflow database tables..." lines at INFO would open the first sweep's output.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.creating")
    try:
        # The artifact root MLflow itself gives a new local store; it fixes where experiment 0 keeps artifacts.
        store = SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError:
            # A filesystem without hard links: a rename, which a store created in the last instant would lose to.
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def experiment_id(client, name: str) -> str:
    """Get or create, marked as a model-training experiment; two workers racing to create it both end up with its id."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT})
        except Exception:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_EXPERIMENT:  # made before the harness set it, or by hand
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT)
    return exp.experiment_id


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    # MLflow stores NaN, but the UI's charts break on it; a missing point reads better than a NaN.
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class MLflowTracker(Callback):
    """Logs params, per-epoch metrics (step = epoch), the config, best checkpoint, curves and ROC.

    Each run also gets MLflow's source tags, `manifest` (when given) as one dataset input per split,
    system metrics while it trains, and a description (`mlflow.note.content`) that starts with
    `description` and says how the run ended.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "harness",
        run_name: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        extra_params: Mapping[str, Any] | None = None,
        log_checkpoint: bool = True,
        terminate: bool = True,
        description: str = "",
        manifest: pd.DataFrame | None = None,
        outbox_dir: Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        # Where writes wait while the server is unreachable (outbox.py); the run folder once the run starts.
        self.outbox_dir = outbox_dir
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.run_id = run_id
        self.tags = dict(tags or {})
        self.extra_params = dict(extra_params or {})
        self.log_checkpoint = log_checkpoint
        self.terminate = terminate
        self.manifest = manifest
        # The description's parts, rewritten whole whenever one changes: who the run is, its config, how it ended.
        self._note = {"about": description, "config": "", "outcome": ""}
        self._config: Config | None = None
        self._monitor: SystemMetricsMonitor | None = None

    # Opened on first use, so a command stopped by bad input before its run starts leaves the store untouched
    # (a SQLite store's file is created as soon as a client opens it).
    @cached_property
    def client(self) -> BufferedClient:
        limit_http_retries()  # before the first request: a down server costs seconds, not minutes, per call
        return BufferedClient(open_client(self.tracking_uri), resolve_tracking_uri(self.tracking_uri), self.outbox_dir)

    @cached_property
    def experiment_id(self) -> str:
        return self.client.experiment_id(self.experiment)

    # --- small writers -------------------------------------------------------------------------
    # MlflowClient.log_batch splits a batch into MLflow's per-request limits itself (100 params or tags,
    # 1000 entities), so each writer sends everything in one call.
    # Synchronous, although MLflow can queue writes for a thread of its own (`synchronous=False`): closing a
    # run then waits for that thread, which polls its queue once a second, ~0.7 s per run, where an epoch's
    # two synchronous batches take 10-60 ms on SQLite. Queueing pays only past ~30 epochs, where an epoch of
    # real data takes minutes and neither figure matters.
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in _finite(metrics).items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow would cut a longer value too, with a warning per value.
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def describe(self, **parts: str) -> dict[str, str]:
        """The `mlflow.note.content` tag (the run's Description in the UI) with these parts replaced, to set.

        Parts: `about` (who the run is), `config`, `outcome`, then any others in the order first given;
        empty ones are left out, and so is the tag while all are empty.
        """
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

        self._note.update(parts)
        text = "\n\n".join(part for part in self._note.values() if part)
        return {MLFLOW_RUN_NOTE: text} if text else {}

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Stop the system metrics (logging the samples since their last point) and close the run."""
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            try:
                stop_system_metrics(monitor)
            except Exception as error:
                # Its last few seconds of samples go to MLflow by the monitor's own client, outside the outbox;
                # with the server down they are dropped, as the monitor drops every sample after an outage begins.
                if not is_unreachable(error):
                    raise
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = self.client.resolved(self.run_id)  # the real id, once a run created while down went out

    def record_failure(
        self, exc: BaseException, reason: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        """Close the run as FAILED (KILLED for an interrupt), creating it first if no hook has yet.

        Every failed run, from `harness train`, a sweep trial or a compare run, carries the same tags:
        harness.status (failed or interrupted), harness.reason (`reason`, else "Type: message") and the
        traceback, cut to 5000 characters; `tags` adds the caller's own (a trial's optuna.*), cut alike.
        Returns the reason.
        """
        interrupted = isinstance(exc, KeyboardInterrupt)
        reason = reason or ("interrupted" if interrupted else f"{type(exc).__name__}: {exc}")
        trace = "".join(traceback.format_exception(exc))
        self.ensure_run()
        status = "interrupted" if interrupted else "failed"
        self.set_tags({
            "harness.status": status,
            "harness.reason": reason[:_FAILURE_CHARS],
            "traceback": trace[-_FAILURE_CHARS:],
            **{key: str(value)[:_FAILURE_CHARS] for key, value in (tags or {}).items()},
            **self.describe(outcome=f"**{status}**: {reason[:_FAILURE_CHARS]}"),
        })
        self._log_config()
        self.finish("KILLED" if interrupted else "FAILED")
        return reason

    def ensure_run(self) -> str:
        """Create the run if no hook has yet, so a failure before training starts is still visible in MLflow."""
        if self.run_id is None:
            tags = {**source_tags(), **self.tags, **self.describe()}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            self.run_id = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags).info.run_id
            self.log_params(self.extra_params)
        return self.run_id

    # --- callback hooks ------------------------------------------------------------------------
    def on_run_start(self, info: RunInfo) -> None:
        self.client.use_folder(info.run_dir)
        resumed = self.run_id is not None
        if not resumed:
            self.ensure_run()
            params = flatten(info.config)
            params.update(
                {
                    "info.n_params": info.n_params,
                    "info.device": info.device,
                    "info.n_real_train": info.class_counts[0],
                    "info.n_fake_train": info.class_counts[1],
                    "info.pos_weight_used": info.pos_weight,
                    "info.shifted_blocks": info.shifted_blocks,
                    "info.frozen_bn": info.frozen_bn,
                    **{f"info.n_videos_{k}": v for k, v in info.n_videos.items()},
                }
            )
            self.log_params(params)
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        self._config = info.config
        # A tag, not a param: it is measured on this machine, and a comparison must see what actually ran.
        self.set_tags({"run_dir": str(info.run_dir.resolve()), "harness.status": "running", "harness.amp": info.precision,
                       **self.describe(config=config_summary(info.config))})
        if self.manifest is not None:  # a resumed run logs the same datasets again, which MLflow keeps once
            self.client.log_inputs(self.run_id, dataset_inputs(self.manifest, info.config.data))
        # The run folder names its MLflow run, so `harness train --resume runs/NAME` appends to the same run.
        (info.run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": self.run_id, "experiment_id": self.experiment_id}))
        # A run still known by a placeholder (created while the server was down) has nowhere to send them yet.
        if not is_pending(self.run_id):
            self._monitor = start_system_metrics(self.run_id, resolve_tracking_uri(self.tracking_uri), resume=resumed,
                                                 gpu=info.device.startswith("cuda"))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, step=epoch)

    def on_validation(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.log_metrics(metrics, step=epoch)
        return True

    def on_event(self, epoch: int, kind: str, message: str, values: dict[str, float]) -> None:
        # A tag per kind shows the latest in the runs table; events.json (at the end) keeps them all.
        self.log_metrics(values, step=epoch)
        self.set_tags({f"harness.event.{kind}": message[:5000]})

    def _log_config(self) -> None:
        """The resolved config as config.yaml, written once, when the run ends (its values are params from the start)."""
        if self._config is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(to_yaml(self._config, "resolved config of this run"))
            self.log_artifact(path)

    def on_run_end(self, result: TrainResult) -> None:
        from harness.track.plots import plot_curves, plot_roc

        metric = self._config.early_stop.metric if self._config is not None else "value"
        metrics = dict(result.test_metrics)
        tags = {"harness.status": result.status, "harness.reason": result.reason[:_FAILURE_CHARS],
                **self.describe(outcome=result_summary(result, metric))}
        if result.best_epoch is not None:
            # Metrics, so the runs table sorts and charts them; the tag is what `harness compare` reads back.
            metrics.update({"best_epoch": result.best_epoch, "best_value": result.best_value})
            tags["best_epoch"] = result.best_epoch
        self.log_metrics(metrics, step=result.epochs_run)
        if result.best_model_path is not None:
            tags["best_model_path"] = str(result.best_model_path.resolve())
            if self.log_checkpoint:
                self.log_artifact(result.best_model_path, "checkpoints")
        if result.bad_videos:
            tags["harness.bad_videos"] = "\n".join(result.bad_videos)[:5000]
        self.set_tags(tags)
        self._log_config()
        with tempfile.TemporaryDirectory() as tmp:
            if result.events:
                events = Path(tmp) / "events.json"
                events.write_text(json.dumps(result.events, indent=2))
                self.log_artifact(events)
            if result.train_history:
                self.log_artifact(plot_curves(result.train_history, result.history, Path(tmp) / "curves.png"))
            if result.test_videos is not None and len(result.test_videos):
                self.log_artifact(plot_roc(result.test_videos, Path(tmp) / "roc.png"))
        if self.terminate:
            self.finish("FAILED" if result.status in ("nan", "oom") else "FINISHED")

"""`harness sweep`: an Optuna study over config keys, each trial a child MLflow run under one parent.

`trials` is the target number of finished (complete or pruned) trials in the study, so rerunning
the same command resumes and runs only what is missing, and several workers can share one study.
"""

from __future__ import annotations

import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config.loading import flatten
from harness.errors import StudyError
from harness.sweep.liveness import GRACE_PERIOD, HEARTBEAT_INTERVAL

if TYPE_CHECKING:
    from harness.config.schema import DataConfig

__all__ = ["SweepSummary", "run_sweep", "finished_count"]

FINISHED = ("COMPLETE", "PRUNED")


@dataclass
class SweepSummary:
    study_name: str
    metric: str
    n_complete: int
    n_pruned: int
    n_failed: int
    epochs_spent: int
    epochs_unpruned: int
    best_number: int | None
    best_value: float | None
    parent_run_id: str
    wall_seconds: float
    ran_here: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None  # set when this worker stopped before the study reached its target


def finished_count(study) -> int:
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def _parent_run(study, tracking_uri, experiment: str, space, storage_label: str, base_cfg) -> str:
    from harness.track.mlflow_run import MLflowTracker

    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    tracker = MLflowTracker(tracking_uri, experiment, run_id=parent_id)
    if parent_id is None:
        run = tracker.client.create_run(
            tracker.experiment_id,
            run_name=f"sweep-{study.study_name}",
            tags={"harness.role": "sweep", "harness.study": study.study_name, "harness.storage": storage_label,
                  "harness.space": str(Path(space.path).resolve())},
        )
        tracker.run_id = run.info.run_id
        tracker.log_params({f"fixed.{k}": v for k, v in flatten(base_cfg).items()})
        study.set_user_attr("mlflow_parent_run_id", tracker.run_id)
    else:
        tracker.client.update_run(parent_id, status="RUNNING")
    return tracker.run_id


def _close_orphan_runs(client, parent_run_id: str, study) -> int:
    """Child runs left RUNNING by a dead worker whose trial is no longer running get closed as KILLED."""
    running = {t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"}
    runs = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    closed = 0
    for run in runs:
        number = int(run.data.tags.get("optuna.trial", -1))
        if number not in running:
            client.set_tag(run.info.run_id, "optuna.state", "FAIL")
            client.set_tag(run.info.run_id, "optuna.reason", "cut off: worker stopped mid-trial")
            client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
    return closed


def _log_decode_counts(client: Any, parent_run_id: str, data_cfg: DataConfig, since: float) -> dict[str, float]:
    """Log to the parent run how often videos were decoded into the frame cache while this sweep ran.

    `cache_max_decodes_per_video` is 1 when the sweep decoded each video once, 0 when it found them all cached.
    """
    from harness.data.cache import frame_cache_for

    cache = frame_cache_for(data_cfg)
    counts = cache.decode_counts(since)
    metrics = {
        "cache_decodes": float(sum(counts.values())),
        "cache_videos_decoded": float(len(counts)),
        "cache_max_decodes_per_video": float(max(counts.values(), default=0)),
        "cache_size_mb": cache.disk_bytes() / 2**20,
    }
    for key, value in metrics.items():
        client.log_metric(parent_run_id, key, value)
    return metrics


def _reap(study) -> list[int]:
    """Fail (and enqueue once more) the trials of dead workers: same-host pids gone, or stale heartbeats."""
    from harness.sweep.liveness import fail_stale_trials, reap_dead_trials

    return sorted(reap_dead_trials(study) + fail_stale_trials(study))


def _ask(study):
    # Optuna warns that heartbeats belong to study.optimize; this loop beats itself (liveness.Heartbeat).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def _sigterm_as_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def run_sweep(
    space_path: Path,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    tracking_uri: str | None = None,
    max_failures: int = 10,
    progress: bool = True,
    resume_trials: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
) -> SweepSummary:
    """Run trials until the study holds `trials` finished ones (counting every worker's), then summarise.

    `resume_trials`: a retried trial (its worker died) continues from the dead trial's `last`
    checkpoint when this machine has it. `heartbeat_interval` (0: off) and `grace_period` apply to
    database storages, where they let workers on other machines notice a dead one.
    """
    import optuna
    from optuna.trial import TrialState

    from harness.data.cache import build_cache
    from harness.data.index import build_manifest
    from harness.sweep.liveness import Heartbeat, mark_worker
    from harness.sweep.report import TrialBar, log_study_artifacts, summarise
    from harness.sweep.space import build_sampler, load_space
    from harness.sweep.storage import DEFAULT_STORAGE, open_storage, storage_lock
    from harness.sweep.trial import config_record, prepare_resume, run_trial, trial_params_for_mlflow
    from harness.track.mlflow_run import MLflowTracker, mask_uri, open_client

    if trials < 1:
        raise StudyError(f"--trials must be >= 1, but got {trials}")
    if heartbeat_interval < 0 or (heartbeat_interval and grace_period <= heartbeat_interval):
        raise StudyError(f"--grace-period must exceed --heartbeat, but got {grace_period} <= {heartbeat_interval}")
    space = load_space(Path(space_path))
    study_name = study_name or Path(space_path).stem
    storage_uri = storage or DEFAULT_STORAGE
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()

    enqueue = space.enqueue_params()
    base_cfg = space.config_for(enqueue[0] if enqueue else {})
    manifest = build_manifest(base_cfg.data, progress=progress)
    cache_since = time.time()
    if base_cfg.data.cache:
        # Every trial and worker then reads frames from the cache; with two workers, each builds half.
        build_cache(manifest, base_cfg.data, progress=progress)

    with storage_lock(storage_uri):
        # Inside the lock: two workers opening a fresh database at once would both create Optuna's
        # tables, and one would die of a duplicate-key error.
        raw_storage = open_storage(storage_uri, heartbeat_interval or None, grace_period if heartbeat_interval else None)
        study = optuna.create_study(
            study_name=study_name,
            storage=raw_storage,
            sampler=build_sampler(space.study.sampler),
            pruner=space.pruner(),  # its warm-up counted in validations, whatever train.val_every is
            direction=space.study.direction,
            load_if_exists=True,
        )
        if not study.user_attrs.get("enqueued"):
            for name, params in zip(space.study.enqueue, enqueue):
                study.enqueue_trial(params, user_attrs={"enqueued_from": Path(name).name})
            study.set_user_attr("enqueued", True)
            study.set_user_attr("metric", space.study.metric)
            study.set_user_attr("space_path", str(Path(space_path).resolve()))
        reaped = _reap(study)
        parent_run_id = _parent_run(study, tracking_uri, base_cfg.tracking.experiment, space, mask_uri(storage_uri), base_cfg)
    client = open_client(tracking_uri)
    closed = _close_orphan_runs(client, parent_run_id, study)
    if reaped or closed:
        print(f"resumed: failed {len(reaped)} dead trial(s) {reaped} (each retried once) and closed {closed} "
              f"cut-off MLflow run(s)")

    maximize = space.study.direction == "maximize"
    metric = space.study.metric
    sweep_dir = base_cfg.train.output_dir / "sweeps" / study_name
    ran_here, stop_reason, interrupted_trial = 0, None, None
    previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)

    try:
        with TrialBar(trials, enabled=progress) as bar:
            while True:
                with storage_lock(storage_uri):
                    # Workers on other machines die too; their trials are noticed here, between trials.
                    if _reap(study):
                        _close_orphan_runs(client, parent_run_id, study)
                    states = [t.state.name for t in study.get_trials(deepcopy=False)]
                    done = sum(s in FINISHED for s in states)
                    bar.set_done(done)
                    if done + states.count("RUNNING") >= trials:
                        break
                    if states.count("FAIL") >= max_failures:
                        stop_reason = (f"{states.count('FAIL')} failed trials reached --max-failures {max_failures} "
                                       f"with {done} of {trials} finished")
                        print(f"stopping: {stop_reason}")
                        break
                    trial = _ask(study)
                    mark_worker(trial)
                params = space.suggest(trial)
                cfg = space.config_for(params)
                trial.set_user_attr("config", config_record(cfg))
                origin = trial.user_attrs.get("enqueued_from", "sampled")
                retry_of = trial.user_attrs.get("retry_of")
                run_dir = sweep_dir / f"trial-{trial.number}"
                resume = None
                if resume_trials and retry_of is not None:
                    resume = prepare_resume(sweep_dir / f"trial-{retry_of}", run_dir, cfg)
                tags = {"optuna.trial": str(trial.number), "optuna.study": study_name, "harness.origin": origin}
                if retry_of is not None:
                    tags["harness.retry_of"] = str(retry_of)
                tracker = MLflowTracker(
                    tracking_uri,
                    cfg.tracking.experiment,
                    run_name=f"trial-{trial.number}",
                    parent_run_id=parent_run_id,
                    tags=tags,
                    extra_params=trial_params_for_mlflow(params),
                )
                bar.start_trial(trial.number, origin if retry_of is None else f"retry of {retry_of}")
                try:
                    with Heartbeat(raw_storage, trial._trial_id):
                        outcome = run_trial(
                            trial, cfg, run_dir, metric, maximize, tracker, manifest, bar.update, resume=resume
                        )
                except KeyboardInterrupt:
                    interrupted_trial = trial.number
                    trial.set_user_attr("fail_reason", "interrupted")
                    study.tell(trial, state=TrialState.FAIL)
                    if tracker.run_id:
                        tracker.set_tags({"optuna.state": "FAIL", "optuna.reason": "interrupted"})
                        tracker.finish("KILLED")
                    client.update_run(parent_run_id, status="KILLED")
                    raise
                trial.set_user_attr("epochs_run", outcome.epochs_run)
                if outcome.state != "COMPLETE":
                    trial.set_user_attr("fail_reason" if outcome.state == "FAIL" else "prune_reason", outcome.reason)
                if tracker.run_id:
                    trial.set_user_attr("mlflow_run_id", tracker.run_id)
                if outcome.state == "COMPLETE":
                    study.tell(trial, outcome.value)
                else:
                    study.tell(trial, state=TrialState[outcome.state])
                bar.end_trial(outcome, study)
                ran_here += 1
    except KeyboardInterrupt:
        # Printed once the progress display is gone, so it is the last thing on the screen.
        what = ("between trials" if interrupted_trial is None else
                f"trial {interrupted_trial} recorded as failed (\"interrupted\") and its MLflow run closed")
        print(f"interrupted: {what}. Rerun the same command to resume: finished trials are kept and the study "
              f"runs until it holds {trials} finished trials.")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)

    summary = summarise(study, metric, base_cfg.train.epochs, parent_run_id, time.perf_counter() - started, ran_here)
    summary.stop_reason = stop_reason
    log_study_artifacts(client, parent_run_id, study, summary)
    if base_cfg.data.cache:
        _log_decode_counts(client, parent_run_id, base_cfg.data, cache_since)
    if stop_reason:
        client.set_terminated(parent_run_id, "FAILED")
    elif not any(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False)):
        # With several workers, the last one to finish closes the parent; the others leave it running.
        client.set_terminated(parent_run_id, "FINISHED")
    return summary

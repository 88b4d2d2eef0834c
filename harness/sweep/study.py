"""`harness sweep`: an Optuna study over config keys, each trial a child MLflow run under one parent.

`trials` is the target number of finished (complete or pruned) trials in the study, so rerunning
the same command resumes and runs only what is missing, and several workers can share one study.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config.loading import flatten
from harness.errors import StudyError

if TYPE_CHECKING:
    from harness.config.schema import DataConfig

__all__ = ["SweepSummary", "run_sweep", "finished_count", "reap_dead_trials"]

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


def finished_count(study) -> int:
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_trials(study, retry: bool = True) -> list[int]:
    """Fail RUNNING trials whose worker (same host, recorded pid) is gone, and re-enqueue their params once.

    A worker killed with SIGKILL leaves its trial RUNNING forever; this is what notices it on restart.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or _pid_alive(int(t.user_attrs.get("pid", -1))):
            continue
        # The dead worker's Trial object is gone; the storage is the only handle left on its trial.
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker died (process gone)")
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        reaped.append(t.number)
        if retry and t.user_attrs.get("retry_of") is None:  # retried once, not forever
            study.enqueue_trial(t.params, user_attrs={**_enqueue_attrs(t), "retry_of": t.number})
    return reaped


def _enqueue_attrs(t) -> dict[str, Any]:
    return {k: v for k, v in t.user_attrs.items() if k in ("enqueued_from",)}


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


def run_sweep(
    space_path: Path,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    tracking_uri: str | None = None,
    max_failures: int = 10,
    progress: bool = True,
) -> SweepSummary:
    import optuna
    from optuna.trial import TrialState

    from harness.data.cache import build_cache
    from harness.data.index import build_manifest
    from harness.sweep.report import log_study_artifacts, summarise
    from harness.sweep.space import build_pruner, build_sampler, load_space
    from harness.sweep.storage import DEFAULT_STORAGE, open_storage, storage_lock
    from harness.sweep.trial import config_record, run_trial, trial_params_for_mlflow
    from harness.sweep.report import TrialBar
    from harness.track.mlflow_run import MLflowTracker, mask_uri, open_client

    if trials < 1:
        raise StudyError(f"--trials must be >= 1, but got {trials}")
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
        study = optuna.create_study(
            study_name=study_name,
            storage=open_storage(storage_uri),
            sampler=build_sampler(space.study.sampler),
            pruner=build_pruner(space.study.pruner),
            direction=space.study.direction,
            load_if_exists=True,
        )
        if not study.user_attrs.get("enqueued"):
            for name, params in zip(space.study.enqueue, enqueue):
                study.enqueue_trial(params, user_attrs={"enqueued_from": Path(name).name})
            study.set_user_attr("enqueued", True)
            study.set_user_attr("metric", space.study.metric)
            study.set_user_attr("space_path", str(Path(space_path).resolve()))
        reaped = reap_dead_trials(study)
        parent_run_id = _parent_run(study, tracking_uri, base_cfg.tracking.experiment, space, mask_uri(storage_uri), base_cfg)
    client = open_client(tracking_uri)
    closed = _close_orphan_runs(client, parent_run_id, study)
    if reaped or closed:
        print(f"resumed: failed {len(reaped)} dead trial(s) {reaped} and closed {closed} cut-off MLflow run(s)")

    maximize = space.study.direction == "maximize"
    metric = space.study.metric
    sweep_dir = base_cfg.train.output_dir / "sweeps" / study_name
    ran_here = 0

    with TrialBar(trials, enabled=progress) as bar:
        while True:
            with storage_lock(storage_uri):
                states = [t.state.name for t in study.get_trials(deepcopy=False)]
                done = sum(s in FINISHED for s in states)
                bar.set_done(done)
                if done + states.count("RUNNING") >= trials:
                    break
                if states.count("FAIL") >= max_failures:
                    print(f"stopping: {states.count('FAIL')} failed trials reached --max-failures {max_failures}")
                    break
                trial = study.ask()
                trial.set_user_attr("host", socket.gethostname())
                trial.set_user_attr("pid", os.getpid())
            params = space.suggest(trial)
            cfg = space.config_for(params)
            trial.set_user_attr("config", config_record(cfg))
            origin = trial.user_attrs.get("enqueued_from", "sampled")
            tracker = MLflowTracker(
                tracking_uri,
                cfg.tracking.experiment,
                run_name=f"trial-{trial.number}",
                parent_run_id=parent_run_id,
                tags={"optuna.trial": str(trial.number), "optuna.study": study_name, "harness.origin": origin},
                extra_params=trial_params_for_mlflow(params),
            )
            bar.start_trial(trial.number, origin)
            try:
                outcome = run_trial(
                    trial, cfg, sweep_dir / f"trial-{trial.number}", metric, maximize, tracker, manifest, bar.update
                )
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted")
                study.tell(trial, state=TrialState.FAIL)
                if tracker.run_id:
                    tracker.set_tags({"optuna.state": "FAIL", "optuna.reason": "interrupted"})
                    tracker.finish("KILLED")
                client.update_run(parent_run_id, status="KILLED")
                print(f"\ninterrupted: trial {trial.number} recorded as failed. Rerun the same command to resume.")
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

    summary = summarise(study, metric, base_cfg.train.epochs, parent_run_id, time.perf_counter() - started, ran_here)
    log_study_artifacts(client, parent_run_id, study, summary)
    if base_cfg.data.cache:
        _log_decode_counts(client, parent_run_id, base_cfg.data, cache_since)
    client.set_terminated(parent_run_id, "FINISHED")
    return summary

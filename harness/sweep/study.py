"""`harness sweep`: an Optuna study over config keys, each trial a child MLflow run under one parent.

`trials` is the target number of finished (complete or pruned) trials in the study, so rerunning
the same command resumes and runs only what is missing, and several workers can share one study.
One worker's sweep is four steps: open the study (under the storage lock), take the next trial
(under the lock), run it, and close (summary, parent run).
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.config.loading import flatten
from harness.errors import StudyError
from harness.sweep.liveness import GRACE_PERIOD, HEARTBEAT_INTERVAL
from harness.sweep.retry import STORAGE_RETRY_SECONDS

if TYPE_CHECKING:
    from types import FrameType

    import optuna
    import pandas as pd
    from mlflow import MlflowClient

    from harness.config.schema import Config, DataConfig
    from harness.sweep.report import TrialBar
    from harness.sweep.retry import StorageRetry
    from harness.sweep.space import SearchSpace
    from harness.sweep.trial import TrialOutcome
    from harness.track.mlflow_run import MLflowTracker

__all__ = ["SweepSummary", "run_sweep", "check_resumed_space", "finished_count", "FINISHED", "Direction", "RunStatus",
           "TrialStateName"]

# Optuna's TrialState member names, as the sweep compares them without importing Optuna up front.
TrialStateName = Literal["WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAIL"]
FINISHED: tuple[TrialStateName, ...] = ("COMPLETE", "PRUNED")  # what counts towards --trials
# MLflow's run statuses, as `MlflowClient.set_terminated` takes them.
RunStatus = Literal["RUNNING", "FINISHED", "FAILED", "KILLED"]
Direction = Literal["maximize", "minimize"]
# The splits a sweep reads, as its MLflow runs record them: trials never see test (export-best scores it once).
SELECTION_SPLITS = ("train", "val")


@dataclass
class SweepSummary:
    study_name: str
    metric: str
    direction: Direction
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
    timed_out: bool = False  # the stop was --timeout's: planned, so neither the parent run nor the exit code fails
    runs_page: str | None = None  # the experiment's runs in the MLflow UI; None when the store could not say
    ui_command: str | None = None  # what serves that page: `mlflow ui` for a local store, None for a server


@dataclass
class _Sweep:
    """What the steps of one worker's sweep share, from the opened study to the closing summary."""

    space: SearchSpace
    study: optuna.Study
    storage_uri: str
    tracking_uri: str | None
    client: MlflowClient
    parent_run_id: str
    base_cfg: Config
    manifest: pd.DataFrame
    cache_since: float  # when this worker began filling the frame cache (time.time())
    resume_trials: bool
    deadline: float | None = None  # --timeout: no trial starts after this time.perf_counter()
    timed_out: bool = False  # set when the deadline stopped this worker
    storage_retry: StorageRetry | None = None  # how long storage calls and the storage lock wait out a lost database

    @property
    def metric(self) -> str:
        return self.space.study.metric

    @property
    def maximize(self) -> bool:
        # The stored study's direction, which a resumed study keeps whatever the space file says now.
        return self.study.direction.name == "MAXIMIZE"

    @property
    def sweep_dir(self) -> Path:
        return self.base_cfg.train.output_dir / "sweeps" / self.study.study_name


class _TrialInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a trial, raised once that trial is recorded as failed ("interrupted")."""

    def __init__(self, trial_number: int) -> None:
        super().__init__(trial_number)
        self.trial_number = trial_number


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards the target: complete or pruned, by any worker."""
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def _parent_run(
    study: optuna.Study, tracking_uri: str | None, space: SearchSpace, storage_label: str, base_cfg: Config,
    manifest: pd.DataFrame,
) -> str:
    """The sweep's parent MLflow run: created with the study, reopened (RUNNING again) by a resumed sweep."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    from harness.track.mlflow_run import MLflowTracker
    from harness.track.record import dataset_inputs, source_tags

    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    tracker = MLflowTracker(tracking_uri, base_cfg.tracking.experiment, run_id=parent_id)
    if parent_id is None:
        space_path = Path(space.path).resolve()
        note = (f"Optuna study `{study.study_name}` over `{space_path.name}`: {space.study.direction} "
                f"val {space.study.metric}. One child run per trial, trained on train and picked on val.")
        run = tracker.client.create_run(
            tracker.experiment_id,
            run_name=f"sweep-{study.study_name}",
            tags={**source_tags(), MLFLOW_RUN_NOTE: note, "harness.role": "sweep", "harness.study": study.study_name,
                  "harness.storage": storage_label, "harness.space": str(space_path)},
        )
        tracker.run_id = run.info.run_id
        tracker.log_params({f"fixed.{k}": v for k, v in flatten(base_cfg).items()})
        tracker.client.log_inputs(tracker.run_id, dataset_inputs(manifest, base_cfg.data, SELECTION_SPLITS))
        study.set_user_attr("mlflow_parent_run_id", tracker.run_id)
    else:
        tracker.client.update_run(parent_id, status="RUNNING")
    return tracker.run_id


def _close_orphan_runs(client: MlflowClient, parent_run_id: str, study: optuna.Study) -> int:
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


def _log_decode_counts(
    client: MlflowClient, parent_run_id: str, data_cfg: DataConfig, since: float
) -> dict[str, float]:
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


def _reap(study: optuna.Study) -> list[int]:
    """Fail (and enqueue once more) the trials of dead workers: same-host pids gone, or stale heartbeats."""
    from harness.sweep.liveness import fail_stale_trials, reap_dead_trials

    return sorted(reap_dead_trials(study) + fail_stale_trials(study))


def _ask(study: optuna.Study) -> optuna.Trial:
    # Optuna warns that heartbeats belong to study.optimize; this loop beats itself (liveness.Heartbeat).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def _check_arguments(trials: int, heartbeat_interval: int, grace_period: int, timeout: float | None) -> None:
    if trials < 1:
        raise StudyError(f"--trials must be >= 1, but got {trials}")
    if timeout is not None and timeout <= 0:
        raise StudyError(f"--timeout must be > 0 seconds, but got {timeout}")
    if heartbeat_interval < 0 or (heartbeat_interval and grace_period <= heartbeat_interval):
        raise StudyError(f"--grace-period must exceed --heartbeat, but got {grace_period} <= {heartbeat_interval}")


def _prepare_data(space: SearchSpace, progress: bool) -> tuple[Config, pd.DataFrame, float]:
    """The first trial's config, the video manifest every trial shares, and when the frame cache began filling."""
    from harness.data.cache import build_cache
    from harness.data.index import build_manifest

    base_cfg = space.first_config()
    manifest = build_manifest(base_cfg.data, progress=progress)
    cache_since = time.time()
    if base_cfg.data.cache:
        # Every trial and worker then reads frames from the cache; with two workers, each builds half.
        build_cache(manifest, base_cfg.data, progress=progress)
    return base_cfg, manifest, cache_since


def _may_hold_study(storage_uri: str) -> bool:
    """Whether the storage can hold a study already: a database server, or a journal or SQLite file that exists."""
    from harness.sweep.storage import check_storage, journal_path

    kind = check_storage(storage_uri)
    if kind == "postgresql":
        return True
    if kind == "journal":
        return journal_path(storage_uri).is_file()
    from sqlalchemy.engine import make_url

    database = make_url(storage_uri).database
    return database not in (None, "", ":memory:") and Path(database).is_file()


def check_resumed_space(
    space: SearchSpace, study_name: str | None = None, storage: str | None = None, allow_space_change: bool = False
) -> list[str]:
    """Before any data is prepared: refuse (StudyError) to resume a study with a search space other than its own.

    Returns the lines to print when it goes on anyway (see `space_identity.check_space`). A study that
    does not exist yet is left to `_create_study`, and nothing is created or written for it here.
    """
    import optuna

    from harness.sweep.space_identity import check_space
    from harness.sweep.storage import DEFAULT_STORAGE, open_storage, storage_lock

    storage_uri = storage or DEFAULT_STORAGE
    if not _may_hold_study(storage_uri):
        return []
    # Under the lock: a worker creating the study records its space in the same hold, and two workers
    # letting a change through must not both append to its history.
    with storage_lock(storage_uri):
        try:
            study = optuna.load_study(study_name=study_name or space.path.stem, storage=open_storage(storage_uri))
        except KeyError:  # no such study in this storage
            return []
        return check_space(study, space, allow_space_change)


def _worker_seed(seed: int | None, study: optuna.Study) -> int | None:
    """A sampler seed of this worker's own where the space fixes one and the study is shared or resumed.

    Samplers that start from the same seed draw the same random trials: two workers did (a restarted
    PostgreSQL sweep ran trials 2/3, 4/6 and 5/7 with identical params), and so would a resumed sweep
    repeat its first draws. A fresh study's first worker keeps the space's seed, so a single-worker sweep
    stays reproducible; a --gpus worker offsets it by its index, a resumed study by its trial count and a
    worker joining trials running elsewhere by its pid. None: keep the sampler as built.
    """
    if seed is None:
        return None
    from optuna.trial import TrialState

    from harness.sweep.workers import WORKER_INDEX_ENV

    index = int(os.environ.get(WORKER_INDEX_ENV, "0"))
    trials = study.get_trials(deepcopy=False)
    joining = any(t.state == TrialState.RUNNING for t in trials)
    if not index and not trials:
        return None
    return (int(seed) + 1_000_003 * index + 104_729 * len(trials) + (7919 * os.getpid() if joining else 0)) % 2**32


def _create_study(
    space: SearchSpace, study_name: str, storage_uri: str, heartbeat_interval: int, grace_period: int,
    allow_space_change: bool = False, storage_retry: StorageRetry | None = None,
) -> optuna.Study:
    """Create the study, or load it when it exists; a new one gets the space's enqueued trials and its record
    of the space, a loaded one is checked against that record (`space_identity.check_space`).

    Called under the storage lock: two workers opening a fresh database at once would both create
    Optuna's tables, and one would die of a duplicate-key error.
    """
    import optuna

    from harness.sweep.space_identity import check_space, record_space
    from harness.sweep.storage import open_storage

    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage_uri, heartbeat_interval or None, grace_period if heartbeat_interval else None,
                             storage_retry),
        sampler=space.sampler(),
        pruner=space.pruner(),  # its warm-up counted in validations, whatever train.val_every is
        direction=space.study.direction,
        load_if_exists=True,
    )
    seed = _worker_seed(space.study.sampler.get("seed"), study)
    if seed is not None:
        study.sampler = space.sampler(seed)
    if not study.user_attrs.get("enqueued"):
        for name, params in zip(space.study.enqueue, space.enqueue_params()):
            study.enqueue_trial(params, user_attrs={"enqueued_from": Path(name).name})
        study.set_user_attr("enqueued", True)
        study.set_user_attr("metric", space.study.metric)
        with warnings.catch_warnings():  # set_metric_names has been "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([space.study.metric])  # the objective's name in optuna-dashboard and the optuna CLI
        study.set_user_attr("space_path", str(Path(space.path).resolve()))
        record_space(study, space)
    else:
        # Checked again: `check_resumed_space` may have found no study before the data was prepared, and
        # another worker may have created it since, from another space.
        for line in check_space(study, space, allow_space_change):
            print(line)
    return study


def _next_trial(
    sweep: _Sweep, bar: TrialBar, trials: int, max_failures: int
) -> tuple[optuna.Trial | None, str | None]:
    """Under the storage lock: fail dead workers' trials, count, and ask for a trial if the study needs one.

    (None, None) once finished and running trials reach the target; (None, why) past the --timeout
    deadline or at --max-failures.
    The lock keeps two workers from both seeing N-1 finished trials and both starting one more. A
    database restart ends PostgreSQL's lock mid-hold, and another worker may then count and ask at the
    same time; so a hold that lost its lock is done again under a new one, where the trial it asked
    for is kept only if the study still needs it.
    """
    from harness.sweep.storage import storage_lock

    asked: optuna.Trial | None = None  # from a hold that lost its lock: not yet known to be needed
    while True:
        with storage_lock(sweep.storage_uri, sweep.storage_retry) as hold:
            trial, stop_reason = _count_and_ask(sweep, bar, trials, max_failures, asked)
            if hold.held():
                return trial, stop_reason
        print("storage lock lost while taking a trial (the database connection dropped); "
              "counting again under a new lock")
        asked = trial


def _count_and_ask(
    sweep: _Sweep, bar: TrialBar, trials: int, max_failures: int, asked: optuna.Trial | None
) -> tuple[optuna.Trial | None, str | None]:
    """One hold's work for `_next_trial`; `asked` is counted apart: returned if the study needs it, else failed."""
    from harness.sweep import optuna_access

    # Workers on other machines die too; their trials are noticed here, between trials.
    if _reap(sweep.study):
        _close_orphan_runs(sweep.client, sweep.parent_run_id, sweep.study)
    if asked is not None and optuna_access.reload_trial(sweep.study, asked).state.is_finished():
        asked = None  # failed by a worker whose hold had lost its lock too, and read it before it was marked
    states = [t.state.name for t in sweep.study.get_trials(deepcopy=False) if asked is None or t.number != asked.number]
    done = sum(s in FINISHED for s in states)
    bar.set_done(done)
    if done + states.count("RUNNING") >= trials:
        # The target is reached, or will be by the trials running. A WAITING trial left over (an enqueued
        # config, a dead worker's retry) stays: a resume with a larger --trials runs it.
        stop_reason = None
    elif sweep.deadline is not None and time.perf_counter() >= sweep.deadline:
        sweep.timed_out = True
        stop_reason = f"--timeout reached with {done} of {trials} trials finished (rerun the same command to resume)"
    elif states.count("FAIL") >= max_failures:
        stop_reason = (f"{states.count('FAIL')} failed trials reached --max-failures {max_failures} "
                       f"with {done} of {trials} finished")
        print(f"stopping: {stop_reason}")
    else:
        return (asked if asked is not None else _ask_and_mark(sweep.study)), None
    if asked is not None:
        _fail_unneeded(sweep.study, asked)
    return None, stop_reason


def _ask_and_mark(study: optuna.Study) -> optuna.Trial:
    """A new trial marked as this worker's (`liveness.mark_worker`), with a first heartbeat where the storage keeps them.

    The beat comes before the mark. Unmarked, a trial whose worker died is failed by the next reaper on any
    machine; marked, only its own host can tell by the pid, so another machine needs the heartbeat, which
    otherwise starts only once the trial's config and MLflow run are made.
    """
    from optuna.exceptions import UpdateFinishedTrialError

    from harness.sweep import optuna_access
    from harness.sweep.liveness import mark_worker

    while True:
        trial = _ask(study)
        try:
            if optuna_access.heartbeat_interval(study):
                optuna_access.record_heartbeat(study, trial)
            mark_worker(trial)
            return trial
        except UpdateFinishedTrialError:
            # A worker whose hold a database restart had ended took it, unmarked, for dead (and enqueued it again).
            continue


def _fail_unneeded(study: optuna.Study, trial: optuna.Trial) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("fail_reason", "not run: asked for while a database restart had ended the storage lock, "
                                       "and not needed once counted again")
    study.tell(trial, state=TrialState.FAIL)


def _trial_tracker(sweep: _Sweep, trial: optuna.Trial, params: dict[str, Any], cfg: Config) -> MLflowTracker:
    """The trial's child run under the sweep's parent, created by its first logging call."""
    from harness.sweep.trial import trial_params_for_mlflow
    from harness.track.mlflow_run import MLflowTracker

    origin = trial.user_attrs.get("enqueued_from", "sampled")
    tags = {"optuna.trial": str(trial.number), "optuna.study": sweep.study.study_name, "harness.origin": origin}
    if trial.user_attrs.get("retry_of") is not None:
        tags["harness.retry_of"] = str(trial.user_attrs["retry_of"])
        origin = f"retry of trial {trial.user_attrs['retry_of']}"
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return MLflowTracker(
        sweep.tracking_uri,
        cfg.tracking.experiment,
        run_name=f"trial-{trial.number}",
        parent_run_id=sweep.parent_run_id,
        tags=tags,
        extra_params=trial_params_for_mlflow(params),
        description=f"Trial {trial.number} of `{sweep.study.study_name}` ({origin}): {values or 'no sampled params'}",
        manifest=sweep.manifest[sweep.manifest["split"].isin(SELECTION_SPLITS)],
        outbox_dir=sweep.sweep_dir / f"trial-{trial.number}",  # the run folder: a failure before training is queued too
    )


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, tracker: MLflowTracker) -> None:
    """Record how the trial ended (attributes first: a finished trial takes no more), then tell the study."""
    from optuna.trial import TrialState

    trial.set_user_attr("epochs_run", outcome.epochs_run)
    if outcome.state != "COMPLETE":
        trial.set_user_attr("fail_reason" if outcome.state == "FAIL" else "prune_reason", outcome.reason)
    if tracker.run_id:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        value = "" if outcome.value is None else f" objective {outcome.value:.4f},"
        tracker.set_tags(tracker.describe(optuna=f"Optuna: **{outcome.state}**,{value} {outcome.reason}"))
    if outcome.state == "COMPLETE":
        study.tell(trial, outcome.value)
    else:
        study.tell(trial, state=TrialState[outcome.state])


def _record_interrupted(sweep: _Sweep, trial: optuna.Trial, tracker: MLflowTracker) -> None:
    """Fail the trial as "interrupted" and close its run and the parent as KILLED, so a rerun starts clean."""
    from optuna.trial import TrialState

    trial.set_user_attr("fail_reason", "interrupted")
    sweep.study.tell(trial, state=TrialState.FAIL)
    if tracker.run_id:
        tracker.set_tags({"optuna.state": "FAIL", "optuna.reason": "interrupted"})
        tracker.finish("KILLED")
    sweep.client.update_run(sweep.parent_run_id, status="KILLED")


def _run_one(sweep: _Sweep, trial: optuna.Trial, bar: TrialBar) -> None:
    """Suggest the trial's config, train it in its own MLflow run, and tell the study how it ended."""
    from harness.sweep.liveness import Heartbeat
    from harness.sweep.trial import config_record, prepare_resume, run_trial

    params = sweep.space.suggest(trial)
    cfg = sweep.space.config_for(params)
    trial.set_user_attr("config", config_record(cfg))
    retry_of = trial.user_attrs.get("retry_of")
    run_dir = sweep.sweep_dir / f"trial-{trial.number}"
    resume = None
    if sweep.resume_trials and retry_of is not None:
        resume = prepare_resume(sweep.sweep_dir / f"trial-{retry_of}", run_dir, cfg)
    tracker = _trial_tracker(sweep, trial, params, cfg)
    origin = trial.user_attrs.get("enqueued_from", "sampled")
    bar.start_trial(trial.number, origin if retry_of is None else f"retry of {retry_of}")
    try:
        with Heartbeat(sweep.study, trial):
            outcome = run_trial(trial, cfg, run_dir, sweep.metric, sweep.maximize, tracker, sweep.manifest,
                                bar.update, resume=resume)
    except KeyboardInterrupt:
        _record_interrupted(sweep, trial, tracker)
        raise _TrialInterrupted(trial.number) from None
    _tell(sweep.study, trial, outcome, tracker)
    bar.end_trial(outcome, sweep.study)


def _run_trials(
    sweep: _Sweep, trials: int, max_failures: int, progress: bool | Literal["lines"]
) -> tuple[int, str | None]:
    """Take and run trials until the study holds `trials` finished ones, or --timeout or --max-failures stops them.

    Returns how many trials ran here, and why this worker stopped early (None: the target was reached).
    """
    from harness.sweep.report import TrialBar
    from harness.track.outbox import deliver_pending

    ran_here = 0
    previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        with TrialBar(trials, enabled=bool(progress), metric=sweep.metric, live=progress is True) as bar:
            while True:
                deliver_pending(sweep.sweep_dir, sweep.tracking_uri)  # what earlier trials queued while MLflow was down
                trial, stop_reason = _next_trial(sweep, bar, trials, max_failures)
                if trial is None:
                    return ran_here, stop_reason
                _run_one(sweep, trial, bar)
                ran_here += 1
    except KeyboardInterrupt as interrupt:
        # Printed once the progress display is gone, so it is the last thing on the screen.
        what = (f"trial {interrupt.trial_number} recorded as failed (\"interrupted\") and its MLflow run closed"
                if isinstance(interrupt, _TrialInterrupted) else "between trials")
        print(f"interrupted: {what}. Rerun the same command to resume: finished trials are kept and the study "
              f"runs until it holds {trials} finished trials.")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def _parent_status(study: optuna.Study, stop_reason: str | None) -> RunStatus | None:
    """How this worker leaves the parent run; None leaves it RUNNING for the workers still training."""
    if stop_reason:
        return "FAILED"
    # With several workers, the last one to finish closes the parent; the others leave it running.
    if not any(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False)):
        return "FINISHED"
    return None


def _runs_page(sweep: _Sweep) -> str | None:
    """Where the sweep's runs are in the MLflow UI; None when the store cannot be asked (a server down)."""
    from harness.track.mlflow_run import resolve_tracking_uri, ui_link

    try:
        experiment = sweep.client.get_experiment_by_name(sweep.base_cfg.tracking.experiment)
    except Exception:  # the summary goes on without the link: the runs are in the store (or its outbox)
        return None
    return None if experiment is None else ui_link(resolve_tracking_uri(sweep.tracking_uri), experiment.experiment_id)


def _close_sweep(sweep: _Sweep, ran_here: int, stop_reason: str | None, wall: float) -> SweepSummary:
    """Summarise the study, log the summary and plots to the parent run, and close the parent if this worker is last."""
    from harness.sweep.report import log_study_artifacts, summarise
    from harness.track.mlflow_run import resolve_tracking_uri, ui_command

    summary = summarise(sweep.study, sweep.metric, sweep.base_cfg.train.epochs, sweep.parent_run_id, wall, ran_here)
    summary.stop_reason, summary.timed_out = stop_reason, sweep.timed_out
    summary.runs_page = _runs_page(sweep)
    summary.ui_command = ui_command(resolve_tracking_uri(sweep.tracking_uri))
    log_study_artifacts(sweep.client, sweep.parent_run_id, sweep.study, summary)
    if sweep.base_cfg.data.cache:
        _log_decode_counts(sweep.client, sweep.parent_run_id, sweep.base_cfg.data, sweep.cache_since)
    status = _parent_status(sweep.study, None if sweep.timed_out else stop_reason)
    if status is not None:
        sweep.client.set_terminated(sweep.parent_run_id, status)
    return summary


def run_sweep(
    space_path: Path | SearchSpace,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    tracking_uri: str | None = None,
    max_failures: int = 10,
    progress: bool | Literal["lines"] = True,
    resume_trials: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    timeout: float | None = None,
    allow_space_change: bool = False,
    storage_retry_seconds: float = STORAGE_RETRY_SECONDS,
) -> SweepSummary:
    """Run trials until the study holds `trials` finished ones (counting every worker's), then summarise.

    `space_path`: a space file, or a space already loaded (with `harness sweep --config/--set` layers).
    `progress`: a live display, "lines" (one plain line per finished trial, for logs and --gpus
    workers) or nothing. `resume_trials`: a retried trial (its worker died) continues from the dead
    trial's `last` checkpoint when this machine has it. `heartbeat_interval` (0: off) and
    `grace_period` apply to database storages, where they let workers on other machines notice a dead
    one. `timeout`: seconds after which no new trial starts; the running one finishes.
    `allow_space_change`: resume the study even if its search space changed (see `space_identity`).
    `storage_retry_seconds`: how long a database outage may last before this worker gives up (0: at once);
    storage calls wait it out and go on (see `retrying_storage`).
    """
    import optuna

    from harness.sweep.retry import StorageRetry
    from harness.sweep.space import SearchSpace, load_space
    from harness.sweep.storage import DEFAULT_STORAGE, check_storage, storage_lock
    from harness.track.mlflow_run import mask_uri, open_client, resolve_tracking_uri
    from harness.track.outbox import BufferedClient, deliver_pending

    _check_arguments(trials, heartbeat_interval, grace_period, timeout)
    if not storage_retry_seconds >= 0:  # `not >=` refuses nan too
        raise StudyError(f"--storage-retry-seconds must be >= 0, but got {storage_retry_seconds}")
    storage_retry = StorageRetry(storage_retry_seconds)
    space = space_path if isinstance(space_path, SearchSpace) else load_space(Path(space_path))
    storage_uri = storage or DEFAULT_STORAGE
    check_storage(storage_uri)  # a refused URL stops here, before any data is indexed or cached
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A changed space stops a resumed study here too, before the data is indexed or cached.
    for line in check_resumed_space(space, study_name, storage_uri, allow_space_change):
        print(line)
    started = time.perf_counter()
    base_cfg, manifest, cache_since = _prepare_data(space, progress is True)

    with storage_lock(storage_uri, storage_retry):
        study = _create_study(space, study_name or space.path.stem, storage_uri, heartbeat_interval, grace_period,
                              allow_space_change, storage_retry)
        reaped = _reap(study)
        parent_run_id = _parent_run(study, tracking_uri, space, mask_uri(storage_uri), base_cfg, manifest)
    sweep = _Sweep(space, study, storage_uri, tracking_uri, open_client(tracking_uri), parent_run_id, base_cfg,
                   manifest, cache_since, resume_trials, None if timeout is None else started + timeout,
                   storage_retry=storage_retry)
    # The parent run's closing writes wait in the sweep's folder, as a trial's do in its own, if MLflow is down then.
    sweep.client = BufferedClient(sweep.client, resolve_tracking_uri(tracking_uri), sweep.sweep_dir)
    # Writes a trial queued while MLflow was down go out first, so no run that finished looks cut off below.
    deliver_pending(sweep.sweep_dir, tracking_uri)
    closed = _close_orphan_runs(sweep.client, parent_run_id, study)
    if reaped or closed:
        print(f"resumed: failed {len(reaped)} dead trial(s) {reaped} (each retried once) and closed {closed} "
              f"cut-off MLflow run(s)")

    ran_here, stop_reason = _run_trials(sweep, trials, max_failures, progress)
    return _close_sweep(sweep, ran_here, stop_reason, time.perf_counter() - started)

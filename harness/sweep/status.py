"""`harness sweep --status`: one screen on a study, read from its storage while its workers run elsewhere.

It only reads. A missing study is an error rather than a new one, nothing is reaped (a dead
worker's trial stays RUNNING until a worker fails and retries it), and the MLflow parent run is
looked up only in a tracking store that exists, since opening an absent SQLite or folder store
would create an empty one. MLflow being unreachable is shown in the MLflow line, under the study's
own lines, rather than stopping the command.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import StudyError
from harness.sweep import optuna_access
from harness.sweep.liveness import GRACE_PERIOD, pid_alive
from harness.sweep.study import FINISHED, Direction, TrialStateName

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

__all__ = ["StudyStatus", "WorkerStatus", "ParentRunStatus", "read_status", "format_status", "STATES"]

# The order the status counts trials in: finished first, then what is still to come.
STATES: tuple[TrialStateName, ...] = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
_SHOWN_FAILURES = 5
_SHOWN_WORKERS = 8


@dataclass(frozen=True)
class WorkerStatus:
    """A RUNNING trial and what can be told here about the worker that runs it."""

    trial: int
    host: str | None
    pid: int | None
    running_seconds: float | None  # since the trial started, by this machine's clock
    alive: bool | None  # its pid on this host; None when it runs on another host (or recorded no pid)
    heartbeat_age: float | None  # seconds since its last beat, by the database's clock; None: no beat recorded


@dataclass(frozen=True)
class ParentRunStatus:
    """The sweep's MLflow parent run, or why it could not be read (`problem`)."""

    tracking_uri: str  # masked
    run_id: str | None = None
    status: str | None = None  # RUNNING, FINISHED, FAILED, KILLED
    experiment_id: str | None = None
    problem: str | None = None

    @property
    def ui_command(self) -> str | None:
        """What serves a local store's runs in a browser; None for a tracking server, which serves them itself."""
        from harness.track.mlflow_run import ui_command

        return ui_command(self.tracking_uri)

    @property
    def link(self) -> str | None:
        """The run's page: on the tracking server, or on what `ui_command` serves (at its default address)."""
        from harness.track.mlflow_run import ui_link

        if self.run_id is None or self.experiment_id is None:
            return None
        return ui_link(self.tracking_uri, self.experiment_id, self.run_id)


@dataclass(frozen=True)
class StudyStatus:
    """What `harness sweep --status` shows: the study's trials as its storage holds them, and its parent run."""

    study_name: str
    storage: str  # masked
    direction: Direction
    metric: str
    counts: dict[TrialStateName, int]  # every state in STATES, zeros included
    target: int | None  # the sweep's --trials when the study records it (user attr `target_trials`)
    best_number: int | None
    best_value: float | None
    failures: list[tuple[int, str]]  # the last few failed trials and their reasons, oldest first
    workers: list[WorkerStatus]
    heartbeats: bool  # the storage is a database, where running trials may beat
    grace_period: int
    parent: ParentRunStatus
    this_host: str = field(default_factory=socket.gethostname)

    @property
    def finished(self) -> int:
        return sum(self.counts[state] for state in FINISHED)


def read_status(
    study_name: str,
    storage: str | None = None,
    tracking_uri: str | None = None,
    grace_period: int = GRACE_PERIOD,
) -> StudyStatus:
    """The study as its storage holds it now, and its MLflow parent run; StudyError when there is no such study.

    `grace_period`: how old a heartbeat may be before the trial counts as stale (the sweep's --grace-period).
    """
    import optuna

    from harness.sweep.storage import DEFAULT_STORAGE, is_url
    from harness.track.mlflow_run import mask_uri

    storage = storage or DEFAULT_STORAGE
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _load_existing(study_name, storage)
    trials = study.get_trials(deepcopy=False)
    maximize = study.direction.name == "MAXIMIZE"
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = (max if maximize else min)(complete, key=lambda t: t.value) if complete else None
    failed = [t for t in trials if t.state.name == "FAIL"][-_SHOWN_FAILURES:]
    running = [t for t in trials if t.state.name == "RUNNING"]
    is_database = is_url(storage)
    numbers = [t.number for t in running]
    ages = optuna_access.heartbeat_ages(storage, study_name, numbers) if is_database and running else {}
    return StudyStatus(
        study_name=study_name,
        storage=mask_uri(storage),
        direction="maximize" if maximize else "minimize",
        metric=study.user_attrs.get("metric") or (study.metric_names or ["value"])[0],
        counts={state: sum(t.state.name == state for t in trials) for state in STATES},
        target=study.user_attrs.get("target_trials"),
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        failures=[(t.number, _one_line(t.user_attrs.get("fail_reason") or "no reason recorded")) for t in failed],
        workers=[_worker(t, ages.get(t.number)) for t in running],
        heartbeats=is_database,
        grace_period=grace_period,
        parent=_parent_run(study, tracking_uri),
    )


def _missing_study(study_name: str, storage: str, why: str) -> StudyError:
    from harness.track.mlflow_run import mask_uri

    shown = mask_uri(storage)
    return StudyError(f"study {study_name!r} must exist in storage {shown}, but {why}; "
                      f"`optuna studies --storage {shown}` lists a storage's studies (or pass the sweep's --storage)")


def _open_existing(study_name: str, storage: str) -> BaseStorage:
    """The storage, opened only if it is there: opening a journal or SQLite file that is not would create it."""
    import optuna
    from sqlalchemy.engine import make_url

    from harness.sweep.storage import check_storage, journal_path, open_storage

    kind = check_storage(storage)
    if kind == "journal":
        if not journal_path(storage).is_file():
            raise _missing_study(study_name, storage, "no such journal file exists")
        return open_storage(storage, repair_cut=False)  # a cut last record is the next worker's to drop
    if kind == "sqlite":
        database = make_url(storage).database
        if database in (None, "", ":memory:") or not Path(database).is_file():
            raise _missing_study(study_name, storage, "no such SQLite file exists")
    # Without skip_table_creation, an empty database would get Optuna's tables.
    return optuna.storages.RDBStorage(storage, skip_table_creation=True)


def _load_existing(study_name: str, storage: str) -> optuna.Study:
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        opened = _open_existing(study_name, storage)
        names = optuna.get_all_study_names(opened)
    except SQLAlchemyError as exc:
        # A database without Optuna's tables, or one that cannot be reached.
        why = f"it cannot be read as an Optuna storage ({_first_line(exc)})"
        raise _missing_study(study_name, storage, why) from None
    if study_name not in names:
        held = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise _missing_study(study_name, storage, f"it holds {'only ' + held if names else 'no study'}")
    return optuna.load_study(study_name=study_name, storage=opened)


def _worker(trial: optuna.trial.FrozenTrial, heartbeat_age: float | None) -> WorkerStatus:
    host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
    started = trial.datetime_start
    return WorkerStatus(
        trial=trial.number,
        host=host,
        pid=pid,
        running_seconds=None if started is None else (datetime.now() - started).total_seconds(),
        alive=pid_alive(int(pid)) if pid is not None and host == socket.gethostname() else None,
        heartbeat_age=heartbeat_age,
    )


def _missing_tracking_store(uri: str) -> bool:
    """A local tracking store that is not there: MLflow would create it (tables, default experiment) on opening."""
    from urllib.parse import urlparse

    from sqlalchemy.engine import make_url

    if uri.startswith("sqlite:"):
        database = make_url(uri).database
        return database in (None, "", ":memory:") or not Path(database).is_file()
    if uri.startswith("file:"):
        return not Path(urlparse(uri).path).is_dir()
    return "://" not in uri and not Path(uri).is_dir()


def _parent_run(study: optuna.Study, tracking_uri: str | None) -> ParentRunStatus:
    """The run the study records (user attr `mlflow_parent_run_id`), else the newest run tagged as its parent."""
    from harness.track.mlflow_run import mask_uri, open_client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    shown = mask_uri(uri)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if _missing_tracking_store(uri):
        return ParentRunStatus(shown, run_id, problem=f"no MLflow store at {shown} (pass the sweep's --tracking-uri)")
    try:
        client = open_client(uri)
        if run_id is not None:
            run = client.get_run(run_id)
        else:
            experiments = [e.experiment_id for e in client.search_experiments()]
            name = study.study_name.replace("'", "\\'")
            runs = client.search_runs(
                experiments, f"tags.`harness.role` = 'sweep' and tags.`harness.study` = '{name}'",
                order_by=["attributes.start_time DESC"], max_results=1,
            )
            if not runs:
                return ParentRunStatus(shown, problem=f"none recorded on the study, nor tagged for it in {shown}")
            run = runs[0]
    except Exception as exc:  # MLflow raises its own error types per store; any of them means "cannot tell"
        return ParentRunStatus(shown, run_id, problem=f"cannot be read from {shown}: {_first_line(exc)}")
    return ParentRunStatus(shown, run.info.run_id, run.info.status, run.info.experiment_id)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return _cut(text.splitlines()[0] if text else type(exc).__name__, 160)


def _one_line(text: str) -> str:
    # A reason may hold a traceback's lines; on the status screen each failure takes one.
    return " ".join(text.split())


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _liveness(worker: WorkerStatus, status: StudyStatus) -> str:
    """What this machine can tell about a running trial's worker: its pid here, its heartbeat in a database."""
    if worker.alive is True:
        parts = ["alive"]
    elif worker.alive is False:
        parts = ["gone: the next worker here fails and retries it"]
    else:
        parts = ["on another host" if worker.pid is not None else "no worker pid recorded"]
    if status.heartbeats:
        if worker.heartbeat_age is None:
            parts.append("no heartbeat recorded")
        elif worker.heartbeat_age > status.grace_period:
            parts.append(f"heartbeat {_duration(worker.heartbeat_age)} ago, past the {status.grace_period} s grace "
                         f"period: the next worker fails and retries it")
        else:
            parts.append(f"heartbeat {_duration(worker.heartbeat_age)} ago")
    elif worker.alive is None:
        parts.append("a journal keeps no heartbeats")
    return "; ".join(parts)


def format_status(status: StudyStatus, width: int = 100) -> str:
    """The status as at most about 30 lines of plain text, each cut to `width` characters."""
    counts = status.counts
    finished = f"{status.finished} of {status.target}" if status.target is not None else f"{status.finished}"
    lines = [
        f"study {status.study_name}: {status.direction} {status.metric}; storage {status.storage}",
        f"trials: {finished} finished ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned); "
        f"{counts['FAIL']} failed, {counts['RUNNING']} running, {counts['WAITING']} waiting",
    ]
    if status.best_number is None:
        lines.append("best: no completed trial yet")
    else:
        lines.append(f"best: trial {status.best_number}, {status.metric} {status.best_value:.4f} "
                     f"(`harness export-best --study-name {status.study_name}` writes its config)")
    if status.failures:
        lines.append(f"failed trials (last {len(status.failures)} of {counts['FAIL']}):")
        lines += [f"  trial {number}: {reason}" for number, reason in status.failures]
    if status.workers:
        lines.append(f"running trials ({len(status.workers)}), seen from {status.this_host}:")
        for worker in status.workers[:_SHOWN_WORKERS]:
            where = f"{worker.host or '?'} pid {worker.pid if worker.pid is not None else '?'}"
            since = "" if worker.running_seconds is None else f", running {_duration(worker.running_seconds)}"
            lines.append(f"  trial {worker.trial} on {where}{since}: {_liveness(worker, status)}")
        if len(status.workers) > _SHOWN_WORKERS:
            lines.append(f"  ... and {len(status.workers) - _SHOWN_WORKERS} more")
    if counts["WAITING"]:
        lines.append(f"waiting: {counts['WAITING']} enqueued trial(s) (first configs, or retries) "
                     f"for the next free worker")
    parent = status.parent
    if parent.problem is not None:
        recorded = f" {parent.run_id}" if parent.run_id else ""
        lines.append(f"MLflow parent run{recorded}: {parent.problem}")
    else:
        lines.append(f"MLflow parent run {parent.run_id}: {parent.status}, experiment {parent.experiment_id} "
                     f"in {parent.tracking_uri}")
        if parent.ui_command is not None:
            lines.append(f"  serve: {parent.ui_command}")
        lines.append(f"  open:  {parent.link}")
    # The command and the link stay whole: cut, they would run or open nothing.
    return "\n".join(line if line.startswith(("  serve:", "  open:")) else _cut(line, width) for line in lines)

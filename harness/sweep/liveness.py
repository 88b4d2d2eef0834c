"""Which workers are still alive: heartbeats while a trial trains, and failing (then retrying once) the trials of dead ones.

A worker killed with SIGKILL (or a machine that lost power) leaves its trial RUNNING forever.
Two signs tell that it is gone: on the same machine, the pid recorded on the trial no longer
exists; on any machine, a database storage's heartbeat is older than its grace period. (A trial
its worker never marked, dying right after asking for it, is dead by construction.) Either
way the trial is failed with a reason and its parameters are enqueued once more, marked
`retry_of`, so the study still reaches its target count and a retry can resume from the dead
trial's `last` checkpoint.
"""

from __future__ import annotations

import os
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from harness.sweep import optuna_access

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["Heartbeat", "pid_alive", "reap_dead_trials", "retry_once", "mark_worker", "fail_stale_trials", "HEARTBEAT_INTERVAL", "GRACE_PERIOD"]

# A running trial's worker beats once a minute; after three silent minutes another worker retries it.
HEARTBEAT_INTERVAL = 60
GRACE_PERIOD = 180


def mark_worker(trial: optuna.Trial) -> None:
    """Record which process runs the trial, so a restart on this machine can tell whether it died.

    The pid goes first: a trial with a host always has its pid, and one killed in between has no host (see
    `reap_dead_trials`).
    """
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_once(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a dead trial's parameters again, unless it was a retry itself."""
    if trial.user_attrs.get("retry_of") is not None:
        return  # retried once, not forever
    attrs = {k: v for k, v in trial.user_attrs.items() if k == "enqueued_from"}
    # A trial that died before its first suggest has no params yet, only those it was enqueued with.
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    study.enqueue_trial(params, user_attrs={**attrs, "retry_of": trial.number})


def _death(trial: FrozenTrial, host: str) -> str | None:
    """Why the RUNNING `trial`'s worker is known to be dead, or None when it may be alive (or is on another machine)."""
    if "host" not in trial.user_attrs:
        # Workers ask for a trial and mark it in one hold of the storage lock, which the reaper holds now: a trial
        # without a host was asked by a worker that died before marking it, on whichever machine. No pid and no
        # heartbeat would ever tell, and as RUNNING it would count towards --trials for good.
        return "worker died (before it marked the trial)"
    if trial.user_attrs["host"] != host:
        return None  # another machine's: its heartbeat decides (fail_stale_trials)
    pid = trial.user_attrs.get("pid")
    return "worker died (process gone)" if pid is None or not pid_alive(int(pid)) else None


def reap_dead_trials(study: optuna.Study, retry: bool = True) -> list[int]:
    """Fail RUNNING trials whose worker on this machine (recorded host and pid) is gone; enqueue each once more.

    Call it holding `storage.storage_lock`, as the sweep does: a RUNNING trial not yet marked by `mark_worker` is
    then known to be dead too.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _death(t, host)
        if reason is None:
            continue
        # The dead worker's Trial object is gone; the storage is the only handle left on its trial.
        trial = optuna_access.fail_trial(study, t, reason)
        if trial is None:
            continue  # another worker failed it first (a hold whose lock a database restart took away), and retried it
        reaped.append(trial.number)
        if retry:
            retry_once(study, trial)
    return reaped


def fail_stale_trials(study: optuna.Study, retry: bool = True) -> list[int]:
    """Fail the trials whose heartbeat went stale (database storages with a heartbeat only); enqueue each once more.

    Optuna's own `fail_stale_trials` fails them first and calls back after, when a finished trial
    no longer takes the reason as a user attribute; so the stale trials are asked for directly.
    """
    failed = []
    for stale in optuna_access.stale_trials(study):
        trial = optuna_access.fail_trial(study, stale, "worker lost: its heartbeat stopped (grace period over)")
        if trial is None:
            continue  # another worker failed it first, and retried it
        failed.append(trial.number)
        if retry:
            retry_once(study, trial)
    return failed


class Heartbeat:
    """Beats for one trial every `interval` seconds in a daemon thread, while the trial trains.

    Does nothing on storages without a heartbeat (journal files, or `--heartbeat 0`).
    """

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self.study = study
        self.trial = trial
        self.interval = optuna_access.heartbeat_interval(study)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            try:
                optuna_access.record_heartbeat(self.study, self.trial)
            except Exception:  # a missed beat is retried; the grace period allows several
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial.number}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

"""Sustained chaos, measured: two real sweep workers share one study, and every few seconds one of them is killed with
SIGKILL and started again with the same command, KILLS_PER_STORAGE times; then both finish the sweep undisturbed.
The schedule is random and seeded: after a random pause, either any worker, or (MID_TRIAL_SHARE of the kills) one
that the study shows running a trial, so kills land mid-trial however long start-ups take on a busy machine.

A kill lands wherever the worker is: importing, indexing, filling the frame cache, opening the study, reaping a dead
trial, asking, training, writing a checkpoint, a journal record or an MLflow call. Afterwards nothing may be lost:
exactly TRIALS finished trials, numbered without gaps or repeats, none RUNNING or WAITING, every MLflow run closed, and
every finished trial's checkpoints loadable. Each run prints its figures (kills, trials, retries, wall time); the
README's "What a sweep survives" table quotes them. Every wait is bounded.

Two places a kill can land are also pinned on their own, so they fail (or pass) every time rather than when the
schedule happens to hit them: between a worker's ask and its marking the trial, and MLflow's first migration of a
new SQLite tracking store (which the harness builds under a temporary name, so a kill there leaves no store).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from harness.faults import ENV_VAR
from harness.sweep.storage import open_storage
from harness.sweep.study import finished_count
from services import fresh_postgres_db, postgres_url  # noqa: F401
from helpers import write_space

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KILLS_PER_STORAGE = 25  # 50 in all over the journal file and PostgreSQL
SEED = 20261128  # the kill schedule: which worker, and when
TRIALS = 24  # enough that the sweep cannot finish while the kills go on (a few trials finish under fire)
EPOCHS = 2  # per trial: a kill can land between a trial's checkpoints, and its retry resumes from epoch 1
WORKERS = 2
KILL_INTERVAL = (0.5, 3.0)  # seconds of pause before each kill, uniform
# The share of kills aimed at a worker the study shows in a trial; the others hit a random worker, which on 2 cores
# is often still starting (about 5 s, longer when busy).
MID_TRIAL_SHARE = 0.5
CHAOS_TIMEOUT = 240  # seconds for all the kills
FINISH_TIMEOUT = 180  # seconds for the workers to finish the sweep after the last kill
STUDY = "soak"
FINAL_RUN_STATES = {"FINISHED", "FAILED", "KILLED"}
_DEAD_WORKER_REASONS = ("worker died", "worker lost")  # liveness.py's fail_reason for a reaped trial


@dataclass
class SoakFigures:
    storage: str
    kills: int
    finished: int
    trials: int  # every trial in the study: finished, failed by a kill, and retries
    aimed_mid_trial: int  # kills aimed at a worker the study showed running a trial
    finished_under_fire: int  # trials finished by the last kill
    reaped: int  # trials failed because their worker was killed mid-trial
    retries: int  # trials enqueued again by liveness.retry_once (`retry_of`)
    wall_seconds: float
    journal_lock_breaks: int  # Optuna's journal lock left by a killed worker, broken by another after its 30 s grace

    def line(self) -> str:
        return (f"soak on {self.storage}: {self.kills} kills ({self.aimed_mid_trial} aimed mid-trial), "
                f"{self.finished} finished ({self.finished_under_fire} by the last kill) of {self.trials} trials, "
                f"{self.reaped} reaped, {self.retries} retries, {self.journal_lock_breaks} journal locks broken, "
                f"{self.wall_seconds:.0f} s")


class WorkerPool:
    """`size` copies of one `harness sweep` command, each one killed and restarted on demand.

    Each start gets its own session (so SIGKILL reaches anything the worker started) and its own log file.
    """

    def __init__(self, command: list[str], cwd: Path, size: int) -> None:
        self.command, self.cwd = command, cwd
        self.logs = cwd / "logs"
        self.logs.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.log_paths: list[Path] = []
        for _ in range(size):
            proc, log_path = self._spawn()
            self.procs.append(proc)
            self.log_paths.append(log_path)

    def _spawn(self) -> tuple[subprocess.Popen, Path]:
        env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OMP_NUM_THREADS", "1")  # two workers on a 2-core machine: one torch thread each
        log_path = self.logs / f"start-{len(list(self.logs.iterdir()))}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(self.command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return proc, log_path

    def kill_and_restart(self, slot: int) -> None:
        os.killpg(self.procs[slot].pid, signal.SIGKILL)
        self.procs[slot].wait(timeout=30)
        self.procs[slot], self.log_paths[slot] = self._spawn()

    def slots_of(self, pids: set[int]) -> list[int]:
        """The slots whose current process has one of `pids`."""
        return [slot for slot, proc in enumerate(self.procs) if proc.pid in pids]

    def exited(self) -> list[tuple[int, int]]:
        """(slot, exit code) of the workers that have exited."""
        return [(slot, proc.returncode) for slot, proc in enumerate(self.procs) if proc.poll() is not None]

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def tail(self, slot: int, lines: int = 25) -> str:
        text = self.log_paths[slot].read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log_paths[slot].name} (worker {slot}) ---\n" + "\n".join(text)

    def count_in_logs(self, text: str) -> int:
        return sum(path.read_text(errors="replace").count(text) for path in self.logs.glob("*.log"))


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("harness").experiment_id], max_results=5000)


def _sweep_command(space: Path, trials: int, storage: str, uri: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "sweep", "--space", str(space), "--trials", str(trials),
            "--storage", storage, "--study-name", STUDY, "--tracking-uri", uri, "--quiet", *extra]


class TrialWatch:
    """Which workers' pids the study shows running a trial, read from its storage.

    The storage is opened once a trial folder exists: by then a worker has created the study (and Optuna's tables)
    under the sweep's storage lock, which a reader opening a fresh database would race.
    """

    def __init__(self, storage: str, sweep_dir: Path) -> None:
        self.url, self.sweep_dir = storage, sweep_dir
        self.storage = None
        self.study_id = None

    def _trials(self, state: TrialState) -> list:
        if self.storage is None:
            if not any(self.sweep_dir.glob("trial-*")):
                return []
            self.storage = open_storage(self.url)
            self.study_id = self.storage.get_study_id_from_name(STUDY)
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=(state,))

    def pids_in_trials(self) -> set[int]:
        return {t.user_attrs.get("pid") for t in self._trials(TrialState.RUNNING)}

    def finished(self) -> int:
        return len(self._trials(TrialState.COMPLETE)) + len(self._trials(TrialState.PRUNED))


def _unleash(pool: WorkerPool, watch: TrialWatch, kills: int, rng: random.Random) -> int:
    """Kill a worker and restart it, `kills` times, within CHAOS_TIMEOUT; how many kills were aimed at a trial."""
    deadline = time.monotonic() + CHAOS_TIMEOUT
    aimed = 0
    for done in range(kills):
        pause_until = time.monotonic() + rng.uniform(*KILL_INTERVAL)
        while time.monotonic() < pause_until:
            _check_chaos(pool, deadline, done, kills)
            time.sleep(0.1)
        if rng.random() < MID_TRIAL_SHARE:
            while not (training := pool.slots_of(watch.pids_in_trials())):
                _check_chaos(pool, deadline, done, kills)
                time.sleep(0.2)
            slot = rng.choice(training)
            aimed += 1
        else:
            slot = rng.randrange(len(pool.procs))
        pool.kill_and_restart(slot)
    return aimed


def _check_chaos(pool: WorkerPool, deadline: float, done: int, kills: int) -> None:
    """Fail, stopping every worker, when one exited on its own or the kills ran past CHAOS_TIMEOUT."""
    for slot, code in pool.exited():
        pool.kill_all()
        why = ("the sweep finished before the kills did: raise TRIALS" if code == 0
               else "a worker must survive its neighbour's death")
        raise AssertionError(f"worker {slot} exited ({code}) on its own after {done} of {kills} kills; "
                             f"{why}\n{pool.tail(slot)}")
    if time.monotonic() > deadline:
        pool.kill_all()
        raise AssertionError(f"only {done} of {kills} kills within CHAOS_TIMEOUT ({CHAOS_TIMEOUT} s)")


def _let_finish(pool: WorkerPool) -> None:
    """Wait, within FINISH_TIMEOUT, for every worker to finish the sweep and exit 0."""
    deadline = time.monotonic() + FINISH_TIMEOUT
    while len(pool.exited()) < len(pool.procs):
        if time.monotonic() > deadline:
            pool.kill_all()
            tails = "\n".join(pool.tail(slot) for slot in range(len(pool.procs)))
            raise AssertionError(f"the workers did not finish the sweep within FINISH_TIMEOUT ({FINISH_TIMEOUT} s) "
                                 f"after the last kill\n{tails}")
        time.sleep(0.5)
    for slot, code in pool.exited():
        assert code == 0, pool.tail(slot, lines=60)


def _soak(root: Path, tmp: Path, storage: str, label: str) -> SoakFigures:
    """Run the sweep through the kills, then check the study, MLflow and the checkpoints; the run's figures."""
    # A copy without the frame cache and manifest: indexing and filling the cache happen under fire too, and the
    # session's shared tree is never written.
    data = tmp / "data"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns(".harness_*"))
    space = write_space(tmp, data, {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 0}, epochs=EPOCHS)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # Every kill mid-trial fails a trial; the default --max-failures 10 would stop the workers long before the end.
    command = _sweep_command(space, TRIALS, storage, uri, "--max-failures", str(10 * KILLS_PER_STORAGE))

    # The tracking store is not made beforehand: the first kills may land in its creation, which leaves no store
    # behind (test_a_kill_during_mlflow_store_creation_leaves_it_usable pins that case on its own).
    started = time.monotonic()
    pool = WorkerPool(command, tmp, WORKERS)
    try:
        watch = TrialWatch(storage, tmp / "runs" / "sweeps" / STUDY)
        aimed = _unleash(pool, watch, KILLS_PER_STORAGE, random.Random(SEED))
        finished_under_fire = watch.finished()
        _let_finish(pool)
    finally:
        pool.kill_all()
    wall = time.monotonic() - started

    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage))
    trials = study.get_trials()
    states = {t.number: t.state.name for t in trials}
    assert finished_count(study) == TRIALS, states
    assert [t.number for t in trials] == list(range(len(trials))), "trial numbers repeat or skip"
    assert not [n for n, s in states.items() if s in ("RUNNING", "WAITING")], states
    failed = {t.number: t.user_attrs.get("fail_reason") for t in trials if t.state.name == "FAIL"}
    assert all(str(reason).startswith(_DEAD_WORKER_REASONS) for reason in failed.values()), failed
    assert failed, f"none of the {aimed} kills aimed mid-trial failed a trial"

    runs = _runs(uri)
    assert {r.info.status for r in runs} <= FINAL_RUN_STATES, {r.info.run_name: r.info.status for r in runs}
    [parent] = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    children = [int(r.data.tags["optuna.trial"]) for r in runs if "optuna.trial" in r.data.tags]
    assert len(children) == len(set(children)), f"a trial has two MLflow runs: {sorted(children)}"

    by_id = {r.info.run_id: r for r in runs}
    for trial in trials:
        if trial.state.name not in ("COMPLETE", "PRUNED"):
            continue
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED", (trial.number, run.info.status)
        run_dir = Path(run.data.tags["run_dir"])
        assert run_dir.name == f"trial-{trial.number}"
        checkpoints = sorted(run_dir.glob("*.pt"))
        assert run_dir / "last.pt" in checkpoints, (trial.number, checkpoints)
        for path in checkpoints:
            torch.load(path, map_location="cpu", weights_only=True)

    return SoakFigures(
        storage=label,
        kills=KILLS_PER_STORAGE,
        aimed_mid_trial=aimed,
        finished_under_fire=finished_under_fire,
        finished=finished_count(study),
        trials=len(trials),
        reaped=len(failed),
        retries=sum(t.user_attrs.get("retry_of") is not None for t in trials),
        wall_seconds=wall,
        journal_lock_breaks=pool.count_in_logs("Forcibly releasing the lock file"),
    )


def _report(figures: SoakFigures, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n{figures.line()}")


def test_two_workers_on_a_journal_file_lose_nothing_to_repeated_kill_9(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _report(_soak(synthetic_root, tmp_path, str(tmp_path / "optuna.journal"), "a journal file"), capsys)


def test_two_workers_on_postgres_lose_nothing_to_repeated_kill_9(
    synthetic_root: Path, tmp_path: Path, fresh_postgres_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _report(_soak(synthetic_root, tmp_path, fresh_postgres_db, "PostgreSQL"), capsys)


def test_a_worker_killed_between_asking_for_a_trial_and_marking_it_does_not_hold_the_target(
    synthetic_root: Path, tmp_path: Path
) -> None:
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=1)
    storage, uri = str(tmp_path / "optuna.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = subprocess.run(_sweep_command(space, 1, storage, uri), cwd=tmp_path, capture_output=True, text=True,
                           timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    # A worker that dies right after `study.ask()`, before `mark_worker` records its pid and host.
    asker = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys, optuna; from harness.sweep.storage import open_storage; "
         "optuna.load_study(study_name=sys.argv[1], storage=open_storage(sys.argv[2])).ask(); "
         "os.kill(os.getpid(), signal.SIGKILL)", STUDY, storage],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert asker.returncode == -signal.SIGKILL, asker.stderr

    rerun = subprocess.run(_sweep_command(space, 2, storage, uri), cwd=tmp_path, capture_output=True, text=True,
                           timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage))
    trials = study.get_trials()
    # 0: the first run's; 1: the unmarked one, failed; 2: its retry, which the target was waiting for.
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[1].user_attrs["fail_reason"] == "worker died (before it marked the trial)"
    assert trials[2].user_attrs["retry_of"] == 1
    # Trial 1 died before suggesting anything: its retry runs what it was enqueued with.
    assert trials[2].user_attrs["enqueued_from"] == "recommended.yaml"
    assert trials[2].params == trials[1].system_attrs["fixed_params"]
    assert not [r for r in _runs(uri) if r.info.status == "RUNNING"]  # the parent closed: no trial left running


# Run as a child: SIGKILL itself right after MLflow's migrations create one table of a new SQLite store.
_DIE_MID_MIGRATION = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "after_cursor_execute")
def _die(conn, cursor, statement, *args):
    if statement.lstrip().startswith("CREATE TABLE trace_info"):
        os.kill(os.getpid(), signal.SIGKILL)

from harness.track.mlflow_run import open_client
open_client(sys.argv[1]).search_experiments()
"""


def test_a_kill_during_mlflow_store_creation_leaves_it_usable(synthetic_root: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = subprocess.run([sys.executable, "-c", _DIE_MID_MIGRATION, uri], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, f"the kill point (CREATE TABLE trace_info) never came:\n{killed.stderr}"
    # The half-migrated store was a temporary file: the store's own name is still free.
    assert not (tmp_path / "mlflow.db").exists()

    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=1)
    done = subprocess.run(_sweep_command(space, 1, str(tmp_path / "optuna.journal"), uri), cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

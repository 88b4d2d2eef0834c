"""Study bookkeeping on real storages: dead workers' trials, storage resolution, URI masking, the summary of a
study in either direction, and the exit code of per-GPU workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from harness.sweep.storage import open_storage
from harness.sweep.liveness import reap_dead_trials
from harness.track.mlflow_run import mask_uri
from services import postgres_url  # noqa: F401


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_workers_trial_is_failed_and_retried_once(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "optuna.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = study.ask()
    orphan.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", _dead_pid())
    alive = study.ask()
    alive.set_user_attr("host", socket.gethostname())
    alive.set_user_attr("pid", subprocess.os.getpid())

    assert reap_dead_trials(study) == [orphan.number]
    trials = study.get_trials()
    assert trials[orphan.number].state.name == "FAIL"
    assert trials[orphan.number].user_attrs["fail_reason"] == "worker died (process gone)"
    assert trials[alive.number].state.name == "RUNNING"
    retry = study.ask()
    assert retry.params == {} and retry.suggest_float("optim.lr", 1e-4, 1e-2, log=True) == orphan.params["optim.lr"]
    assert study.get_trials()[retry.number].user_attrs["retry_of"] == orphan.number

    # A retry that dies too is not retried again.
    retry.set_user_attr("host", socket.gethostname())
    retry.set_user_attr("pid", _dead_pid())
    n_before = len(study.get_trials())
    assert reap_dead_trials(study) == [retry.number]
    assert len(study.get_trials()) == n_before
    assert not [t for t in study.get_trials() if t.state.name == "WAITING"]


def test_storage_urls_and_files_are_told_apart(tmp_path: Path) -> None:
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'o.db'}"), optuna.storages.RDBStorage)
    assert isinstance(open_storage(str(tmp_path / "sub" / "o.journal")), optuna.storages.JournalStorage)
    assert (tmp_path / "sub" / "o.journal").exists()


def test_passwords_are_masked_before_logging() -> None:
    assert mask_uri("postgresql://alice:s3cret@db.example:5432/optuna") == "postgresql://alice:***@db.example:5432/optuna"
    assert mask_uri("sqlite:///optuna.db") == "sqlite:///optuna.db"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_stale_heartbeat_fails_a_trial_from_another_machine_and_retries_it_once(tmp_path: Path) -> None:
    import time

    from harness.sweep.liveness import Heartbeat, fail_stale_trials, reap_dead_trials

    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage)
    lost = study.ask()
    lost.suggest_int("model.fold_div", 4, 8)
    lost.set_user_attr("host", "another-machine")  # its pid means nothing here; only the heartbeat can tell
    lost.set_user_attr("pid", 1)
    beating = study.ask()
    beating.set_user_attr("host", "another-machine")
    with Heartbeat(study, beating):
        with Heartbeat(study, lost):
            time.sleep(0.2)  # one beat each, then `lost` falls silent
        assert reap_dead_trials(study) == []  # another host: the pid check must leave it alone
        time.sleep(3.2)
        assert fail_stale_trials(study) == [lost.number]
    trials = study.get_trials()
    assert trials[lost.number].state.name == "FAIL"
    assert "heartbeat stopped" in trials[lost.number].user_attrs["fail_reason"]
    assert trials[beating.number].state.name == "RUNNING"
    retry = study.ask()
    assert retry.user_attrs["retry_of"] == lost.number
    assert retry.suggest_int("model.fold_div", 4, 8) == lost.params["model.fold_div"]
    assert fail_stale_trials(study) == []  # already failed: not failed (or retried) twice


def test_the_count_then_ask_lock_is_held_by_the_database_for_postgres(postgres_url: str) -> None:
    import threading

    from harness.sweep.storage import storage_lock

    order: list[str] = []

    def second_worker() -> None:
        with storage_lock(postgres_url):
            order.append("other")

    with storage_lock(postgres_url):
        other = threading.Thread(target=second_worker)
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive() and order == []  # blocked by the server while this holds it
        order.append("first")
    other.join(timeout=10)
    assert order == ["first", "other"]


def test_gpus_must_be_distinct_indices() -> None:
    from harness.errors import HarnessError
    from harness.sweep.workers import parse_gpus

    assert parse_gpus("0, 1") == ["0", "1"]
    for bad in ("", "0,0", "cuda:0", "a,b"):
        with pytest.raises(HarnessError, match="--gpus must list distinct GPU indices"):
            parse_gpus(bad)


def test_worker_exit_codes_combine_to_the_worst_with_a_signal_counting_as_failure() -> None:
    from harness.sweep.workers import combined_exit_code

    assert combined_exit_code([0, 0]) == 0
    assert combined_exit_code([0, -signal.SIGKILL]) == 128 + signal.SIGKILL  # Popen's -9: killed, not success
    assert combined_exit_code([1, 0]) == 1
    assert combined_exit_code([2, -signal.SIGTERM]) == 128 + signal.SIGTERM


def test_a_worker_killed_by_a_signal_beside_a_successful_one_fails_the_launch(capsys) -> None:
    from harness.sweep.workers import Worker, run_workers

    env = dict(os.environ)
    ok = Worker("ok", [sys.executable, "-c", "print('done')"], env)
    killed = Worker("killed", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], env)
    assert run_workers([ok, killed]) == 128 + signal.SIGKILL
    assert run_workers([ok, ok]) == 0
    assert "[ok] done" in capsys.readouterr().out


def _study_of(direction: str, values: list[float]) -> optuna.Study:
    """An in-memory study whose trials completed with `values` (3 epochs each), then one pruned after 1 epoch."""
    study = optuna.create_study(study_name="s", direction=direction)
    for value in values:
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
        trial.set_user_attr("epochs_run", 3)
        study.tell(trial, value)
    pruned = study.ask()
    pruned.set_user_attr("epochs_run", 1)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    return study


@pytest.mark.parametrize(("direction", "best_number", "order"), [("minimize", 1, [0.2, 0.5, 0.9]),
                                                                 ("maximize", 2, [0.9, 0.5, 0.2])])
def test_the_summary_ranks_by_the_studys_direction_and_names_its_metric(
    direction: str, best_number: int, order: list[float], capsys
) -> None:
    from harness.sweep.report import print_summary, summarise

    summary = summarise(_study_of(direction, [0.5, 0.2, 0.9]), "loss", epochs=3, parent_run_id="p", wall=1.0,
                        ran_here=4)
    assert (summary.direction, summary.best_number, summary.best_value) == (direction, best_number, order[0])
    assert [r["loss"] for r in summary.rows if r["state"] == "COMPLETE"] == order
    assert (summary.n_complete, summary.n_pruned, summary.epochs_spent, summary.epochs_unpruned) == (3, 1, 10, 12)

    print_summary(summary)
    out = capsys.readouterr().out
    first = "lowest" if direction == "minimize" else "highest"
    assert f"top trials by loss ({first} first)" in out
    assert f"best: trial {best_number}, loss {order[0]:.4f}" in out
    assert "auc" not in out.lower()


def test_the_progress_display_names_the_metric_and_shows_the_lowest_as_best_when_minimizing() -> None:
    from harness.sweep.report import TrialBar
    from harness.sweep.trial import TrialOutcome

    study = optuna.create_study(direction="minimize")
    with TrialBar(4, enabled=False, metric="loss") as bar:
        for value in (0.5, 0.2, 0.9):
            trial = study.ask()
            bar.start_trial(trial.number, "sampled")
            bar.update(epoch=3, epochs=3, value=value)
            study.tell(trial, value)
            bar.end_trial(TrialOutcome("COMPLETE", value, "completed", 3), study)
        assert bar.best == 0.2
        assert "val loss 0.900 | best 0.200" in bar.progress.tasks[0].description


def test_the_parent_run_gets_the_best_value_under_the_metrics_name(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from harness.sweep.report import log_study_artifacts, summarise

    study = _study_of("minimize", [0.5, 0.2, 0.9])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.create_run(client.create_experiment("e")).info.run_id
    log_study_artifacts(client, parent, study, summarise(study, "loss", 3, parent, 1.0, 4))
    metrics = client.get_run(parent).data.metrics
    assert metrics["best_loss"] == metrics["best_value"] == 0.2
    assert metrics["n_complete"] == 3 and metrics["n_pruned"] == 1


def test_workers_sharing_a_seeded_study_get_samplers_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from harness.sweep.study import _worker_seed
    from harness.sweep.workers import WORKER_INDEX_ENV

    monkeypatch.delenv(WORKER_INDEX_ENV, raising=False)
    study = optuna.create_study()
    assert _worker_seed(None, study) is None  # an unseeded sampler draws its own seed already
    assert _worker_seed(0, study) is None  # a lone worker keeps the space's seed: reproducible
    monkeypatch.setenv(WORKER_INDEX_ENV, "1")
    assert _worker_seed(0, study) == 1_000_003  # the second --gpus worker
    monkeypatch.setenv(WORKER_INDEX_ENV, "0")
    study.ask()  # a trial running elsewhere: this worker joins a shared study
    joined = _worker_seed(0, study)
    assert joined is not None and joined != 0
    study.tell(0, 0.5)  # nothing running: a resumed study, offset by its trial count
    assert _worker_seed(0, study) == 104_729
    # Seeds that differ really give other draws.
    draws = [optuna.samplers.RandomSampler(seed=s).sample_independent(
        study, study.ask(), "x", optuna.distributions.FloatDistribution(0, 1)) for s in (0, joined)]
    assert draws[0] != draws[1]


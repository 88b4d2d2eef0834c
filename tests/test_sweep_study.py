"""Study bookkeeping on a real journal storage: dead workers' trials, storage resolution, URI masking."""

from __future__ import annotations

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
    with Heartbeat(storage, beating._trial_id):
        with Heartbeat(storage, lost._trial_id):
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

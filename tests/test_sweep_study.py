"""Study bookkeeping on a real journal storage: dead workers' trials, storage resolution, URI masking."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import optuna

from harness.sweep.storage import open_storage
from harness.sweep.liveness import reap_dead_trials
from harness.track.mlflow_run import mask_uri


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

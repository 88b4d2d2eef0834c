"""The Optuna internals behind `harness.sweep.optuna_access`, each checked on real storages.

These fail first when an Optuna release moves `Study._storage`, `Trial._trial_id` or the heartbeat
internals; pyproject.toml bounds optuna to the major version they pass on.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError

from harness.sweep import optuna_access
from harness.sweep.storage import open_storage


@pytest.fixture(params=["in-memory", "journal", "sqlite"])
def study(request: pytest.FixtureRequest, tmp_path: Path) -> optuna.Study:
    """A fresh study on each kind of storage the sweep can meet (sqlite without a heartbeat)."""
    storage = {
        "in-memory": lambda: optuna.storages.InMemoryStorage(),
        "journal": lambda: open_storage(str(tmp_path / "optuna.journal")),
        "sqlite": lambda: open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"),
    }[request.param]()
    return optuna.create_study(study_name="s", storage=storage)


def test_a_trial_another_process_asked_for_takes_a_user_attr_and_reloads_with_it(study: optuna.Study) -> None:
    study.ask()
    [snapshot] = study.get_trials(deepcopy=False)  # what a worker sees of a trial it did not ask for
    optuna_access.set_trial_user_attr(study, snapshot, "fail_reason", "worker died (process gone)")
    assert optuna_access.reload_trial(study, snapshot).user_attrs == {"fail_reason": "worker died (process gone)"}


def test_a_finished_trial_refuses_user_attrs(study: optuna.Study) -> None:
    trial = study.ask()
    study.tell(trial, 1.0)
    [frozen] = study.get_trials()
    with pytest.raises(UpdateFinishedTrialError):
        optuna_access.set_trial_user_attr(study, frozen, "fail_reason", "too late")


def test_fail_trial_records_the_reason_then_fails_and_reports_a_trial_finished_before(study: optuna.Study) -> None:
    study.ask()
    study.ask()
    first, second = study.get_trials()
    failed = optuna_access.fail_trial(study, first, "worker lost")
    assert failed is not None and failed.number == first.number
    assert failed.state.name == "FAIL" and failed.user_attrs["fail_reason"] == "worker lost"
    assert optuna_access.fail_trial(study, first, "worker lost") is None  # another worker was first
    assert study.get_trials()[second.number].state.name == "RUNNING"


def test_storages_without_a_heartbeat_have_no_interval_and_no_stale_trials(study: optuna.Study) -> None:
    study.ask()
    assert optuna_access.heartbeat_interval(study) is None
    assert optuna_access.stale_trials(study) == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_whose_heartbeat_stops_turns_stale_while_a_beating_one_does_not(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    assert optuna_access.heartbeat_interval(study) == 1
    lost, beating = study.ask(), study.ask()
    study.ask()  # never beats: Optuna cannot tell it from a trial about to start beating, so it never turns stale
    optuna_access.record_heartbeat(study, lost)
    time.sleep(2.2)  # past the grace period, by the database's clock (whole seconds in SQLite)
    optuna_access.record_heartbeat(study, beating)
    assert [t.number for t in optuna_access.stale_trials(study)] == [lost.number]

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
from services import fresh_postgres_db, postgres_url  # noqa: F401  (fixtures)


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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database storage URL: a SQLite file, or an empty PostgreSQL database of this test's own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("fresh_postgres_db")


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_heartbeat_ages_are_read_per_trial_of_the_named_study_only(database_url: str) -> None:
    storage = open_storage(database_url, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(study_name="s", storage=storage)
    other = optuna.create_study(study_name="other", storage=storage)
    old, fresh, silent = study.ask(), study.ask(), study.ask()
    optuna_access.record_heartbeat(study, old)
    time.sleep(2.2)  # SQLite stamps whole seconds
    optuna_access.record_heartbeat(study, fresh)
    optuna_access.record_heartbeat(other, other.ask())  # trial 0 of another study: not ours

    ages = optuna_access.heartbeat_ages(database_url, "s", [old.number, fresh.number, silent.number])

    assert set(ages) == {old.number, fresh.number}  # a trial that never beat has no age
    assert ages[old.number] >= 1.0 and ages[old.number] - ages[fresh.number] >= 1.0
    assert -1.0 <= ages[fresh.number] < 60  # by the database's own clock, so no time-zone offset creeps in
    assert optuna_access.heartbeat_ages(database_url, "s", [silent.number]) == {}
    assert optuna_access.heartbeat_ages(database_url, "missing", [0, 1]) == {}


def test_heartbeat_ages_of_a_database_without_optunas_tables_are_empty_not_an_error(tmp_path: Path) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "plain.db").execute("CREATE TABLE t (x INTEGER)").connection.close()
    assert optuna_access.heartbeat_ages(f"sqlite:///{tmp_path / 'plain.db'}", "s", [0]) == {}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_a_sweep_worker_takes_has_beaten_before_it_is_marked(tmp_path: Path) -> None:
    from harness.sweep.study import _ask_and_mark

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat_interval=60, grace_period=120))
    trial = _ask_and_mark(study)
    assert set(trial.user_attrs) == {"pid", "host"}
    # Dead on another machine from here on, it turns stale by its heartbeat: one is there already.
    assert list(optuna_access.heartbeat_ages(url, "s", [trial.number])) == [trial.number]

    journal = optuna.create_study(study_name="j", storage=open_storage(str(tmp_path / "optuna.journal")))
    assert set(_ask_and_mark(journal).user_attrs) == {"pid", "host"}  # no heartbeat to record there

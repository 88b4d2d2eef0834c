"""The few Optuna internals the sweep relies on, in one place, each behind a plain function.

Optuna's public API reaches a trial only through the process that asked for it. Failing the
trial of a dead worker, reading stale heartbeats and beating from our own thread need the
study's storage and the storage's trial id, which Optuna keeps private (`Study._storage`,
`Trial._trial_id`, `BaseHeartbeat._get_stale_trial_ids`); showing heartbeat ages reads Optuna's
`trial_heartbeats` table. They may change in any release, so they are used here only;
tests/test_sweep_optuna_access.py runs each against real storages, and pyproject.toml bounds
optuna to the major version those tests pass on.

The storage that retries its calls (`retrying_storage`) needs two more: Optuna's read cache
(`_CachedStorage`, here), which `optuna.create_study` puts in front of a plain RDBStorage only,
and `BaseHeartbeat`, which it subclasses there (a base class cannot hide behind a function);
tests/test_sweep_storage.py and tests/test_storage_faults.py run it on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial

__all__ = [
    "heartbeat_interval", "record_heartbeat", "stale_trials", "reload_trial", "set_trial_user_attr", "fail_trial",
    "cached_storage", "heartbeat_ages",
]


def _storage(study: optuna.Study) -> BaseStorage:
    return study._storage


def _trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats; None where the storage keeps none (journal, in-memory)."""
    storage = _storage(study)
    # Only database storages implement Optuna's (private) heartbeat interface.
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    return get_interval() if get_interval is not None else None


def record_heartbeat(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
    """One heartbeat for a running trial, stamped by the database's clock."""
    _storage(study).record_heartbeat(_trial_id(trial))  # type: ignore[attr-defined]


def stale_trials(study: optuna.Study) -> list[FrozenTrial]:
    """RUNNING trials whose last heartbeat is older than the storage's grace period; none without a heartbeat."""
    if not heartbeat_interval(study):
        return []
    storage = _storage(study)
    return [storage.get_trial(i) for i in storage._get_stale_trial_ids(study._study_id)]  # type: ignore[attr-defined]


def reload_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as the storage holds it now (a FrozenTrial from `get_trials` is a snapshot)."""
    return _storage(study).get_trial(_trial_id(trial))


def set_trial_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Set a user attribute on a trial that another process asked for (so no `Trial` object is at hand here).

    Raises `optuna.exceptions.UpdateFinishedTrialError` when the trial is already finished.
    """
    _storage(study).set_trial_user_attr(_trial_id(trial), key, value)


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> FrozenTrial | None:
    """Record `reason` as the trial's `fail_reason`, then fail it; None when it had finished already.

    The reason goes first because a finished trial takes no more user attributes. Unlike
    `study.tell(..., skip_if_finished=True)`, a trial another worker finished in between is
    reported (None), so only one worker goes on to retry it.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = _storage(study)
    try:
        storage.set_trial_user_attr(_trial_id(trial), "fail_reason", reason)
        storage.set_trial_state_values(_trial_id(trial), state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return None
    return storage.get_trial(_trial_id(trial))


def cached_storage(storage: RDBStorage) -> BaseStorage:
    """`storage` behind Optuna's read cache (finished trials are read once), as `optuna.create_study` would wrap it.

    Optuna wraps only an RDBStorage it is handed directly; a storage that wraps one itself must add the cache.
    """
    from optuna.storages import _CachedStorage

    return _CachedStorage(storage)


def heartbeat_ages(storage: str, study_name: str, numbers: list[int]) -> dict[int, float]:
    """Seconds since each listed trial's last heartbeat, by the database's clock; trials never beaten are left out.

    `storage` is a database URL. Optuna reads heartbeats only to fail stale trials and exposes no way
    to read them, so they are read from its `trial_heartbeats`, `trials` and `studies` tables with a
    read-only query on a connection of our own. A schema that differs (or a database that cannot be
    read) gives no ages rather than an error: `harness sweep --status` then shows no heartbeats.
    """
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    beats = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
    trials = sa.table("trials", sa.column("trial_id"), sa.column("study_id"), sa.column("number"))
    studies = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
    query = (
        sa.select(trials.c.number, beats.c.heartbeat, sa.func.current_timestamp())
        .select_from(beats.join(trials, trials.c.trial_id == beats.c.trial_id)
                     .join(studies, studies.c.study_id == trials.c.study_id))
        .where(studies.c.study_name == study_name, trials.c.number.in_(numbers))
    )
    engine = sa.create_engine(storage, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except sa.exc.SQLAlchemyError:
        return {}
    finally:
        engine.dispose()
    # Optuna stamps beats with the database's CURRENT_TIMESTAMP into a column without a time zone, so the
    # database's "now" is compared without one too (PostgreSQL returns it with the session's zone).
    return {number: (now.replace(tzinfo=None) - beat).total_seconds() for number, beat, now in rows}

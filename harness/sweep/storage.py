"""Where a study lives: a journal file on one machine, or a database URL (PostgreSQL) shared by several."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.io import file_lock

__all__ = ["DEFAULT_STORAGE", "open_storage", "storage_lock", "is_url", "journal_path"]

# A journal file takes several worker processes on one machine without a database server.
DEFAULT_STORAGE = "optuna.journal"
_URL_SCHEMES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def is_url(storage: str) -> bool:
    return storage.startswith(_URL_SCHEMES)


def journal_path(storage: str) -> Path:
    return Path(storage.removeprefix("journal:").removeprefix("//"))


def open_storage(
    storage: str | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
):
    """`sqlite:///x.db`, `postgresql://...` -> RDBStorage; anything else is a journal file path.

    With `heartbeat_interval`, a database storage keeps Optuna's heartbeat table: a trial whose
    worker has not beaten for `grace_period` seconds (by the database's clock, so machines need not
    agree on the time) is stale (`liveness.fail_stale_trials`). Optuna only beats inside
    `study.optimize`; the sweep's ask/tell loop beats itself (`liveness.Heartbeat`). Journal files
    have no heartbeat: there the host and pid decide.
    """
    import optuna

    storage = storage or DEFAULT_STORAGE
    if is_url(storage):
        if heartbeat_interval is None:
            return optuna.storages.RDBStorage(storage)
        with warnings.catch_warnings():  # the heartbeat has been "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    path = journal_path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


# pg_advisory_lock takes a bigint; one fixed key per database ("harness" in ASCII) serialises every
# study's count-then-ask there, which costs nothing at a few asks per trial.
_PG_LOCK_KEY = 0x68_61_72_6E_65_73_73


@contextmanager
def storage_lock(storage: str | None) -> Iterator[None]:
    """Serialise "count finished trials, then ask" between the workers of one storage.

    Without it two workers can both see N-1 finished trials and both start one more. A journal
    file or SQLite database gets a file lock beside it (workers on one machine); PostgreSQL an
    advisory lock held by the database server (workers on any machine). Other databases get none.
    """
    storage = storage or DEFAULT_STORAGE
    if storage.startswith("postgresql"):
        with _pg_advisory_lock(storage):
            yield
        return
    if storage.startswith("sqlite:///"):
        lock_path = Path(storage.removeprefix("sqlite:///") + ".harness-lock")
    elif is_url(storage):
        yield
        return
    else:
        lock_path = Path(str(journal_path(storage)) + ".harness-lock")
    with file_lock(lock_path):
        yield


@contextmanager
def _pg_advisory_lock(url: str) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
            try:
                yield
            finally:
                # Also released if this process dies: the server drops a lost session's locks.
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
    finally:
        engine.dispose()

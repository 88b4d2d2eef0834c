"""Where a study lives: a journal file on one machine, or a database URL (PostgreSQL) shared by several."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DEFAULT_STORAGE", "open_storage", "storage_lock", "is_url"]

# A journal file takes several worker processes on one machine without a database server.
DEFAULT_STORAGE = "optuna.journal"
_URL_SCHEMES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def is_url(storage: str) -> bool:
    return storage.startswith(_URL_SCHEMES)


def open_storage(storage: str | None = None):
    """`sqlite:///x.db`, `postgresql://...` -> RDBStorage with heartbeats; anything else is a journal file path."""
    import optuna

    storage = storage or DEFAULT_STORAGE
    if is_url(storage):
        # No Optuna heartbeat: it only runs inside study.optimize, and the sweep uses ask/tell. Dead
        # workers' trials are found by host and pid instead (study.reap_dead_trials).
        return optuna.storages.RDBStorage(storage)
    path = Path(storage.removeprefix("journal:").removeprefix("//"))
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


@contextmanager
def storage_lock(storage: str | None) -> Iterator[None]:
    """Serialise "count finished trials, then ask" between processes sharing a local journal file.

    Without it two workers can both see N-1 finished trials and both start one more. Database
    storages shared across machines get no file lock; the sweep re-checks after asking instead.
    """
    storage = storage or DEFAULT_STORAGE
    if is_url(storage):
        yield
        return
    lock_path = Path(storage.removeprefix("journal:").removeprefix("//") + ".harness-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

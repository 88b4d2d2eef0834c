"""Where a study lives: a journal file on one machine, or a database URL (PostgreSQL) shared by several.

Only storages whose "count finished trials, then ask" `storage_lock` can serialise are opened: a journal
file, SQLite and PostgreSQL. Any other `scheme://` value is refused rather than taken for a file path.

What each survives: a database that goes away for a while (a `StorageRetry` given to `open_storage` and
`storage_lock` waits it out, see `retrying_storage`), and a journal file whose last record a power loss
cut off mid-write (`open_storage` drops the cut record, keeping the file as it was beside it).
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.errors import StudyError
from harness.io import file_lock

if TYPE_CHECKING:
    import optuna
    from optuna.storages.journal import BaseJournalFileLock
    from sqlalchemy.engine import Connection, Engine

    from harness.sweep.retry import StorageRetry

__all__ = ["DEFAULT_STORAGE", "StorageKind", "LockHold", "check_storage", "open_storage", "storage_lock", "is_url",
           "journal_path"]

log = logging.getLogger(__name__)

# A journal file takes several worker processes on one machine without a database server.
DEFAULT_STORAGE = "optuna.journal"
StorageKind = Literal["journal", "sqlite", "postgresql"]
# `dialect+driver://...` as SQLAlchemy writes it; a journal file path never holds "://".
_URL = re.compile(r"(?P<dialect>[A-Za-z][A-Za-z0-9.\-]*)(?:\+[A-Za-z0-9_.\-]*)?://")
# Why a URL that names something else is refused, by what it names.
_NO_LOCK = (
    "the sweep's count-then-ask lock (storage_lock) holds only for files and PostgreSQL, so two workers "
    "could both start the last trial"
)
_REDIS = "Redis needs Optuna's JournalRedisBackend, which the sweep does not open, and " + _NO_LOCK
_REFUSED = {"redis": _REDIS, "rediss": _REDIS, "mysql": _NO_LOCK, "mariadb": _NO_LOCK, "oracle": _NO_LOCK, "mssql": _NO_LOCK}


def check_storage(storage: str | None) -> StorageKind:
    """What a --storage value names, or StudyError for a URL the sweep cannot share safely.

    Checked before a sweep prepares any data, and again wherever a storage is opened or locked, so a
    `redis://` or `mysql://` value never becomes a journal file in a folder named `redis:`.
    """
    storage = storage or DEFAULT_STORAGE
    match = _URL.match(storage)
    if match is None:
        return "journal"
    dialect = match["dialect"].lower()
    if dialect == "postgresql" and _missing_postgres_driver(storage):
        raise StudyError("--storage postgresql://... needs the psycopg2 driver, but it is not installed; "
                         "pip install 'harness[postgres]'")
    if dialect in ("journal", "sqlite", "postgresql"):
        return dialect  # type: ignore[return-value]
    # Only the scheme is shown: the rest of a URL may hold a password.
    why = _REFUSED.get(dialect, "the sweep opens no other URL, nor takes one for a file path")
    raise StudyError(
        f"--storage must be a journal file path, sqlite:///<file> or postgresql://<host>/<database>, "
        f"but got {dialect}://... ({why})"
    )


def _missing_postgres_driver(storage: str) -> bool:
    # psycopg2 is SQLAlchemy's default PostgreSQL driver and comes with the `postgres` extra; a URL naming
    # another driver (postgresql+pg8000://) is left to SQLAlchemy.
    import importlib.util

    driver = storage.split("://", 1)[0].partition("+")[2]
    return driver in ("", "psycopg2") and importlib.util.find_spec("psycopg2") is None


def is_url(storage: str) -> bool:
    """A database URL (SQLite or PostgreSQL) rather than a journal file; StudyError for a refused URL."""
    return check_storage(storage) != "journal"


def journal_path(storage: str) -> Path:
    check_storage(storage)
    return Path(storage.removeprefix("journal:").removeprefix("//"))


def open_storage(
    storage: str | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    retry: StorageRetry | None = None,
    repair_cut: bool = True,
) -> optuna.storages.BaseStorage:
    """`sqlite:///x.db`, `postgresql://...` -> RDBStorage; a path -> a journal file; other URLs are refused.

    With `heartbeat_interval`, a database storage keeps Optuna's heartbeat table: a trial whose
    worker has not beaten for `grace_period` seconds (by the database's clock, so machines need not
    agree on the time) is stale (`liveness.fail_stale_trials`). Optuna only beats inside
    `study.optimize`; the sweep's ask/tell loop beats itself (`liveness.Heartbeat`). Journal files
    have no heartbeat: there the host and pid decide.

    With `retry`, a database storage (and opening it) waits out a lost connection instead of failing:
    a `retrying_storage.RetryingStorage`. A journal file whose last record was cut off mid-write is
    first truncated to its last whole record (`_drop_cut_last_record`), unless `repair_cut` is False:
    a reader that writes nothing (`harness sweep --status`) leaves it to the next worker, as Optuna
    reads such a file whole up to the cut.
    """
    import optuna

    storage = storage or DEFAULT_STORAGE
    if is_url(storage):
        def open_rdb() -> optuna.storages.RDBStorage:
            if heartbeat_interval is None:
                return optuna.storages.RDBStorage(storage)
            with warnings.catch_warnings():  # the heartbeat has been "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period)

        if retry is None:
            return open_rdb()
        from harness.sweep.retrying_storage import RetryingStorage

        return RetryingStorage(retry.call("opening the storage", open_rdb), retry)
    path = journal_path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    lock = JournalFileOpenLock(str(path))
    if repair_cut:
        _drop_cut_last_record(path, lock)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def _drop_cut_last_record(path: Path, lock: BaseJournalFileLock) -> None:
    """Truncate a journal file whose last record was cut off mid-write (a power loss) to its last whole record.

    Optuna skips such a record when it reads, but appends the next one right after it: the two make one
    unreadable line, the new record is lost and Optuna fails on it (`ask` raises AttributeError). The file
    as it was is copied to `<name>.cut-<time>` first, so not a byte is lost.
    """
    if not _ends_cut(path):
        return
    # Optuna's own lock around every append: under it, a record still being written cannot pass for a cut one.
    lock.acquire()
    try:
        size = path.stat().st_size
        keep = _last_record_end(path)
        if keep == size:
            return
        backup = _copy_aside(path, f"cut-{time.strftime('%Y%m%dT%H%M%S')}")
        os.truncate(path, keep)
    finally:
        lock.release()
    log.warning("%s: dropped a cut last record of %d bytes (the file as it was is kept as %s)", path, size - keep,
                backup.name)


def _ends_cut(path: Path) -> bool:
    """Whether the file's last byte is not the newline that ends every journal record."""
    if not path.exists():
        return False
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _last_record_end(path: Path, chunk: int = 1 << 16) -> int:
    """The offset just past the file's last newline (0 when it has none), read backwards a chunk at a time."""
    with open(path, "rb") as f:
        position = f.seek(0, os.SEEK_END)
        while position > 0:
            step = min(chunk, position)
            position -= step
            f.seek(position)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                return position + newline + 1
    return 0


def _copy_aside(path: Path, tag: str) -> Path:
    """Copy `path` to `<name>.<tag>` (never over an existing file) and flush it to disk; returns the copy."""
    import shutil

    for n in range(1000):
        copy = path.with_name(f"{path.name}.{tag}" + (f"-{n}" if n else ""))
        try:
            with open(path, "rb") as source, open(copy, "xb") as target:
                shutil.copyfileobj(source, target)
                target.flush()
                os.fsync(target.fileno())
            return copy
        except FileExistsError:
            continue
    raise FileExistsError(f"a free name <file>.{tag}-<n> beside {path} must exist, but got 1000 taken")


# pg_advisory_lock takes a bigint; one fixed key per database ("harness" in ASCII) serialises every
# study's count-then-ask there, which costs nothing at a few asks per trial.
_PG_LOCK_KEY = 0x68_61_72_6E_65_73_73
# A bigint advisory lock shows in pg_locks as its high and low 32 bits (classid, objid) with objsubid 1.
_PG_LOCK_PARTS = {"key": _PG_LOCK_KEY, "high": _PG_LOCK_KEY >> 32, "low": _PG_LOCK_KEY & 0xFFFF_FFFF}
_HOLDS_LOCK = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted "
    "AND objsubid = 1 AND classid::bigint = :high AND objid::bigint = :low)"
)


class LockHold:
    """One hold of `storage_lock`. A file lock holds until released; see `held` for PostgreSQL's."""

    def held(self) -> bool:
        """Whether the lock is still this worker's: false once a database restart took it away mid-hold."""
        return True


@contextmanager
def storage_lock(storage: str | None, retry: StorageRetry | None = None) -> Iterator[LockHold]:
    """Serialise "count finished trials, then ask" between the workers of one storage.

    Without it two workers can both see N-1 finished trials and both start one more. A journal
    file or SQLite database gets a file lock beside it (workers on one machine); PostgreSQL an
    advisory lock held by the database server (workers on any machine). `check_storage` refuses the rest.

    PostgreSQL's lock belongs to one database session, so a server restart ends it while the holder
    still runs: a holder checks `held()` before it trusts what it counted. With `retry`, taking the
    lock waits out a lost connection.
    """
    storage = storage or DEFAULT_STORAGE
    kind = check_storage(storage)
    if kind == "postgresql":
        with _pg_advisory_lock(storage, retry) as hold:
            yield hold
        return
    if kind == "sqlite":
        database = _sqlite_file(storage)
        if database is None:  # an in-memory database: no other process can reach it
            yield LockHold()
            return
        lock_path = Path(database + ".harness-lock")
    else:
        lock_path = Path(str(journal_path(storage)) + ".harness-lock")
    with file_lock(lock_path):
        yield LockHold()


def _sqlite_file(url: str) -> str | None:
    """The database file a SQLite URL names; None for an in-memory database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return None if database in (None, "", ":memory:") else database


class _AdvisoryLockHold(LockHold):
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def held(self) -> bool:
        """Whether this session still holds the lock; a session that died with the server holds nothing.

        Asked of pg_locks rather than taken from a query merely succeeding: SQLAlchemy may open a new
        session on a connection whose old one died, and the new one holds no lock.
        """
        import sqlalchemy

        from harness.sweep.retry import is_connection_lost

        if self.connection.invalidated:  # SQLAlchemy saw its session die
            return False
        try:
            return bool(self.connection.execute(sqlalchemy.text(_HOLDS_LOCK), _PG_LOCK_PARTS).scalar())
        except sqlalchemy.exc.DBAPIError as error:
            if is_connection_lost(error):
                return False
            raise


@contextmanager
def _pg_advisory_lock(url: str, retry: StorageRetry | None) -> Iterator[LockHold]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    # AUTOCOMMIT: the session then holds the lock without sitting in an open transaction, which a server's
    # idle_in_transaction_session_timeout would end (and the lock with it).
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        connection = retry.call("taking the storage lock", lambda: _locked(engine)) if retry else _locked(engine)
        try:
            yield _AdvisoryLockHold(connection)
        finally:
            _unlock(connection)
    finally:
        engine.dispose()


def _locked(engine: Engine) -> Connection:
    """A new session holding the advisory lock (waiting while another session holds it)."""
    import sqlalchemy

    connection = engine.connect()
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), _PG_LOCK_PARTS)
    except BaseException:
        connection.close()
        raise
    return connection


def _unlock(connection: Connection) -> None:
    import sqlalchemy

    from harness.sweep.retry import is_connection_lost

    # A session that died holds no lock: the server drops a lost session's locks (as when this process dies).
    try:
        if not connection.invalidated:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), _PG_LOCK_PARTS)
    except sqlalchemy.exc.DBAPIError as error:
        if not is_connection_lost(error):
            raise
    finally:
        connection.close()

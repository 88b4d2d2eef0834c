"""How a sweep waits out a database that went away: which errors mean "the connection is lost", and how long to retry.

A PostgreSQL server that restarts (an upgrade, a failover, a crash) drops every connection for seconds to
minutes. A worker that gave up at the first error would throw away the trial it was training; one that
retried forever would hang on a database that is gone for good. So a storage call that fails because the
connection was lost is tried again, with waits that double up to `max_wait`, until the outage has lasted
`seconds`; any other error (a bad value, a finished trial) goes straight on, unretried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["STORAGE_RETRY_SECONDS", "StorageRetry", "StorageConnectionLost", "is_connection_lost"]

# Five minutes covers a restart or a failover; a database down for longer needs a person, not a sleeping worker.
STORAGE_RETRY_SECONDS = 300.0

log = logging.getLogger(__name__)
T = TypeVar("T")

# How libpq, psycopg2 and PostgreSQL word a connection that is gone or not there yet (lower case). psycopg2 sets
# no SQLSTATE on errors raised on the client side, such as a refused connection, so the words are what tells.
_LOST_CONNECTION_WORDS = (
    "server closed the connection",
    "connection refused",
    "could not connect to server",
    "terminating connection",
    "connection already closed",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "ssl connection has been closed",
    "connection timed out",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
)
# SQLSTATE class 08 (connection exception), and 57P01-57P03: the server shutting down, crashed, or not accepting yet.
_LOST_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")


class StorageConnectionLost(Exception):
    """A database call lost its connection (raised in SQLAlchemy's error's place, see `retrying_storage`)."""


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it was raised from: RDBStorage turns SQLAlchemy's errors into StorageInternalError."""
    seen: set[int] = set()
    queue = [error]
    while queue:
        current = queue.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        queue += [e for e in (current.__cause__, current.__context__, getattr(current, "orig", None))
                  if isinstance(e, BaseException)]


def is_connection_lost(error: BaseException) -> bool:
    """Whether `error` says the database connection is gone (or cannot be made), as opposed to a refused request."""
    from sqlalchemy.exc import DBAPIError

    for cause in _causes(error):
        if isinstance(cause, StorageConnectionLost):
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        sqlstate = getattr(cause, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_LOST_CONNECTION_SQLSTATES):
            return True
        # Only database errors are read for words: a ValueError quoting a message must not count.
        if type(cause).__module__.split(".")[0] in ("psycopg2", "sqlalchemy"):
            message = str(cause).lower()
            if any(words in message for words in _LOST_CONNECTION_WORDS):
                return True
    return False


class StorageRetry:
    """Retries calls that lost their database connection, for up to `seconds` per outage (0: never).

    One object serves all of a worker's storage calls and its storage lock, in every thread, so each
    outage is announced once ("storage unreachable, retrying for up to N s") however many calls meet
    it, and once more when it ends, with how many calls were retried. `retries` counts them all.
    """

    def __init__(
        self,
        seconds: float = STORAGE_RETRY_SECONDS,
        first_wait: float = 0.5,
        max_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not seconds >= 0:  # `not >=` refuses nan too
            raise ValueError(f"--storage-retry-seconds must be >= 0, but got {seconds}")
        if not 0 < first_wait <= max_wait:
            raise ValueError(
                f"0 < first_wait <= max_wait must hold, but got (first_wait={first_wait}, max_wait={max_wait})")
        self.seconds = seconds
        self.first_wait = first_wait
        self.max_wait = max_wait
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._outage_since: float | None = None  # when the current outage was first met; None while connected
        self._outage_retries = 0
        self.retries = 0
        self.outages = 0

    def call(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt()`, tried again while it fails for a lost connection and the outage is younger than `seconds`.

        `what` names the call in the log lines. The last error goes on once the time is up.
        """
        wait = self.first_wait
        while True:
            try:
                result = attempt()
            except Exception as error:
                if not is_connection_lost(error):
                    raise
                remaining = self._met_outage(what, error)
                if remaining <= 0:
                    log.warning("storage still unreachable after %.0f s; giving up on %s", self.seconds, what)
                    raise
                self._sleep(min(wait, remaining))
                wait = min(2 * wait, self.max_wait)
                with self._lock:
                    self.retries += 1
                    self._outage_retries += 1
                continue
            self._reconnected()
            return result

    def _met_outage(self, what: str, error: BaseException) -> float:
        """Note a lost connection (announcing a new outage); the seconds left to retry it."""
        now = self._clock()
        with self._lock:
            if self._outage_since is None:
                self._outage_since, self._outage_retries = now, 0
                self.outages += 1
                if self.seconds > 0:
                    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    log.warning("storage unreachable, retrying for up to %.0f s (%s: %s)", self.seconds, what,
                                first_line)
            return self._outage_since + self.seconds - now

    def _reconnected(self) -> None:
        if self._outage_since is None:  # the common case, read without the lock
            return
        with self._lock:
            if self._outage_since is None:
                return
            lasted, retried = self._clock() - self._outage_since, self._outage_retries
            self._outage_since = None
        log.warning("storage reachable again after %.0f s (%d storage call(s) retried)", lasted, retried)

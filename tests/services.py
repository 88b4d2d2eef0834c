"""Real services for multi-worker tests: a PostgreSQL server and an `mlflow server` on 127.0.0.1.

PostgreSQL comes from `scripts/test_services.sh` (sourced by .ci/run), which exports
HARNESS_TEST_POSTGRES_URL; without it the tests that need it skip with the reason.
Test modules import what they use: `from services import fresh_postgres_db, mlflow_server`
(pytest puts tests/ on sys.path, and a fixture is found once it is in the module's namespace).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

__all__ = ["postgres_url", "fresh_postgres_db", "fresh_database", "drop_database", "mlflow_server", "start_mlflow_server"]

POSTGRES_URL_VARIABLE = "HARNESS_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url() -> str:
    """URL of the test server's `harness` database, whose role may create databases."""
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(
            f"PostgreSQL not available: {POSTGRES_URL_VARIABLE} is not set "
            "(.ci/run installs and starts it; locally: . scripts/test_services.sh)"
        )
    return url


@pytest.fixture
def fresh_postgres_db(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of an empty database made for this test alone, dropped afterwards."""
    url = fresh_database(postgres_url, request.node.name)
    yield url
    drop_database(url)


def fresh_database(url: str, name_prefix: str) -> str:
    """Create a uniquely named database on the server behind `url` and return its URL."""
    # Identifiers are lower-case [a-z0-9_] so they need no quoting; 63 bytes is PostgreSQL's limit.
    prefix = re.sub(r"[^a-z0-9_]+", "_", name_prefix.lower()).strip("_")[:45] or "test"
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _run_autocommit(url, f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, maintenance_database: str = "harness") -> None:
    """Drop the database `url` names, closing whatever connections a server left open to it."""
    target = make_url(url)
    server = target.set(database=maintenance_database).render_as_string(hide_password=False)
    # FORCE (PostgreSQL 13+): a killed worker or mlflow server may still hold pooled connections.
    _run_autocommit(server, f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')


def _run_autocommit(url: str, statement: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(statement))
    finally:
        engine.dispose()


@contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path, timeout: float = 90) -> Iterator[str]:
    """Run `mlflow server` on a free 127.0.0.1 port and yield its URL; stop it on exit.

    Artifacts are proxied by the server (`mlflow-artifacts:/`) into `artifacts_dir`, so
    clients need no shared filesystem. The server log is `artifacts_dir/../mlflow-server-<port>.log`.
    """
    process, url = start_mlflow_server(backend_uri, artifacts_dir, timeout=timeout)
    try:
        yield url
    finally:
        _stop_process_group(process)


def start_mlflow_server(
    backend_uri: str, artifacts_dir: Path, port: int | None = None, timeout: float = 90
) -> tuple[subprocess.Popen, str]:
    """`mlflow_server` without the context: the healthy server's process (the leader of its own process group,
    for a test that kills it as a crash would: `os.killpg(process.pid, SIGKILL)`) and its URL.

    `port`: a fixed one, to start a server again where its clients look for it; default a free one. The log is
    appended to, so a restarted server's lines follow the first one's.
    """
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log_path = artifacts_dir.parent / f"mlflow-server-{port}.log"
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
        # One uvicorn worker: enough for a test, and the default 4 crowd a 2-core machine.
        "--workers", "1",
    ]  # fmt: skip
    # MLflow 3 otherwise starts a job runner and seven huey consumers (~700 MB, for GenAI
    # jobs the harness never submits), which crowd a 2-core machine running sweep workers.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "ab") as log:
        # Own session: the CLI forks uvicorn, and killing the group stops them all.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_until_healthy(process, url, timeout, log_path)
    except BaseException:
        _stop_process_group(process)
        raise
    return process, url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_healthy(process: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}:\n{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"mlflow server at {url} was not healthy within {timeout:.0f} s:\n{_log_tail(log_path)}")


def _stop_process_group(process: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM the server's whole group (the CLI and its uvicorn child), SIGKILL what outlives `grace`."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reap the CLI, or its zombie keeps the group "alive"
        if not _signal_group(process.pid, 0):
            break
        time.sleep(0.1)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log at {log_path}: {error})"

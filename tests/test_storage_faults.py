"""Storages that fail under a sweep: a PostgreSQL server stopped mid-sweep and started again, a COMMIT whose reply
never arrives, and a journal file whose last record a power loss cut off.

The PostgreSQL tests run their own server (initdb into a fresh folder, on a port of its own): stopping the shared
test server would break the tests running beside them. Every wait is bounded.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from harness.sweep.retry import StorageRetry, is_connection_lost
from harness.sweep.storage import open_storage, storage_lock
from helpers import write_space

STUDY = "storage-faults"


def _records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


# --- the retry policy ---------------------------------------------------------------------------
def _refused_connection() -> None:
    """Connect to a port nothing listens on: the OperationalError a stopped server gives."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed, and nothing listens on it
    engine = sa.create_engine(f"postgresql+psycopg2://nobody:x@127.0.0.1:{port}/none?connect_timeout=5",
                              poolclass=sa.pool.NullPool)
    try:
        engine.connect()
    finally:
        engine.dispose()


def test_a_refused_connection_is_lost_and_a_bad_statement_is_not(tmp_path: Path) -> None:
    pytest.importorskip("psycopg2")
    with pytest.raises(sa.exc.OperationalError) as refused:
        _refused_connection()
    assert is_connection_lost(refused.value)
    # Wrapped as RDBStorage wraps it, it still counts.
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused.value
    assert is_connection_lost(wrapped)

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(sa.exc.OperationalError) as no_table, engine.connect() as connection:
        connection.execute(sa.text("SELECT * FROM no_such_table"))
    assert not is_connection_lost(no_table.value)
    assert not is_connection_lost(ValueError("connection refused"))  # words outside a database error don't count


def test_calls_are_retried_through_an_outage_announced_once(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("psycopg2")
    retry = StorageRetry(30, first_wait=0.01, max_wait=0.02)
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) <= 3:
            _refused_connection()
        return "done"

    with caplog.at_level(logging.WARNING, logger="harness.sweep.retry"):
        assert retry.call("get_trial", flaky) == "done"
        assert retry.call("get_trial", flaky) == "done"  # no outage now: nothing more is said
    assert len(calls) == 5 and retry.retries == 3 and retry.outages == 1
    lines = [r.getMessage() for r in _records(caplog, "harness.sweep.retry")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("storage unreachable, retrying for up to 30 s (get_trial: ")
    assert lines[1].startswith("storage reachable again after 0 s (3 storage call(s) retried)")


def test_an_outage_longer_than_the_retry_time_ends_in_its_last_error(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("psycopg2")
    now = [0.0]
    retry = StorageRetry(5, first_wait=1, max_wait=2, sleep=lambda s: now.__setitem__(0, now[0] + s),
                         clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="harness.sweep.retry"), pytest.raises(sa.exc.OperationalError):
        retry.call("create_new_trial", _refused_connection)
    assert now[0] == 5 and retry.retries == 3  # waited 1, 2, then the 2 s left
    assert _records(caplog, "harness.sweep.retry")[-1].getMessage() == (
        "storage still unreachable after 5 s; giving up on create_new_trial")
    with pytest.raises(ValueError):  # not a lost connection: never retried
        retry.call("get_trial", lambda: int("x"))
    assert retry.retries == 3
    with pytest.raises(ValueError, match=r"--storage-retry-seconds must be >= 0, but got -1"):
        StorageRetry(-1)


# --- a journal file cut mid-record -----------------------------------------------------------------
def _journal_with_trials(path: Path, n: int) -> None:
    study = optuna.create_study(study_name=STUDY, storage=open_storage(str(path)), direction="maximize")
    for i in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.report(0.5, step=1)
        study.tell(trial, 0.1 * i)


def test_a_journal_whose_last_record_was_cut_is_truncated_to_its_last_whole_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "optuna.journal"
    _journal_with_trials(journal, 3)
    whole = journal.read_bytes()
    last_start = whole.rindex(b"\n", 0, len(whole) - 1) + 1  # the last record: trial 2's tell
    cut = whole[: last_start + 20]  # the power went out 20 bytes into it
    journal.write_bytes(cut)

    with caplog.at_level(logging.WARNING, logger="harness.sweep.storage"):
        study = optuna.load_study(study_name=STUDY, storage=open_storage(str(journal)))
    assert [r.getMessage().split(" (")[0] for r in _records(caplog, "harness.sweep.storage")] == [
        f"{journal}: dropped a cut last record of 20 bytes"]
    [backup] = tmp_path.glob("optuna.journal.cut-*")
    assert backup.read_bytes() == cut  # nothing is lost: the file as it was sits beside it
    assert journal.read_bytes() == whole[:last_start]
    # Trial 2's tell was the record cut: it is RUNNING again, for the reaper (its worker is gone with the power).
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE", "RUNNING"]

    # The sweep goes on: new records land on a whole line, and every process reads them.
    trial = study.ask()
    study.tell(trial, 0.9)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness.sweep.storage"):
        again = optuna.load_study(study_name=STUDY, storage=open_storage(str(journal)))
    assert [t.state.name for t in again.get_trials()] == ["COMPLETE", "COMPLETE", "RUNNING", "COMPLETE"]
    assert not _records(caplog, "harness.sweep.storage") and len(list(tmp_path.glob("optuna.journal.cut-*"))) == 1


def test_a_whole_journal_is_left_alone(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    _journal_with_trials(journal, 2)
    before = journal.read_bytes()
    optuna.load_study(study_name=STUDY, storage=open_storage(str(journal)))
    assert journal.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["optuna.journal"]


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "HARNESS_FAULTS"}, "PYTHONUNBUFFERED": "1"}


def _sweep_command(space: Path, trials: int, storage: str, tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "sweep", "--space", str(space), "--trials", str(trials),
            "--storage", storage, "--study-name", STUDY, "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--quiet", *extra]


@pytest.mark.faults
@pytest.mark.slow
def test_a_sweep_resumes_from_a_journal_cut_mid_record(synthetic_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=1)
    journal = tmp_path / "optuna.journal"
    first = subprocess.run(_sweep_command(space, 1, str(journal), tmp_path), cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])  # the last record (the parent run's bookkeeping or trial 0's tell), cut

    rerun = subprocess.run(_sweep_command(space, 2, str(journal), tmp_path), cwd=tmp_path, env=_env(),
                           capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    last_record = len(whole) - (whole.rindex(b"\n", 0, len(whole) - 1) + 1)
    assert f"optuna.journal: dropped a cut last record of {last_record - 7} bytes" in rerun.stderr
    trials = optuna.load_study(study_name=STUDY, storage=open_storage(str(journal))).get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert [t.number for t in trials] == list(range(len(trials)))


# --- a private PostgreSQL server to stop, start and cut off -------------------------------------------
@dataclass
class PrivateServer:
    """A PostgreSQL server of this module's own: `url` is its superuser's maintenance database."""

    bindir: Path
    root: Path
    port: int
    url: str
    as_owner: list[str]  # the command prefix that runs as the cluster's owner

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self.as_owner, str(self.bindir / "pg_ctl"), *args, "-D", str(self.root / "data")],
                       check=True, capture_output=True, timeout=timeout, cwd="/")

    def start(self) -> None:
        # fsync off: a throwaway cluster trades crash safety for speed, as scripts/test_services.sh does.
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.pg_ctl("start", "-w", "-t", "30", "-l", str(self.root / "server.log"), "-o", options)

    def stop(self) -> None:
        """Stop it as an administrator would for a restart: every session is ended, open transactions roll back."""
        self.pg_ctl("stop", "-m", "fast", "-w", "-t", "30")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivateServer]:
    pytest.importorskip("psycopg2")
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if not bindirs or not Path(bindirs[-1], "initdb").exists():
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); scripts/test_services.sh "
                    "installs it")
    bindir = Path(bindirs[-1])
    # postgres refuses to run as root, so as root the cluster belongs to the `postgres` user, which cannot enter
    # pytest's tmp_path (under a 0700 folder of root's): hence a folder of its own in the temp dir.
    root = Path(tempfile.mkdtemp(prefix="harness-pg-faults-"))
    as_owner: list[str] = []
    if os.getuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_hex(16)
    (root / "password").write_text(password)
    if as_owner:
        os.chown(root / "password", owner.pw_uid, owner.pw_gid)
    try:
        subprocess.run([*as_owner, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-E", "UTF8",
                        "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256",
                        f"--pwfile={root / 'password'}"], check=True, capture_output=True, timeout=120, cwd="/")
        port = _free_port()
        url = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/postgres"
        server = PrivateServer(bindir, root, port, url, as_owner)
        server.start()
        try:
            yield server
        finally:
            subprocess.run([*as_owner, str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(root / "data")],
                           capture_output=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_db(private_postgres: PrivateServer, request: pytest.FixtureRequest) -> Iterator[str]:
    from services import drop_database, fresh_database

    url = fresh_database(private_postgres.url, request.node.name)
    yield url
    drop_database(url, maintenance_database="postgres")


class LostReplyRelay:
    """A TCP relay in front of PostgreSQL that, when told, loses the reply to one COMMIT: the server commits, and the
    client's connection breaks before it hears so (what a network cut or a server dying at that moment does).

    `lose_commit_reply_after(b"INSERT INTO trials")` picks the first COMMIT sent after a statement holding those bytes.
    """

    _COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message psycopg2 sends for commit()

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_commit_reply_after(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker

    def url(self, url: str) -> str:
        # No SSL: the relay must read the statements going by.
        return make_url(url).set(port=self.port, query={"sslmode": "disable"}).render_as_string(hide_password=False)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            state = {"after_marker": False, "cut": False}
            threading.Thread(target=self._to_server, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, state), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        while data := _recv(client):
            with self._lock:
                if self._marker is not None and self._marker in data:
                    self._marker, state["after_marker"] = None, True
                elif state["after_marker"] and self._COMMIT in data:
                    state["after_marker"], state["cut"] = False, True
            if not _send(server, data):
                break
        _close(client, server)

    def _to_client(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        while data := _recv(server):
            if state["cut"]:  # the server's answer to the COMMIT: it committed; the client will never know
                with self._lock:
                    self.cuts += 1
                break
            if not _send(client, data):
                break
        _close(client, server)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


@pytest.fixture
def relay(private_postgres: PrivateServer) -> Iterator[LostReplyRelay]:
    relay = LostReplyRelay(private_postgres.port)
    yield relay
    relay.close()


@pytest.mark.faults
def test_a_lost_commit_reply_neither_duplicates_a_trial_nor_fails_a_tell(
    private_db: str, relay: LostReplyRelay, caplog: pytest.LogCaptureFixture
) -> None:
    retry = StorageRetry(30, first_wait=0.05)
    study = optuna.create_study(study_name=STUDY, storage=open_storage(relay.url(private_db), retry=retry))

    relay.lose_commit_reply_after(b"INSERT INTO trials ")
    with caplog.at_level(logging.WARNING, logger="harness.sweep.retry"):
        trial = study.ask()  # its INSERT landed; the retry finds the trial by its token rather than making another
    assert relay.cuts == 1 and retry.retries >= 1
    assert [(t.number, t.state.name) for t in study.get_trials()] == [(0, "RUNNING")]
    [first, *_] = [r.getMessage() for r in _records(caplog, "harness.sweep.retry")]
    assert first.startswith("storage unreachable, retrying for up to 30 s (create_new_trial: database connection lost")

    relay.lose_commit_reply_after(b"UPDATE trials SET")
    study.tell(trial, 0.75)  # landed; the retry finds trial 0 complete with 0.75 and takes that for its own success
    assert relay.cuts == 2
    assert [(t.number, t.state.name, t.value) for t in study.get_trials()] == [(0, "COMPLETE", 0.75)]

    relay.lose_commit_reply_after(b"INSERT INTO trials ")
    study.enqueue_trial({"x": 0.5}, user_attrs={"enqueued_from": "baseline.yaml"})
    assert relay.cuts == 3
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "WAITING"]


@pytest.mark.faults
def test_a_lost_reply_to_taking_an_enqueued_trial_leaves_it_to_the_reaper_which_enqueues_it_again(
    private_db: str, relay: LostReplyRelay
) -> None:
    from harness.sweep.liveness import mark_worker, reap_dead_trials

    study = optuna.create_study(study_name=STUDY, storage=open_storage(relay.url(private_db), retry=StorageRetry(30)))
    study.enqueue_trial({"x": 0.5}, user_attrs={"enqueued_from": "baseline.yaml"})
    relay.lose_commit_reply_after(b"UPDATE trials SET")
    # Taking trial 0 landed, but its retry cannot tell it from another worker's taking it, so ask moves on.
    trial = study.ask()
    mark_worker(trial)
    assert relay.cuts == 1 and trial.number == 1

    assert reap_dead_trials(study) == [0]  # unmarked under the storage lock: nobody's, so failed and enqueued again
    taken, ours, again = study.get_trials()
    assert taken.state.name == "FAIL" and taken.user_attrs["fail_reason"] == "worker died (before it marked the trial)"
    assert ours.state.name == "RUNNING"
    assert again.state.name == "WAITING" and again.system_attrs["fixed_params"] == {"x": 0.5}
    assert again.user_attrs == {"enqueued_from": "baseline.yaml", "retry_of": 0}


@pytest.mark.faults
def test_the_postgres_lock_knows_when_a_restart_took_it(private_postgres: PrivateServer, private_db: str) -> None:
    with storage_lock(private_db) as hold:
        assert hold.held()
        private_postgres.stop()
        assert not hold.held()
        private_postgres.start()
        assert not hold.held()  # a new session, which holds nothing
    # Leaving the hold did not fail on the dead session, and the lock is free to take again.
    with storage_lock(private_db, StorageRetry(30)) as hold:
        assert hold.held()


@pytest.mark.faults
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # Optuna's hint that heartbeats belong to optimize()
def test_after_a_restart_no_heartbeat_is_stale_until_the_server_has_been_up_a_grace_period(
    private_postgres: PrivateServer, private_db: str
) -> None:
    from harness.sweep import optuna_access

    storage = open_storage(private_db, heartbeat_interval=1, grace_period=2, retry=StorageRetry(30, first_wait=0.1))
    study = optuna.create_study(study_name=STUDY, storage=storage)
    trial = study.ask()
    optuna_access.record_heartbeat(study, trial)
    time.sleep(3)  # silent past the grace period, on a server up that long too
    assert [t.number for t in optuna_access.stale_trials(study)] == [trial.number]

    private_postgres.stop()
    private_postgres.start()
    # Every worker's beats stopped with the server: none is judged until each had a grace period to beat again.
    assert optuna_access.stale_trials(study) == []
    time.sleep(2.5)
    assert [t.number for t in optuna_access.stale_trials(study)] == [trial.number]


@pytest.mark.faults
@pytest.mark.slow
def test_two_workers_wait_out_a_postgres_restart_and_finish_exactly_n_trials(
    synthetic_root: Path, tmp_path: Path, private_postgres: PrivateServer, private_db: str
) -> None:
    trials = 6
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=2)
    command = _sweep_command(space, trials, private_db, tmp_path, "--storage-retry-seconds", "120")
    workers = [subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = ["", ""]
    deadline = time.monotonic() + 170  # the whole test, server restart included, stays under 3 minutes
    try:
        engine = sa.create_engine(private_db, poolclass=sa.pool.NullPool)
        # Mid-sweep: some trial finished and some still to run.
        while _finished_in(engine) < 1:
            assert time.monotonic() < deadline - 60, "no trial finished in time"
            assert all(w.poll() is None for w in workers), [w.communicate()[0] for w in workers]
            time.sleep(0.5)
        engine.dispose()
        private_postgres.stop()
        time.sleep(15)  # down long enough that every worker meets it: the trials train on, then wait to report
        private_postgres.start()
        for i, worker in enumerate(workers):
            outputs[i], _ = worker.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    assert any("storage unreachable, retrying for up to 120 s" in output for output in outputs), outputs
    assert any("storage reachable again after" in output for output in outputs), outputs

    study = optuna.load_study(study_name=STUDY, storage=open_storage(private_db))
    done = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == trials
    assert not [t for t in study.get_trials() if t.state.name in ("RUNNING", "WAITING")]
    assert [t.number for t in study.get_trials()] == list(range(len(study.get_trials())))
    assert len({t.user_attrs["pid"] for t in done}) == 2, "both workers must have run trials"


def _finished_in(engine: sa.engine.Engine) -> int:
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")).scalar_one()
    except sa.exc.ProgrammingError:  # no tables yet: the first worker is still creating the study
        return 0

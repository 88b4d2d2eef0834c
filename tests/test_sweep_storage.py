"""--storage: a journal file, SQLite or PostgreSQL; any other URL is refused in one line (exit 2) before a sweep
indexes or caches data or writes a study, and never becomes a journal file in a folder named after its scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import StudyError
from harness.sweep.storage import check_storage, open_storage, storage_lock
from helpers import write_space

# (--storage, the scheme the error names); the passwords must not reach the terminal.
REFUSED = [
    ("redis://:secret@127.0.0.1:6379/0", "redis://"),
    ("rediss://127.0.0.1:6380/0", "rediss://"),
    ("mysql+pymysql://harness:secret@127.0.0.1/optuna", "mysql://"),
    ("mariadb://harness:secret@127.0.0.1/optuna", "mariadb://"),
    ("mssql+pyodbc://harness:secret@dsn", "mssql://"),
    ("s3://bucket/optuna.journal", "s3://"),
]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize(("storage", "scheme"), REFUSED, ids=[scheme for _, scheme in REFUSED])
def test_sweep_refuses_a_storage_url_it_cannot_share_and_writes_nothing(
    storage: str, scheme: str, synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    # Real data and a frame cache to build, so a late refusal would leave an index or cache behind.
    space = write_space(tmp_path, synthetic_root, {"type": "median"})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store, in this folder
    before = _tree(work), _tree(synthetic_root)

    assert main(["sweep", "--space", str(space), "--trials", "1", "--storage", storage, "--quiet"]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness sweep: error: --storage must be a journal file path"), err
    assert f"but got {scheme}..." in err[0] and "secret" not in err[0]
    assert (_tree(work), _tree(synthetic_root)) == before


def test_export_best_refuses_the_same_urls(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["export-best", "--study-name", "demo", "--storage", "redis://127.0.0.1:6379/0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "harness export-best: error: --storage must be" in err[0] and "JournalRedisBackend" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_mysql_is_refused_because_no_lock_guards_count_then_ask(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match=r"mysql://\.\.\. \(the sweep's count-then-ask lock \(storage_lock\) holds only "
                                         r"for files and PostgreSQL, so two workers could both start the last trial\)"):
        open_storage("mysql://harness@127.0.0.1/optuna")
    with pytest.raises(StudyError, match="mysql://"), storage_lock("mysql://harness@127.0.0.1/optuna"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_journal_files_sqlite_and_postgresql_urls_are_told_apart() -> None:
    assert check_storage(None) == check_storage("optuna.journal") == check_storage("runs/a:b/optuna.journal") == "journal"
    assert check_storage("sqlite:///optuna.db") == check_storage("sqlite+pysqlite:///optuna.db") == "sqlite"
    assert check_storage("postgresql+psycopg2://harness@127.0.0.1/optuna") == "postgresql"


def test_a_sqlite_url_with_a_driver_gets_its_file_lock(tmp_path: Path) -> None:
    database = tmp_path / "optuna.db"
    with storage_lock(f"sqlite+pysqlite:///{database}"):
        assert (tmp_path / "optuna.db.harness-lock").exists()
    with storage_lock("sqlite://"):  # in memory: no other process can reach it, so no lock file
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db.harness-lock"]


def test_a_postgresql_storage_without_its_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # how Python itself marks a module as not importable
    with pytest.raises(StudyError, match=r"needs the psycopg2 driver.*pip install 'harness\[postgres\]'"):
        check_storage("postgresql+psycopg2://user@127.0.0.1/db")
    assert check_storage("postgresql+pg8000://user@127.0.0.1/db") == "postgresql"  # another driver: SQLAlchemy's call


def test_a_negative_storage_retry_time_is_refused_before_any_data_is_read(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    space = write_space(tmp_path, synthetic_root, {"type": "median"})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = _tree(work), _tree(synthetic_root)

    assert main(["sweep", "--space", str(space), "--trials", "1", "--storage-retry-seconds", "-1", "--quiet"]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["harness sweep: error: --storage-retry-seconds must be >= 0, but got -1.0"]
    assert (_tree(work), _tree(synthetic_root)) == before


def test_gpus_workers_get_the_storage_retry_time() -> None:
    from harness.cli import _worker_argv, build_parser

    parser = build_parser()
    args = parser.parse_args(["sweep", "--space", "s.yaml", "--gpus", "0,1", "--storage-retry-seconds", "42.5"])
    assert parser.parse_args(_worker_argv(args)).storage_retry_seconds == 42.5


def test_a_database_storage_with_a_retry_asks_and_tells_as_optuna_does(tmp_path: Path) -> None:
    import optuna

    from harness.sweep.retry import StorageRetry
    from harness.sweep.retrying_storage import CREATE_TOKEN, RetryingStorage

    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=60, grace_period=180,
                           retry=StorageRetry(30))
    assert isinstance(storage, RetryingStorage)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 0.25})
    with pytest.warns(UserWarning, match="Heartbeat of storage"):
        enqueued, sampled = study.ask(), study.ask()
    for trial in (enqueued, sampled):
        trial.suggest_float("x", 0, 1)
        trial.report(0.5, step=1)
        trial.set_user_attr("pid", 1)
    study.tell(enqueued, 0.25)
    study.tell(sampled, state=optuna.trial.TrialState.PRUNED)

    reloaded = optuna.load_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    trials = reloaded.get_trials()
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "PRUNED")]
    assert trials[0].params == {"x": 0.25} and trials[0].value == 0.25
    # Each trial holds the token its creation wrote, and only one.
    assert len({t.system_attrs[CREATE_TOKEN] for t in trials}) == 2
    assert reloaded.best_trial.number == 0


def test_a_file_lock_hold_is_held_until_released(tmp_path: Path) -> None:
    with storage_lock(str(tmp_path / "optuna.journal")) as hold:
        assert hold.held()

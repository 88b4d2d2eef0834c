"""`harness sweep --status`: a study read from a real journal or SQLite storage and its parent run from a real
MLflow store, with trials in every state and workers alive, dead and elsewhere; and nothing written, ever."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness.cli import main
from harness.sweep import optuna_access
from harness.sweep.status import format_status, read_status
from harness.sweep.storage import open_storage

HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def _quiet_optuna_and_own_env(monkeypatch: pytest.MonkeyPatch) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The command sets these with setdefault; set here, the test's monkeypatch takes them away again.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been waited for), so no process has it now."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _parent_run(tracking_uri: str, study_name: str, storage: str) -> tuple[str, str]:
    """A sweep parent run tagged as `study._parent_run` tags it; (run id, experiment id)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("harness")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("harness")
    run = client.create_run(experiment_id, run_name=f"sweep-{study_name}", tags={
        "harness.role": "sweep", "harness.study": study_name, "harness.storage": storage,
        "harness.space": f"/spaces/{study_name}.yaml",
    })
    return run.info.run_id, experiment_id


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real SQLite MLflow store for the module (creating one takes seconds); each test names its own study."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    _parent_run(uri, "warm-up", "optuna.journal")  # creates the tables and the experiment
    return uri


def _every_state(study: optuna.Study, alive_pid: int, dead_pid: int, failures: int = 2) -> None:
    """Two complete trials (0.7, 0.9), one pruned, `failures` failed, three running (alive here, dead here,
    another host), one waiting."""
    for value in (0.7, 0.9):
        study.tell(study.ask(), value)
    pruned = study.ask()
    pruned.set_user_attr("prune_reason", "pruned at epoch 2: below the median")
    study.tell(pruned, state=TrialState.PRUNED)
    for i in range(failures):
        failed = study.ask()
        traceback = f"loss became nan at epoch {i}\nTraceback (most recent call last):\n  ..."
        reason = traceback if i else "out of memory " * 30
        failed.set_user_attr("fail_reason", reason)
        study.tell(failed, state=TrialState.FAIL)
    for host, pid in ((HOST, alive_pid), (HOST, dead_pid), ("gpu-box-2", 4242)):
        running = study.ask()
        running.set_user_attr("host", host)
        running.set_user_attr("pid", pid)
    study.enqueue_trial({}, user_attrs={"retry_of": 3})


def _journal_study(folder: Path, name: str, tracking_uri: str, record_parent: bool = True) -> tuple[str, str]:
    """A journal study as a sweep leaves it, trials in every state; (storage path, parent run id)."""
    storage = str(folder / "optuna.journal")
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")
    study.set_user_attr("metric", "video_auc")
    study.set_user_attr("target_trials", 40)
    _every_state(study, os.getpid(), _dead_pid())
    run_id, _ = _parent_run(tracking_uri, name, storage)
    if record_parent:
        study.set_user_attr("mlflow_parent_run_id", run_id)
    return storage, run_id


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_status_counts_every_state_and_names_best_failures_workers_and_parent_run(
    tmp_path: Path, tracking_uri: str
) -> None:
    storage, run_id = _journal_study(tmp_path, "counts", tracking_uri)

    status = read_status("counts", storage, tracking_uri)

    assert (status.direction, status.metric, status.storage) == ("maximize", "video_auc", storage)
    assert status.counts == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 1}
    assert (status.finished, status.target) == (3, 40)
    assert (status.best_number, status.best_value) == (1, 0.9)
    assert status.failures[0] == (3, ("out of memory " * 30).strip())
    assert status.failures[1] == (4, "loss became nan at epoch 1 Traceback (most recent call last): ...")
    assert [(w.trial, w.host, w.alive, w.heartbeat_age) for w in status.workers] == [
        (5, HOST, True, None), (6, HOST, False, None), (7, "gpu-box-2", None, None),
    ]
    assert not status.heartbeats
    parent = status.parent
    assert (parent.run_id, parent.status, parent.problem) == (run_id, "RUNNING", None)
    assert parent.link == f"http://127.0.0.1:5000/#/experiments/{parent.experiment_id}/runs/{run_id}" \
                          "?workflowType=machine_learning"  # MLflow 3.17 opens GenAI pages without it
    assert parent.ui_command == f"mlflow ui --backend-store-uri {tracking_uri}"

    lines = format_status(status, width=100).splitlines()
    assert len(lines) <= 30
    assert all(len(line) <= 100 for line in lines if not line.startswith(("  serve:", "  open:")))
    text = "\n".join(lines)
    assert "trials: 3 of 40 finished (2 complete, 1 pruned); 2 failed, 3 running, 1 waiting" in text
    assert "best: trial 1, video_auc 0.9000" in text
    assert "  trial 4: loss became nan at epoch 1 Traceback" in text
    [alive] = [line for line in lines if line.startswith(f"  trial 5 on {HOST} pid {os.getpid()}, running ")]
    assert alive.endswith(": alive")
    assert "  trial 6 " in text and "gone: the next worker here fails and retries it" in text
    assert "  trial 7 on gpu-box-2 pid 4242" in text and "on another host; a journal keeps no heartbeats" in text
    assert f"MLflow parent run {run_id}: RUNNING" in text
    assert f"  open:  http://127.0.0.1:5000/#/experiments/{parent.experiment_id}/runs/{run_id}?workflowType=machine_learning" in lines


def test_only_the_last_few_failures_are_listed_each_on_one_cut_line(tmp_path: Path, tracking_uri: str) -> None:
    storage = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="failing", storage=open_storage(storage))
    _every_state(study, os.getpid(), _dead_pid(), failures=8)

    status = read_status("failing", storage, tracking_uri)

    assert status.counts["FAIL"] == 8
    assert [number for number, _ in status.failures] == [6, 7, 8, 9, 10]  # the last five
    text = format_status(status, width=80)
    assert "failed trials (last 5 of 8):" in text
    assert text.startswith("study failing: minimize value; storage ")  # no metric recorded: Optuna's name
    assert "best: trial 0, value 0.7000" in text
    assert all(len(line) <= 80 for line in text.splitlines() if not line.startswith(("  serve:", "  open:")))


def test_sweep_status_prints_the_summary_and_writes_nothing(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_id = _journal_study(tmp_path, "demo", tracking_uri)
    monkeypatch.chdir(tmp_path)
    store = Path(tracking_uri.removeprefix("sqlite:///"))
    before, store_before = _tree(tmp_path), store.stat().st_mtime_ns

    # The study name comes from the space file's name; the file itself is not read.
    assert main(["sweep", "--status", "--space", "search_spaces/demo.yaml", "--tracking-uri", tracking_uri]) == 0

    out = capsys.readouterr().out
    assert out.startswith("study demo: maximize video_auc; storage optuna.journal\n")
    assert f"MLflow parent run {run_id}: RUNNING" in out
    assert _tree(tmp_path) == before  # no lock file, no new study, the journal untouched
    assert store.stat().st_mtime_ns == store_before
    study = optuna.load_study(study_name="demo", storage=open_storage("optuna.journal"))
    assert study.trials[6].state == TrialState.RUNNING  # the dead worker's trial is shown, not reaped


def test_parent_run_is_found_by_its_tags_when_the_study_records_none(tmp_path: Path, tracking_uri: str) -> None:
    storage, run_id = _journal_study(tmp_path, "untagged", tracking_uri, record_parent=False)

    parent = read_status("untagged", storage, tracking_uri).parent

    assert (parent.run_id, parent.status, parent.problem) == (run_id, "RUNNING", None)


def test_a_missing_tracking_store_is_reported_and_not_created(tmp_path: Path, tracking_uri: str) -> None:
    storage, run_id = _journal_study(tmp_path, "no-mlflow", tracking_uri)
    absent = tmp_path / "elsewhere" / "mlflow.db"

    status = read_status("no-mlflow", storage, f"sqlite:///{absent}")

    assert status.parent.run_id == run_id and status.parent.problem.startswith("no MLflow store at sqlite:///")
    assert not absent.parent.exists()
    assert status.counts["COMPLETE"] == 2  # the study's lines stand without MLflow
    assert f"MLflow parent run {run_id}: no MLflow store at" in format_status(status)


@pytest.mark.parametrize(
    ("case", "storage", "why"),
    [
        ("no journal file", None, "no such journal file exists"),
        ("another study's journal", "optuna.journal", "it holds only other"),
        ("no sqlite file", "sqlite:///optuna.db", "no such SQLite file exists"),
    ],
)
def test_a_missing_study_exits_2_with_one_line_and_creates_nothing(
    case: str, storage: str | None, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if case == "another study's journal":
        optuna.create_study(study_name="other", storage=open_storage("optuna.journal"))
    before = _tree(tmp_path)

    argv = ["sweep", "--status", "--study-name", "demo"] + (["--storage", storage] if storage else [])
    assert main(argv) == 2

    [line] = capsys.readouterr().err.strip().splitlines()
    shown = storage or "optuna.journal"
    assert line.startswith(f"harness sweep: error: study 'demo' must exist in storage {shown}, but {why}")
    assert f"`optuna studies --storage {shown}` lists" in line
    assert _tree(tmp_path) == before  # no journal, database, lock file or MLflow store


def test_status_needs_a_study_name_or_a_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--status"]) == 2
    assert "--status must know the study: pass --study-name NAME or the sweep's --space" in capsys.readouterr().err
    assert main(["sweep", "--trials", "3"]) == 2
    assert "--space must name a search-space YAML" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # Optuna's hint that heartbeats belong to optimize()
def test_sqlite_storage_shows_heartbeat_ages_and_the_stale_ones(tmp_path: Path, tracking_uri: str) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name="beats", storage=open_storage(storage, 60, 180))
    _every_state(study, os.getpid(), _dead_pid())
    running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    optuna_access.record_heartbeat(study, running[2])  # another host's worker, then silent
    time.sleep(3.1)  # SQLite stamps beats to the second; a loaded machine may add a second more
    optuna_access.record_heartbeat(study, running[0])  # the live worker, just now

    status = read_status("beats", storage, tracking_uri, grace_period=2)

    assert status.heartbeats and status.counts["RUNNING"] == 3
    ages = {w.trial: w.heartbeat_age for w in status.workers}
    assert ages[5] is not None and ages[5] < 2
    assert ages[6] is None  # never beat
    assert ages[7] >= 3
    text = format_status(status, width=200)
    assert re.search(r"alive; heartbeat [01] s ago", text)
    assert "no heartbeat recorded" in text
    [elsewhere] = [line for line in text.splitlines() if line.startswith("  trial 7 on gpu-box-2")]
    assert "on another host; heartbeat " in elsewhere
    assert elsewhere.endswith("ago, past the 2 s grace period: the next worker fails and retries it")


def test_status_reads_a_journal_cut_mid_record_and_leaves_it_as_it_is(tmp_path: Path, tracking_uri: str) -> None:
    storage, _ = _journal_study(tmp_path, "cut", tracking_uri)
    whole = Path(storage).read_bytes()
    last_start = whole.rindex(b"\n", 0, len(whole) - 1) + 1
    Path(storage).write_bytes(whole[: last_start + 15])  # the power went out 15 bytes into the last record
    before = _tree(tmp_path)

    status = read_status("cut", storage, tracking_uri)

    assert sum(status.counts.values()) == 9  # every trial up to the cut record
    assert _tree(tmp_path) == before  # no truncation and no `.cut-` copy: that is the next worker's job

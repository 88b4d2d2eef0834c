"""Optuna's own tools read a sweep's study as it is: the study names its objective after `study.metric`, and a real
optuna-dashboard server on the journal file (or the PostgreSQL database) lists the study, its trials and their user
attributes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest

from harness.sweep.space import SearchSpace, load_space
from harness.sweep.storage import open_storage
from harness.sweep.study import _create_study
from services import _free_port, _stop_process_group, fresh_postgres_db, postgres_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _sweep_like_study(storage: str) -> tuple[SearchSpace, optuna.Study]:
    """The demo space's study as `harness sweep` creates it, with three trials told the way a sweep tells them:
    the two enqueued ones (baseline, recommended), then a sampled one."""
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    study = _create_study(space, "demo", storage, 0, 0)
    for value in (0.71, None, 0.83):  # None: pruned
        trial = study.ask()
        space.config_for(space.suggest(trial))
        trial.set_user_attr("epochs_run", 6 if value else 2)
        trial.set_user_attr("mlflow_run_id", f"run-{trial.number}")
        if value is None:
            trial.set_user_attr("prune_reason", "median pruner at epoch 2")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return space, study


def test_the_study_names_its_objective_after_the_space_metric(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    _sweep_like_study(str(journal))
    # Read back from the file, as optuna-dashboard and `optuna trials` do.
    study = optuna.load_study(study_name="demo", storage=open_storage(str(journal)))
    assert study.metric_names == ["video_auc"]
    assert study.trials_dataframe(attrs=("value",)).columns.tolist() == ["value_video_auc"]


@contextmanager
def optuna_dashboard(storage: str, log_dir: Path, timeout: float = 60) -> Iterator[str]:
    """`optuna-dashboard <journal file or database URL>` on a free 127.0.0.1 port; yields its URL and always stops it.

    wsgiref rather than gunicorn (picked when installed): one process, and no control socket in the
    home folder that two test workers would share; the storage is read the same either way.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"optuna-dashboard-{port}.log"
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage,
               "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref"]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(f"{url}/api/meta"):
            if process.poll() is not None:
                raise RuntimeError(f"optuna-dashboard exited with {process.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"optuna-dashboard at {url} did not answer within {timeout:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        _stop_process_group(process)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return False


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(params=["journal", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The default journal file, or a fresh PostgreSQL database (skipped where the test server is not running)."""
    if request.param == "journal":
        return str(tmp_path / "optuna.journal")
    return request.getfixturevalue("fresh_postgres_db")


def test_optuna_dashboard_lists_the_sweeps_study_trials_and_user_attrs(storage: str, tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e '.[dashboard]')")
    space, study = _sweep_like_study(storage)

    with optuna_dashboard(storage, tmp_path) as url:
        (listed,) = _get(f"{url}/api/studies")["study_summaries"]
        detail = _get(f"{url}/api/studies/{listed['study_id']}")

    assert (listed["study_name"], listed["directions"]) == ("demo", ["maximize"])
    study_attrs = {a["key"]: a["value"] for a in listed["user_attrs"]}
    assert study_attrs["metric"] == "video_auc" and study_attrs["space_path"] == str(space.path.resolve())
    assert detail["objective_names"] == ["video_auc"]
    trials = detail["trials"]
    assert [(t["number"], t["state"], t.get("values")) for t in trials] == [(0, "Complete", [0.71]), (1, "Pruned", None),
                                                                         (2, "Complete", [0.83])]
    attrs = [{a["key"]: a["value"] for a in t["user_attrs"]} for t in trials]
    assert [a.get("enqueued_from") for a in attrs] == ["baseline.yaml", "recommended.yaml", None]
    assert [(a["epochs_run"], a["mlflow_run_id"]) for a in attrs] == [("6", "run-0"), ("2", "run-1"), ("6", "run-2")]
    assert attrs[1]["prune_reason"] == "median pruner at epoch 2"
    for shown, told in zip(trials, study.trials):
        assert {p["name"]: p["param_external_value"] for p in shown["params"]} == {
            name: str(value) for name, value in told.params.items()
        }
    assert [t["number"] for t in detail["best_trials"]] == [2]

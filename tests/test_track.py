"""MLflowTracker against a real SQLite store: opened lazily, large batches, and the one way a failed run is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.track.mlflow_run import MLflowTracker


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _raise(exc: BaseException) -> BaseException:
    """`exc` with a traceback, as a caller's except block sees it."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_tracker_opens_no_store_until_it_makes_a_run(tmp_path: Path) -> None:
    db = tmp_path / "lazy.db"
    tracker = MLflowTracker(f"sqlite:///{db}", "lazy", run_name="r")
    assert not db.exists()  # a command stopped by bad input before its run leaves no store behind
    tracker.ensure_run()
    assert db.exists() and tracker.client.get_run(tracker.run_id).info.run_name == "r"


def test_batches_over_mlflow_limits_are_logged_whole(store_uri: str) -> None:
    # 100 params or tags and 1000 metrics per request: MlflowClient.log_batch splits larger batches itself.
    tracker = MLflowTracker(store_uri, "batches")
    tracker.ensure_run()
    tracker.log_params({f"p{i}": i for i in range(250)})
    tracker.set_tags({f"t{i}": i for i in range(150)})
    tracker.log_metrics({f"m{i}": float(i) for i in range(1500)}, step=3)
    data = tracker.client.get_run(tracker.run_id).data
    assert len(data.params) == 250 and data.params["p249"] == "249"
    assert {f"t{i}" for i in range(150)} <= set(data.tags) and data.tags["t149"] == "149"
    assert len(data.metrics) == 1500 and data.metrics["m1499"] == 1499.0


def test_a_failure_is_recorded_with_the_same_tags_and_cut_to_5000_characters(store_uri: str) -> None:
    tracker = MLflowTracker(store_uri, "failures", run_name="broken", tags={"harness.role": "compare-run"})
    error = _raise(ValueError("x" * 9000))
    reason = tracker.record_failure(error, tags={"optuna.state": "FAIL", "optuna.reason": "y" * 9000})
    run = tracker.client.get_run(tracker.run_id)  # created by record_failure: it failed before any hook ran
    tags = run.data.tags
    assert run.info.status == "FAILED" and reason.startswith("ValueError: xxx")
    assert tags["harness.status"] == "failed" and tags["harness.role"] == "compare-run"
    assert tags["harness.reason"] == reason[:5000] and len(tags["optuna.reason"]) == 5000
    assert len(tags["traceback"]) == 5000 and tags["traceback"].endswith("x\n")  # the end, where the message is
    assert tags["optuna.state"] == "FAIL"


def test_an_interrupt_closes_the_run_as_killed(store_uri: str) -> None:
    tracker = MLflowTracker(store_uri, "failures")
    tracker.ensure_run()
    assert tracker.record_failure(_raise(KeyboardInterrupt())) == "interrupted"
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["harness.status"] == "interrupted"
    assert "KeyboardInterrupt" in run.data.tags["traceback"]
    # A reason given by the caller (a trial's "oom: ...") is the one recorded.
    other = MLflowTracker(store_uri, "failures")
    other.record_failure(_raise(RuntimeError("CUDA out of memory")), "oom: CUDA out of memory")
    assert other.client.get_run(other.run_id).data.tags["harness.reason"] == "oom: CUDA out of memory"


def test_a_failed_run_says_why_in_its_description(store_uri: str) -> None:
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    tracker = MLflowTracker(store_uri, "failures", description="Trial 5 of `demo` (sampled): optim.lr=0.01")
    tracker.record_failure(_raise(RuntimeError("CUDA out of memory")), "oom: CUDA out of memory")
    note = tracker.client.get_run(tracker.run_id).data.tags[MLFLOW_RUN_NOTE]
    assert note == "Trial 5 of `demo` (sampled): optim.lr=0.01\n\n**failed**: oom: CUDA out of memory"


def test_a_buffered_client_uploads_an_artifact_named_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sweep run from its own folder names its checkpoints runs/sweeps/<study>/trial-N/best.pt, relative paths
    # inside the outbox's own (relative) folder: they must upload as given, not joined onto that folder again.
    from mlflow import MlflowClient

    from harness.track.outbox import BufferedClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plain = MlflowClient(uri)
    run_id = plain.create_run(plain.create_experiment("e")).info.run_id
    folder = Path("runs/sweeps/demo/trial-0")
    folder.mkdir(parents=True)
    (folder / "best.pt").write_bytes(b"weights")
    BufferedClient(plain, uri, folder).log_artifact(run_id, str(folder / "best.pt"))
    assert [a.path for a in plain.list_artifacts(run_id)] == ["best.pt"]


_OPEN_AND_LIST = """
import sys
from harness.track.mlflow_run import experiment_id, open_client
client = open_client(sys.argv[1])
print(experiment_id(client, "harness"))
"""


def test_two_processes_creating_one_new_sqlite_store_share_it_and_leave_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    workers = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_LIST, uri], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in results]
    assert results[0][0].strip() == results[1][0].strip()  # one store, so one experiment id for both
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["mlflow.db"]
    experiments = {e.name: e for e in MlflowClient(uri).search_experiments()}
    assert set(experiments) == {"Default", "harness"}
    # Experiment 0 keeps artifacts where MLflow puts them for a store it creates itself (from the same folder).
    monkeypatch.chdir(tmp_path)
    made_by_mlflow = MlflowClient(f"sqlite:///{tmp_path / 'reference.db'}").get_experiment("0").artifact_location
    assert made_by_mlflow == experiments["Default"].artifact_location == str(tmp_path / "mlruns" / "0")


def test_ui_pages_open_in_the_model_training_view_and_name_what_serves_them() -> None:
    from harness.track.mlflow_run import ui_command, ui_link

    assert ui_link("sqlite:///mlflow.db", "3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert ui_link("http://tracking:5000/", "3", "abc") == (
        "http://tracking:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    assert ui_command("sqlite:///mlflow.db") == "mlflow ui"  # the default store, which `mlflow ui` opens itself
    assert ui_command("sqlite:////data/m.db") == "mlflow ui --backend-store-uri sqlite:////data/m.db"
    assert ui_command("https://tracking.example") is None  # a server serves its own UI

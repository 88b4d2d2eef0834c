"""The MLflow tracking server killed mid-run (SIGKILL, as a crash or an OOM kill would): training goes on, its writes
wait in the run folder's outbox, and every epoch, artifact and the run's end reach the server once it is back,
on its own or through `harness sync`.

Real `mlflow server` processes on a SQLite store, real `harness train`, `harness sweep` and `harness sync` processes
on the tiny synthetic data.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from harness.track.outbox import HTTP_DEFAULTS, QUEUE_NAME, BufferedClient, Outbox, deliver, deliver_pending, is_pending
from helpers import ROOT, tiny_overrides, write_space
from services import start_mlflow_server

pytestmark = [pytest.mark.faults, pytest.mark.slow]

OUTAGE_SECONDS = 10  # a restart takes a minute in life; the same code paths run here in seconds
DOWN = "unreachable ("
BACK = "reachable again after"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_FAULTS", "MLFLOW_TRACKING_URI")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(command: list[str], tmp: Path) -> tuple[subprocess.Popen, Path]:
    """Run `command` in `tmp`, its output (stdout and stderr) going to a file; the process and the file."""
    log = tmp / "harness.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=tmp, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
    return process, log


def _start_train(tmp: Path, root: Path, url: str, epochs: int) -> tuple[subprocess.Popen, Path]:
    """`harness train` into runs/outage under `tmp`, `epochs` long with no early stop."""
    sets = [*tiny_overrides(root, tmp), f"train.epochs={epochs}", "early_stop.patience=1000"]
    return _start([sys.executable, "-m", "harness", "train", "--config", str(ROOT / "baseline.yaml"),
                   *(arg for item in sets for arg in ("--set", item)), "--run-dir", str(tmp / "runs" / "outage"),
                   "--tracking-uri", url, "--quiet"], tmp)


def _kill(server: subprocess.Popen) -> None:
    """SIGKILL the server's whole group (the CLI and its uvicorn worker), as a crash would; a dead one is left be."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _wait_for_first_epoch(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until a run on the server holds a training epoch's metrics."""
    client = MlflowClient(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"harness exited ({process.returncode}) before an epoch:\n{log.read_text()}"
        experiment = client.get_experiment_by_name("harness")
        if experiment is not None:
            if any("train_loss" in run.data.metrics for run in client.search_runs([experiment.experiment_id])):
                return
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"no epoch was logged within {timeout} s:\n{log.read_text()}")


def _finish(process: subprocess.Popen, log: Path, timeout: float = 150) -> str:
    """Wait for `process` to exit 0; its output."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"harness did not end within {timeout} s:\n{log.read_text()}") from None
    output = log.read_text()
    assert process.returncode == 0, output
    return output


def _assert_whole_run(url: str, run_dir: Path, epochs: int) -> None:
    """One FINISHED run with every epoch's train and val point, its end-of-run artifacts, named by the run folder."""
    client = MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("harness").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["harness.status"] == "completed"
    for key in ("train_loss", "val_loss", "val_video_auc"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(1, epochs + 1)), key
    assert run.data.params["train.epochs"] == str(epochs)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "config.yaml", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    assert not (run_dir / QUEUE_NAME).exists()


def test_a_server_restarted_mid_run_gets_every_epoch_and_the_end_without_help(synthetic_root: Path, tmp_path: Path) -> None:
    backend, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts"
    server, url = start_mlflow_server(backend, artifacts)
    port = int(url.rsplit(":", 1)[1])
    epochs = 30  # ~18 s on 2 idle cores, so training outlasts the outage
    train, log = _start_train(tmp_path, synthetic_root, url, epochs)
    run_dir = tmp_path / "runs" / "outage"
    try:
        _wait_for_first_epoch(url, train, log)
        _kill(server)
        time.sleep(OUTAGE_SECONDS)
        assert train.poll() is None, f"the run ended within the outage; raise `epochs`:\n{log.read_text()}"
        assert (run_dir / QUEUE_NAME).exists()  # training went on and queued its writes
        # Held while the server starts again (a few seconds, more on a busy machine), so that however fast the
        # epochs are, the run is still training when the server is back.
        train.send_signal(signal.SIGSTOP)
        try:
            server, _ = start_mlflow_server(backend, artifacts, port=port)
        finally:
            train.send_signal(signal.SIGCONT)
        output = _finish(train, log)
        # Once per outage, not per write: one line when it began and one when the queue went out.
        assert output.count(DOWN) == 1 and output.count(BACK) == 1, output
        assert "still queued" not in output
        _assert_whole_run(url, run_dir, epochs)
    finally:
        train.kill()
        _kill(server)


def test_a_sweep_that_outlasts_the_server_exits_0_and_harness_sync_delivers_its_trials_and_parent(
    synthetic_root: Path, tmp_path: Path
) -> None:
    backend, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts"
    server, url = start_mlflow_server(backend, artifacts)
    port = int(url.rsplit(":", 1)[1])
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=3)
    sweep, log = _start([sys.executable, "-m", "harness", "sweep", "--space", str(space), "--trials", "2",
                         "--storage", str(tmp_path / "optuna.journal"), "--study-name", "t", "--tracking-uri", url,
                         "--plain"], tmp_path)
    study_dir = tmp_path / "runs" / "sweeps" / "t"
    try:
        _wait_for_first_epoch(url, sweep, log)
        _kill(server)
        output = _finish(sweep, log)  # trial 0 ends, trial 1 runs and the sweep closes, all with no server
        # One line per run that met the outage: trial 0, trial 1 (created while down), the parent closing.
        assert output.count(DOWN) == 3 and BACK not in output, output
        assert output.count("still queued") == 3 and "2 complete, 0 pruned, 0 failed" in output, output
        assert sorted(q.parent.name for q in study_dir.glob(f"**/{QUEUE_NAME}")) == ["t", "trial-0", "trial-1"]
        trial_1 = json.loads((study_dir / "trial-1" / "mlflow_run.json").read_text())["run_id"]
        assert is_pending(trial_1)

        server, _ = start_mlflow_server(backend, artifacts, port=port)
        # No --tracking-uri: each outbox knows its server. No FOLDER: the runs sit under ./runs.
        sync = subprocess.run([sys.executable, "-m", "harness", "sync"], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert sync.stdout.count("queued write(s)") == 3 and " left" not in sync.stdout, sync.stdout
        assert not list(study_dir.glob(f"**/{QUEUE_NAME}")) and not list(study_dir.glob("**/mlflow_outbox.files"))
        assert deliver_pending(tmp_path / "runs") == []  # nothing left to send twice

        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("harness").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
        assert parent.info.status == "FINISHED"
        assert "trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert parent.data.metrics["n_complete"] == 2
        children = {r.data.tags["optuna.trial"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
        assert sorted(children) == ["0", "1"]
        for number, child in children.items():
            assert child.info.status == "FINISHED" and child.data.tags["optuna.state"] == "COMPLETE"
            for key in ("train_loss", "val_loss"):
                assert sorted(m.step for m in client.get_metric_history(child.info.run_id, key)) == [1, 2, 3], key
            assert "curves.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
            sidecar = json.loads((study_dir / f"trial-{number}" / "mlflow_run.json").read_text())
            assert sidecar["run_id"] == child.info.run_id  # trial 1's placeholder replaced by its real id
    finally:
        sweep.kill()
        _kill(server)


def test_a_run_created_while_the_server_is_down_is_created_on_delivery_under_its_real_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in HTTP_DEFAULTS.items():  # as the tracker sets them, for this test alone
        monkeypatch.setenv(name, value)
    with socket.socket() as probe:  # a port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    client = BufferedClient(MlflowClient(url), url, run_dir)
    experiment = client.experiment_id("harness")
    run = client.create_run(experiment, tags={"role": "trial"}, run_name="trial-0")
    assert is_pending(run.info.run_id)
    (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": run.info.run_id, "experiment_id": experiment}))
    for step in (1, 2, 3):
        client.log_batch(run.info.run_id, metrics=[Metric("val_loss", 1.0 / step, int(time.time() * 1000), step)])
    scratch = tmp_path / "curves.txt"
    scratch.write_text("a temporary file, gone before the server is back")
    client.log_artifact(run.info.run_id, scratch)
    scratch.unlink()
    client.set_terminated(run.info.run_id, "FAILED")
    assert len((run_dir / QUEUE_NAME).read_text().splitlines()) == 6

    server, _ = start_mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", port=port)
    try:
        (delivery,) = deliver_pending(tmp_path)  # as a sweep does between trials, and `harness sync`
        assert (delivery.delivered, delivery.rejected, delivery.left) == (6, 0, 0)
        real_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        assert delivery.ids == {run.info.run_id: real_id}
        stored = MlflowClient(url).get_run(real_id)
        assert stored.info.status == "FAILED" and stored.info.run_name == "trial-0"
        assert stored.data.tags["role"] == "trial"
        assert [m.step for m in MlflowClient(url).get_metric_history(real_id, "val_loss")] == [1, 2, 3]
        assert [a.path for a in MlflowClient(url).list_artifacts(real_id)] == ["curves.txt"]
        # The placeholder stays resolvable for a process still holding it.
        client.log_batch(run.info.run_id, metrics=[Metric("late", 1.0, int(time.time() * 1000), 4)])
        assert MlflowClient(url).get_run(real_id).data.metrics["late"] == 1.0
    finally:
        _kill(server)


def test_a_refused_or_cut_write_is_set_aside_and_the_rest_go_out_in_order(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    outbox = Outbox(tmp_path / "run")
    with outbox.locked():
        for kind, target, payload in [
            ("log_batch", run_id, {"metrics": [["m", 1.0, 1, 1]], "params": [["p", "1"]], "tags": []}),
            ("log_batch", "0" * 32, {"metrics": [["m", 1.0, 1, 1]], "params": [], "tags": []}),  # no such run
            ("log_batch", run_id, {"metrics": [], "params": [["p", "2"]], "tags": []}),  # a param may not change
            ("log_batch", run_id, {"metrics": [["m", 2.0, 2, 2]], "params": [], "tags": [["t", "last"]]}),
        ]:
            outbox.append({"kind": kind, "run_id": target, "payload": payload, "time": 0}, uri)
        with open(outbox.queue, "a") as queue:
            queue.write('{"kind": "log_batch", "run_id": "')  # a writer killed mid-line
        outbox.append({"kind": "set_terminated", "run_id": run_id, "payload": {"status": "FINISHED", "end_time": 5},
                       "time": 0}, uri)
        delivery = deliver(outbox, client)
    assert (delivery.delivered, delivery.rejected, delivery.left) == (3, 3, 0)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["t"] == "last" and run.data.params["p"] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "m")] == [1, 2]
    assert not outbox.pending()
    rejected = [json.loads(line) for line in outbox.rejected.read_text().splitlines()]
    assert len(rejected) == 3 and "unreadable record" in rejected[2]["error"]

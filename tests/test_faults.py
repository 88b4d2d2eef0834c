"""Fault injection with real `harness` processes on tiny data: kill -9, Ctrl-C, out of memory, NaN,
a video that stops decoding, and several workers on a real PostgreSQL with a real `mlflow server`.

Faults that cannot be summoned on a CPU (CUDA out of memory, a loss that diverges on cue, a worker
caught mid-trial) come from HARNESS_FAULTS (harness/faults.py); everything that handles them is the
real code. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from harness.config import load_config
from harness.data.index import build_manifest
from harness.faults import ENV_VAR
from harness.sweep.storage import open_storage
from services import fresh_postgres_db, mlflow_server, postgres_url  # noqa: F401
from helpers import ROOT, corrupt_keeping_size_and_mtime, write_space

pytestmark = [pytest.mark.faults, pytest.mark.slow]

STUDY = "faults"


def _env(faults: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["PYTHONUNBUFFERED"] = "1"
    if faults:
        env[ENV_VAR] = faults
    return env


def _sweep(tmp: Path, space: Path, trials: int, *extra: str, storage: str | None = None, uri: str | None = None) -> list[str]:
    return [sys.executable, "-m", "harness", "sweep", "--space", str(space), "--trials", str(trials),
            "--storage", storage or str(tmp / "optuna.journal"), "--study-name", STUDY,
            "--tracking-uri", uri or f"sqlite:///{tmp / 'mlflow.db'}", "--quiet", *extra]


def _default_sigint() -> None:
    # Run in the child before exec: a non-interactive shell starts a background job (`pytest ... &`) with SIGINT
    # ignored, children inherit that, and the worker would never see the test's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(cmd: list[str], tmp: Path, faults: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=tmp, env=_env(faults), capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_default_sigint)


def _start(cmd: list[str], tmp: Path, faults: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=tmp, env=_env(faults), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}) before {path} appeared:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def _worker_paused_in_trial_0(tmp: Path, data: Path) -> tuple[Path, str, subprocess.Popen]:
    """A 2-trial sweep worker stopped after trial 0's first epoch was checkpointed: (space, tracking URI, process)."""
    space = write_space(tmp, data, {"type": "none"})
    worker = _start(_sweep(tmp, space, 2), tmp, "pause_after_epoch=1")
    _wait_for(tmp / "runs" / "sweeps" / STUDY / "trial-0" / "run_state.json", worker)
    return space, f"sqlite:///{tmp / 'mlflow.db'}", worker


def _trials(tmp: Path, storage: str | None = None) -> list:
    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage or str(tmp / "optuna.journal")))
    return study.get_trials()


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("harness").experiment_id], max_results=1000)


def _trial_run(runs: list, number: int):
    [run] = [r for r in runs if r.data.tags.get("optuna.trial") == str(number)]
    return run


def _parent(runs: list):
    [run] = [r for r in runs if r.data.tags.get("harness.role") == "sweep"]
    return run


def test_kill_9_mid_trial_then_rerun_fails_retries_and_resumes_it(synthetic_root: Path, tmp_path: Path) -> None:
    space, uri, worker = _worker_paused_in_trial_0(tmp_path, synthetic_root)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert [t.state.name for t in _trials(tmp_path)][:1] == ["RUNNING"]
    assert _trial_run(_runs(uri), 0).info.status == "RUNNING"

    rerun = _run(_sweep(tmp_path, space, 2), tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resumed: failed 1 dead trial(s) [0] (each retried once) and closed 1 cut-off MLflow run(s)" in rerun.stdout

    trials = _trials(tmp_path)
    # 0: killed baseline; 1: recommended (enqueued before the kill); 2: the retry of 0.
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[0].user_attrs["fail_reason"] == "worker died (process gone)"
    assert trials[2].user_attrs["retry_of"] == 0 and trials[2].params == trials[0].params
    # Epoch 1 of the retry is the dead trial's, replayed: the pruner sees it, no second training.
    assert sorted(trials[2].intermediate_values) == [1, 2, 3, 4]
    assert trials[2].intermediate_values[1] == trials[0].intermediate_values[1]

    runs = _runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    dead, retry = _trial_run(runs, 0), _trial_run(runs, 2)
    assert dead.info.status == "KILLED" and dead.data.tags["optuna.reason"] == "cut off: worker stopped mid-trial"
    assert retry.info.status == "FINISHED" and retry.data.tags["harness.retry_of"] == "0"
    assert retry.data.tags["harness.resumed_from"] == "trial 0 after epoch 1"
    client = MlflowClient(uri)
    seconds = {r: [m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds")] for r in (dead, retry)}
    assert len(seconds[retry]) == 4 and seconds[retry][0] == seconds[dead][0]  # epoch 1 carried over, not retrained
    assert _parent(runs).info.status == "FINISHED"


def test_ctrl_c_records_the_trial_as_interrupted_and_says_how_to_resume(synthetic_root: Path, tmp_path: Path) -> None:
    _, uri, worker = _worker_paused_in_trial_0(tmp_path, synthetic_root)
    worker.send_signal(signal.SIGINT)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 130, out
    assert 'interrupted: trial 0 recorded as failed ("interrupted") and its MLflow run closed' in out
    assert "Rerun the same command to resume" in out

    [trial, waiting] = _trials(tmp_path)
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"
    assert waiting.state.name == "WAITING"  # the enqueued recommended trial is still to run
    runs = _runs(uri)
    assert _trial_run(runs, 0).info.status == "KILLED" and _trial_run(runs, 0).data.tags["optuna.reason"] == "interrupted"
    assert _parent(runs).info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_injected_out_of_memory_backs_off_and_the_trial_completes(synthetic_root: Path, tmp_path: Path) -> None:
    # 2 epochs: the last epoch's logged micro-batch shows the back-off lasting past the epoch it happened in.
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _run(_sweep(tmp_path, space, 1), tmp_path, faults="oom_above=4")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "out of memory at micro-batch 8 in epoch 1: now micro-batch 4 x 2 accumulation steps" in done.stderr

    [trial, _] = _trials(tmp_path)
    assert trial.state.name == "COMPLETE"
    run = _trial_run(_runs(uri), 0)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["micro_batch_size"] == 4 and run.data.metrics["grad_accum_steps"] == 2
    assert "effective batch 8" in run.data.tags["harness.event.oom_backoff"]
    local = MlflowClient(uri).download_artifacts(run.info.run_id, "events.json", str(tmp_path))
    assert '"kind": "oom_backoff"' in Path(local).read_text()


def test_out_of_memory_at_the_floor_and_nan_fail_trials_with_reasons_and_the_sweep_goes_on(
    synthetic_root: Path, tmp_path: Path
) -> None:
    space = write_space(tmp_path, synthetic_root, {"type": "none"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Every trial of this worker fails: out of memory down to micro-batch 1, then NaN in epoch 2.
    oom = _run(_sweep(tmp_path, space, 1, "--max-failures", "1"), tmp_path, faults="oom_above=0")
    assert oom.returncode == 1, oom.stdout + oom.stderr
    nan = _run(_sweep(tmp_path, space, 1, "--max-failures", "3"), tmp_path, faults="nan_at_epoch=2")
    assert nan.returncode == 1, nan.stdout + nan.stderr
    assert "stopped early: 3 failed trials reached --max-failures 3" in nan.stdout

    trials = _trials(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "FAIL"]
    reasons = [t.user_attrs["fail_reason"] for t in trials]
    assert reasons[0].startswith("oom: out of memory at micro-batch 1 in epoch 1 and train.min_batch_size is 1")
    assert reasons[1] == reasons[2] == "nan: loss became nan at epoch 2, batch 1"
    assert [t.user_attrs["epochs_run"] for t in trials] == [1, 2, 2]
    runs = _runs(uri)
    assert [_trial_run(runs, n).info.status for n in range(3)] == ["FAILED"] * 3
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert "failed: trial 1: nan: loss became nan at epoch 2" in nan.stdout


def test_a_video_that_stops_decoding_mid_training_is_skipped_counted_and_reported(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(".harness_frame_cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"data.root={root}", "data.source=ffpp", "data.input_size=32", "data.cache=false",
                 "data.max_bad_fraction=0.2", "train.epochs=2", "train.batch_size=8", f"train.output_dir={tmp_path / 'runs'}"]
    configs = [ROOT / "baseline.yaml", ROOT / "configs" / "demo.yaml"]
    cfg = load_config(configs, overrides)
    common = [arg for c in configs for arg in ("--config", str(c))] + [a for o in overrides for a in ("--set", o)]
    common += ["--tracking-uri", uri]
    manifest = build_manifest(cfg.data, progress=False)  # indexes and caches the manifest the process will reuse
    bad = manifest[(manifest.split == "train") & (manifest.label == 0)].path.iloc[0]
    corrupt_keeping_size_and_mtime(Path(bad))  # after indexing: the cached manifest still lists it

    done = _run([sys.executable, "-m", "harness", "train", *common, "--run-dir", str(tmp_path / "runs" / "r"), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"skipping {bad}" in done.stderr
    assert "completed" in done.stdout
    [run] = _runs(uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["harness.bad_videos"] == bad
    assert run.data.metrics["replaced_clips"] == 1  # the last epoch's count; one clip each epoch
    assert "failed to decode in epoch 1" in run.data.tags["harness.event.bad_video"]


def test_two_workers_on_postgres_with_an_mlflow_server_finish_exactly_n_trials(
    synthetic_root: Path, tmp_path: Path, fresh_postgres_db: str, postgres_url: str
) -> None:
    from services import drop_database, fresh_database

    space = write_space(tmp_path, synthetic_root, {"type": "none"})
    tracking_db = fresh_database(postgres_url, "mlflow_store")
    password = __import__("sqlalchemy").engine.make_url(fresh_postgres_db).password
    assert password
    try:
        with mlflow_server(tracking_db, tmp_path / "artifacts") as server:
            done = _run(_sweep(tmp_path, space, 4, "--gpus", "0,1", storage=fresh_postgres_db, uri=server),
                        tmp_path, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "[gpu 0]" in done.stdout and "[gpu 1]" in done.stdout
            trials = _trials(tmp_path, fresh_postgres_db)
            assert sum(t.state.name == "COMPLETE" for t in trials) == 4
            assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
            assert [t.number for t in trials] == list(range(len(trials)))
            assert len({t.user_attrs["pid"] for t in trials}) == 2, "both workers must have run trials"
            runs = _runs(server)
            children = [r for r in runs if r.data.tags.get("optuna.trial")]
            assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [t.number for t in trials]
            assert all(r.info.status == "FINISHED" for r in runs)
            parent = _parent(runs)
            assert ":***@" in parent.data.tags["harness.storage"]
            for run in runs:  # the storage password reaches no param, tag or metric name
                for value in [*run.data.params.values(), *run.data.tags.values(), *run.data.metrics]:
                    assert password not in str(value), (run.info.run_name, value)
            assert any((tmp_path / "artifacts").rglob("best.pt"))  # checkpoints went through the server
    finally:
        drop_database(tracking_db)

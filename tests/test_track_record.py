"""The MLflow record a reviewer reads, against a real SQLite store: experiment kind, source tags, datasets,
system metrics, descriptions, offline study plots, and compare's reuse keyed on the working folder's commit."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from harness.config import load_config
from harness.track.mlflow_run import MLflowTracker, experiment_id
from harness.track.record import EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT, dataset_inputs, manifest_digest
from harness.train.callbacks import RunInfo
from harness.train.trainer import TrainResult, fit
from helpers import ROOT, tiny_overrides


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    # One store for the module (creating one takes seconds); each test names its own experiment.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _git_checkout(folder: Path, message: str) -> str:
    """A fresh git repository at `folder` with one empty commit; returns the commit."""
    folder.mkdir(parents=True)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=folder,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", message)
    return git("rev-parse", "HEAD")


def _run_info(cfg, run_dir: Path) -> RunInfo:
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunInfo(config=cfg, run_dir=run_dir, device="cpu", n_params=1, class_counts=(2, 10), pos_weight=None,
                   start_epoch=1)


def _config(synthetic_root: Path, tmp_path: Path, *extra: str):
    return load_config([ROOT / "baseline.yaml", ROOT / "configs" / "demo.yaml"],
                       tiny_overrides(synthetic_root, tmp_path) + list(extra))


def test_the_experiment_opens_as_a_training_experiment(store_uri: str) -> None:
    client = MlflowClient(store_uri)
    created = experiment_id(client, "new")
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT
    # One made elsewhere (by hand, or before the harness set the tag) is marked when the harness reuses it.
    older = client.create_experiment("older")
    assert experiment_id(client, "older") == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT


def test_a_run_carries_mlflow_source_tags_and_the_working_folders_commit(
    store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _git_checkout(tmp_path / "checkout", "configs")
    monkeypatch.chdir(tmp_path / "checkout")
    in_checkout = MLflowTracker(store_uri, "source")
    in_checkout.ensure_run()
    tags = in_checkout.client.get_run(in_checkout.run_id).data.tags
    assert tags[MLFLOW_GIT_COMMIT] == commit
    assert tags[MLFLOW_SOURCE_TYPE] == "LOCAL" and tags[MLFLOW_SOURCE_NAME] and tags[MLFLOW_USER]

    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    outside = MLflowTracker(store_uri, "source")
    outside.ensure_run()
    tags = outside.client.get_run(outside.run_id).data.tags
    assert MLFLOW_GIT_COMMIT not in tags and tags[MLFLOW_SOURCE_TYPE] == "LOCAL"


def test_the_manifest_is_logged_as_one_dataset_per_split(
    store_uri: str, synthetic_root: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    cfg = _config(synthetic_root, tmp_path)
    tracker = MLflowTracker(store_uri, "datasets", manifest=manifest)
    tracker.on_run_start(_run_info(cfg, tmp_path / "run"))
    tracker.finish()
    inputs = tracker.client.get_run(tracker.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == MLFLOW_DATASET_CONTEXT): i.dataset for i in inputs}
    assert set(by_context) == {"train", "val", "test"}
    for split, dataset in by_context.items():
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        assert dataset.name == f"ffpp-c23-{split}" and dataset.digest == manifest_digest(rows)
        assert f'"num_rows": {len(rows)}' in dataset.profile and dataset.source_type == "local"
    assert len({d.digest for d in by_context.values()}) == 3


def test_runs_on_different_data_show_different_digests(
    store_uri: str, synthetic_root: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    cfg = _config(synthetic_root, tmp_path)
    fewer = manifest.drop(index=manifest.index[manifest["split"] == "train"][0])  # one training video less
    digests = []
    for name, data in (("all", manifest), ("fewer", fewer), ("all again", manifest)):
        tracker = MLflowTracker(store_uri, "data", run_name=name, manifest=data)
        tracker.on_run_start(_run_info(cfg, tmp_path / name))
        tracker.finish()
        inputs = tracker.client.get_run(tracker.run_id).inputs.dataset_inputs
        digests.append({i.dataset.name: i.dataset.digest for i in inputs})
    assert digests[0]["ffpp-c23-train"] != digests[1]["ffpp-c23-train"]
    assert digests[0]["ffpp-c23-val"] == digests[1]["ffpp-c23-val"]  # the splits that did not change keep theirs
    assert digests[0] == digests[2]


def test_the_digest_sees_rows_past_the_ten_thousand_mlflow_hashes() -> None:
    rows = pd.DataFrame({"path": [f"v{i}.mp4" for i in range(10_001)], "label": 0, "split": "train"})
    changed = rows.copy()
    changed.loc[10_000, "label"] = 1
    assert manifest_digest(rows) != manifest_digest(changed)
    assert manifest_digest(rows) == manifest_digest(rows.copy())


def test_a_sweep_records_only_the_splits_it_reads(manifest: pd.DataFrame, synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _config(synthetic_root, tmp_path)
    inputs = dataset_inputs(manifest, cfg.data, ("train", "val"))
    assert [i.dataset.name for i in inputs] == ["ffpp-c23-train", "ffpp-c23-val"]


def test_system_metrics_are_logged_and_their_thread_ends_with_the_run(
    store_uri: str, synthetic_root: Path, tmp_path: Path
) -> None:
    cfg = _config(synthetic_root, tmp_path)
    tracker = MLflowTracker(store_uri, "system-on")
    tracker.on_run_start(_run_info(cfg, tmp_path / "run"))
    monitors = [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    # A daemon: a process that never closes its run still exits.
    assert monitors and all(t.daemon for t in monitors)
    tracker.finish()  # well before the first full point: the samples so far are logged when the run closes
    assert not any(t.is_alive() for t in monitors)
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_system_metrics_stay_off_when_mlflow_is_told_so(
    store_uri: str, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    tracker = MLflowTracker(store_uri, "system-off")
    tracker.on_run_start(_run_info(_config(synthetic_root, tmp_path), tmp_path / "run"))
    tracker.finish()
    assert not any(k.startswith("system/") for k in tracker.client.get_run(tracker.run_id).data.metrics)


def test_the_description_says_what_ran_and_how_it_ended(store_uri: str, synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _config(synthetic_root, tmp_path)
    tracker = MLflowTracker(store_uri, "notes", description="Trial 3 of `demo` (sampled): optim.lr=0.001")
    tracker.on_run_start(_run_info(cfg, tmp_path / "run"))
    tracker.on_run_end(TrainResult("early_stopped", "no gain for 2 validations", 3, 2, 0.8125, None, None,
                                   tmp_path / "run"))
    run = tracker.client.get_run(tracker.run_id)
    note = run.data.tags[MLFLOW_RUN_NOTE]
    assert note.startswith("Trial 3 of `demo` (sampled): optim.lr=0.001\n\n")
    assert cfg.model.backbone in note and "bce loss" in note
    assert "**early_stopped** after 3 epochs" in note and "best val video_auc 0.8125 at epoch 2" in note
    # Numbers the runs table can sort: metrics. best_epoch stays a tag too, for `harness compare` to read back.
    assert run.data.metrics["best_epoch"] == 2 and run.data.metrics["best_value"] == 0.8125
    assert "best_value" not in run.data.tags and run.data.tags["best_epoch"] == "2"
    assert "config.yaml" in {a.path for a in tracker.client.list_artifacts(tracker.run_id)}


@pytest.mark.slow
def test_a_tracked_fit_has_its_data_machine_and_description(
    store_uri: str, synthetic_root: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    cfg = _config(synthetic_root, tmp_path, "train.epochs=2")
    tracker = MLflowTracker(store_uri, "fit", manifest=manifest)
    result = fit(cfg, tracker, run_dir=tmp_path / "run", manifest=manifest, progress=False, force_precision="fp32")
    client = MlflowClient(store_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert len(run.inputs.dataset_inputs) == 3 and "system/cpu_utilization_percentage" in run.data.metrics
    assert f"**{result.status}** after 2 epochs" in run.data.tags[MLFLOW_RUN_NOTE]
    # Epoch metrics went through MLflow's asynchronous queue: every one is stored once the run is closed.
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
    assert run.data.metrics["best_epoch"] == result.best_epoch
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == TRAINING_EXPERIMENT


def test_a_sweep_parent_says_what_it_searches_and_a_trial_how_optuna_ended_it(
    store_uri: str, synthetic_root: Path, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    import optuna

    from harness.sweep.space import load_space
    from harness.sweep.study import _parent_run, _tell
    from harness.sweep.trial import TrialOutcome
    from helpers import write_space

    space = load_space(write_space(tmp_path, synthetic_root, {"type": "none"}))
    study = optuna.create_study(study_name="record", direction="maximize")
    parent = MlflowClient(store_uri).get_run(_parent_run(study, store_uri, space, "memory", space.first_config(), manifest))
    assert parent.data.tags[MLFLOW_RUN_NOTE].startswith("Optuna study `record` over `space.yaml`: maximize val video_auc")
    assert parent.data.tags[MLFLOW_SOURCE_TYPE] == "LOCAL"
    assert sorted(i.dataset.name for i in parent.inputs.dataset_inputs) == ["ffpp-c23-train", "ffpp-c23-val"]

    tracker = MLflowTracker(store_uri, "trial-notes", description="Trial 0 of `record` (sampled): optim.lr=0.001")
    tracker.ensure_run()
    _tell(study, study.ask(), TrialOutcome("PRUNED", None, "pruned at epoch 2", 2), tracker)
    note = tracker.client.get_run(tracker.run_id).data.tags[MLFLOW_RUN_NOTE]
    assert note == "Trial 0 of `record` (sampled): optim.lr=0.001\n\nOptuna: **PRUNED**, pruned at epoch 2"


def test_study_plots_open_offline(store_uri: str, tmp_path: Path) -> None:
    import optuna

    from harness.sweep.report import log_study_artifacts, summarise

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for lr, values in ((1e-3, [0.6, 0.7]), (3e-4, [0.5, 0.8]), (1e-4, [0.55, 0.6])):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
        for step, value in enumerate(values, 1):
            trial.report(value, step)
        study.tell(trial, max(values))
    client = MlflowClient(store_uri)
    run_id = client.create_run(experiment_id(client, "plots")).info.run_id
    log_study_artifacts(client, run_id, study, summarise(study, "video_auc", 2, run_id, 1.0, 3))
    pages = client.download_artifacts(run_id, "study", str(tmp_path))
    written = sorted(Path(pages).glob("*.html"))
    assert {p.name for p in written} >= {"optimization_history.html", "intermediate_values.html"}
    for page in written:
        html = page.read_text()
        assert not re.search(r"<script[^>]*src=\"[^\"]*cdn\.plot\.ly", html), page.name
        assert "plotly.js v" in html and "Plotly.newPlot" in html, page.name  # the library itself, then its call


def test_compare_reuses_a_run_only_from_the_same_commit_of_the_working_folder(
    store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.compare.identity import code_identity
    from harness.compare.runner import find_finished_run

    _git_checkout(tmp_path / "first", "first")
    _git_checkout(tmp_path / "second", "second")
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    tracker = MLflowTracker(store_uri, "compare",
                            tags={"harness.config_hash": "abc", "harness.seed": "0", **code_identity()})
    tracker.ensure_run()
    tracker.log_metrics({"test_video_auc": 0.9}, step=1)
    tracker.finish()
    found = find_finished_run(tracker.client, tracker.experiment_id, "abc", 0)
    assert found is not None and found.info.run_id == tracker.run_id

    monkeypatch.chdir(tmp_path / "second")  # another commit: the configs or the code beside them may differ
    assert find_finished_run(tracker.client, tracker.experiment_id, "abc", 0) is None

    monkeypatch.chdir(tmp_path / "plain")  # outside a checkout reuse asks for no commit, as before
    found = find_finished_run(tracker.client, tracker.experiment_id, "abc", 0)
    assert found is not None and found.info.run_id == tracker.run_id

"""`harness sweep` and `harness export-best` for real: Optuna journal storage, SQLite MLflow store, tiny videos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient

from harness.cli import main
from harness.config import load_config
from harness.sweep.storage import open_storage
from harness.train.trainer import fit
from helpers import ROOT, write_space

pytestmark = pytest.mark.slow

AGGRESSIVE = {"type": "percentile", "percentile": 10.0, "n_startup_trials": 1, "n_warmup_steps": 0}


def test_sweep_prunes_logs_children_resumes_and_exports(synthetic_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, AGGRESSIVE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--space", str(space), "--storage", str(tmp_path / "optuna.journal"), "--study-name", "t",
              "--tracking-uri", uri, "--quiet"]
    assert main(["sweep", *common, "--trials", "6"]) == 0
    assert "top trials" in capsys.readouterr().out

    study = optuna.load_study(study_name="t", storage=open_storage(str(tmp_path / "optuna.journal")))
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 6 and "RUNNING" not in states
    assert "PRUNED" in states
    assert trials[0].user_attrs["enqueued_from"] == "baseline.yaml"
    assert trials[1].user_attrs["enqueued_from"] == "recommended.yaml"
    assert trials[0].params == {"optim.lr": 1e-3, "model.fold_div": 8, "model.aggregate": "mean",
                                "loss.type": "bce", "balance": "pos_weight"}
    assert trials[1].params["loss.type"] == "focal_bce" and trials[1].params["model.fold_div"] == 4
    pruned = next(t for t in trials if t.state.name == "PRUNED")
    assert pruned.user_attrs["epochs_run"] < 4 and pruned.intermediate_values

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harness").experiment_id
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 6
    assert {c.data.tags["optuna.trial"] for c in children} == {str(t.number) for t in trials}
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        assert "curves.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert child.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        assert "trial.optim.lr" in child.data.params and "model.fold_div" in child.data.params
    by_trial = {c.data.tags["optuna.trial"]: c for c in children}
    assert by_trial[str(pruned.number)].data.tags["optuna.state"] == "PRUNED"
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "trials.csv" in parent_artifacts and "study" in parent_artifacts

    # Rerunning the same command resumes: only the two missing trials run, under the same parent.
    assert main(["sweep", *common, "--trials", "8"]) == 0
    study = optuna.load_study(study_name="t", storage=open_storage(str(tmp_path / "optuna.journal")))
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials()) == 8
    assert len(client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")) == 8
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))

    out = tmp_path / "best.yaml"
    assert main(["export-best", "--study-name", "t", "--storage", str(tmp_path / "optuna.journal"), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# best trial of study 't'")
    best_cfg = load_config([out], ["train.epochs=1"])
    best = study.best_trial
    assert best_cfg.optim.lr == pytest.approx(best.params["optim.lr"])
    assert best_cfg.model.aggregate == best.params["model.aggregate"]
    result = fit(best_cfg, run_dir=tmp_path / "best-run", progress=False)
    assert result.status == "completed" and "test_video_auc" in result.test_metrics


def test_sweep_trials_score_validation_only_and_export_best_evaluate_scores_the_best_on_test_once(
    synthetic_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, {"type": "none"})
    body = yaml.safe_load(space.read_text())
    body["fixed"]["train.epochs"] = 2
    space.write_text(yaml.safe_dump(body, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = str(tmp_path / "optuna.journal")
    assert main(["sweep", "--space", str(space), "--trials", "2", "--storage", journal, "--study-name", "v",
                 "--tracking-uri", uri, "--quiet"]) == 0

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harness").experiment_id
    study = optuna.load_study(study_name="v", storage=open_storage(journal))
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{study.user_attrs['mlflow_parent_run_id']}'")
    assert len(children) == 2
    for child in children:
        assert "val_video_auc" in child.data.metrics
        assert not [k for k in child.data.metrics if k.startswith("test_")], "a sweep trial must not score test"

    best = study.best_trial
    run_id = best.user_attrs["mlflow_run_id"]
    capsys.readouterr()
    export = ["export-best", "--study-name", "v", "--storage", journal, "--tracking-uri", uri, "--evaluate"]
    assert main([*export, "--out", str(tmp_path / "best.yaml")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "best.yaml").is_file()
    assert f"trial {best.number}'s best checkpoint" in out and "video_auc" in out and run_id in out

    scored = client.get_run(run_id)
    assert 0.0 <= scored.data.metrics["test_video_auc"] <= 1.0
    assert {"test_clip_auc", "test_video_ap", "test_video_eer", "test_loss"} <= set(scored.data.metrics)
    assert scored.data.tags["harness.test_scored_by"] == "export-best"
    best_pt = Path(scored.data.tags["run_dir"]) / "best.pt"
    # Scored at the video threshold the trial's best validation chose, as `fit` scores a plain run.
    assert scored.data.metrics["test_threshold"] == pytest.approx(torch.load(best_pt, weights_only=True)["threshold"])
    other = next(c for c in children if c.info.run_id != run_id)
    assert not [k for k in client.get_run(other.info.run_id).data.metrics if k.startswith("test_")]

    # Without the checkpoint: one line naming it, exit 2, and nothing written.
    best_pt.rename(best_pt.with_name("moved.pt"))
    assert main([*export, "--out", str(tmp_path / "again.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best checkpoint must exist" in err[0] and str(best_pt) in err[0]
    assert not (tmp_path / "again.yaml").exists()


def test_export_best_refuses_a_study_without_completed_trials(tmp_path: Path, capsys) -> None:
    journal = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="empty", storage=open_storage(journal))
    study.ask()
    code = main(["export-best", "--study-name", "empty", "--storage", journal, "--out", str(tmp_path / "b.yaml")])
    assert code == 2
    assert "has no completed trial" in capsys.readouterr().err
    assert main(["export-best", "--study-name", "nope", "--storage", journal]) == 2
    assert "studies: empty" in capsys.readouterr().err
    assert not (tmp_path / "b.yaml").exists()


def test_bad_space_is_refused_before_any_trial(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: [{ROOT / 'baseline.yaml'}]\nparams:\n  optim.lr: {{type: float, low: 0.1, high: 0.01}}\n")
    code = main(["sweep", "--space", str(bad), "--trials", "2", "--storage", str(tmp_path / "j.journal"), "--quiet"])
    assert code == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not (tmp_path / "j.journal").exists()


@pytest.mark.faults
def test_two_workers_on_one_journal_finish_exactly_n_trials(synthetic_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=2)
    journal = str(tmp_path / "optuna.journal")
    cmd = [sys.executable, "-m", "harness", "sweep", "--space", str(space), "--trials", "5", "--storage", journal,
           "--study-name", "shared", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [w.communicate(timeout=240)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=open_storage(journal))
    trials = study.get_trials()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 5
    assert [t.number for t in trials] == list(range(len(trials)))
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) == 2, "both workers must have run trials"


def test_a_failing_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(
    synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import harness.sweep.trial as trial_module

    real_fit = trial_module.fit
    calls = {"n": 0}

    def flaky_fit(cfg, callbacks, run_dir, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second trial dies the way a CUDA OOM surfaces in torch
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(cfg, callbacks, run_dir=run_dir, **kwargs)

    monkeypatch.setattr(trial_module, "fit", flaky_fit)
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, synthetic_root, {"type": "none"}, epochs=2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = str(tmp_path / "optuna.journal")
    assert main(["sweep", "--space", str(space), "--trials", "2", "--storage", journal, "--study-name", "f",
                 "--tracking-uri", uri, "--quiet"]) == 0
    study = optuna.load_study(study_name="f", storage=open_storage(journal))
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    failed = study.get_trials()[1]
    assert failed.user_attrs["fail_reason"].startswith("oom: CUDA out of memory")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("harness").experiment_id], "tags.`optuna.trial` = '1'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["optuna.reason"].startswith("oom:")
    assert failed.user_attrs["mlflow_run_id"] == runs[0].info.run_id

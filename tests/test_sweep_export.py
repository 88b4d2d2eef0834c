"""`harness export-best --evaluate` scores a checkpoint on the test split exactly as `fit` would have."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_config
from harness.sweep.export import score_on_test
from harness.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


def test_score_on_test_gives_the_test_metrics_fit_reports_for_the_same_best_checkpoint(
    synthetic_root: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        [ROOT / "baseline.yaml", ROOT / "configs" / "demo.yaml"],
        ["data.source=ffpp", f"data.root={synthetic_root}", "data.input_size=32", "train.epochs=2",
         "train.batch_size=8", f"train.output_dir={tmp_path / 'runs'}"],
    )
    result = fit(cfg, run_dir=tmp_path / "run", progress=False)
    assert result.status == "completed" and "test_video_auc" in result.test_metrics

    metrics, videos, epoch, precision = score_on_test(result.best_model_path)
    assert metrics == pytest.approx(result.test_metrics, abs=1e-6)
    assert epoch == result.best_epoch and precision == "fp32"
    assert len(videos) == len(result.test_videos)


def test_export_best_header_names_the_study_trial_mlflow_run_and_model_uri(tmp_path: Path) -> None:
    import optuna

    from harness.sweep.export import export_best
    from harness.sweep.storage import open_storage

    journal = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="h", storage=open_storage(journal), direction="maximize")
    cfg = load_config([ROOT / "baseline.yaml", ROOT / "configs" / "demo.yaml"])
    for value, run_id in ((0.6, "run-a"), (0.8, "run-b")):
        trial = study.ask()
        trial.set_user_attr("config", cfg.model_dump(mode="json"))
        trial.set_user_attr("mlflow_run_id", run_id)
        study.tell(trial, value)

    def header(out: Path) -> list[str]:
        return [line for line in out.read_text().splitlines() if line.startswith("#")][:5]

    export_best("h", tmp_path / "plain.yaml", journal)
    lines = header(tmp_path / "plain.yaml")
    assert lines[0].startswith("# best trial of study 'h'") and lines[1].startswith("# trial 1: value = 0.8000")
    assert lines[3] == "# MLflow run: run-b; model: not logged (export-best --log-model or --register NAME logs it)"

    export_best("h", tmp_path / "logged.yaml", journal, model_uri="models:/detector/3")
    assert header(tmp_path / "logged.yaml")[3] == "# MLflow run: run-b; model: models:/detector/3"
    assert load_config([tmp_path / "logged.yaml"]) == cfg

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

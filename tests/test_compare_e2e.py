"""`harness compare` for real on tiny videos: nested MLflow runs, report files, reuse, ablation, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

import harness.train.trainer as trainer
from harness.cli import main
from helpers import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def videos(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session tree: indexing writes manifest caches beside the videos, and other
    tests count those files in the shared tree."""
    return Path(shutil.copytree(synthetic_root, tmp_path_factory.mktemp("compare") / "ffpp"))


def tiny_overlay(tmp: Path, root: Path) -> Path:
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        # The test tree's 24-frame videos hold two distinct 2 s windows; more would repeat them.
        "data": {"source": "ffpp", "root": str(root), "input_size": 32, "num_workers": 0, "clips_per_video_eval": 2},
        # The recommended warm-up (3 epochs) must stay below train.epochs, so the tiny runs drop it.
        "optim": {"scheduler": {"warmup_epochs": 0}},
        "train": {"epochs": 2, "batch_size": 8, "output_dir": str(tmp / "runs")},
    }))
    return path


def compare_args(tmp: Path, root: Path, configs: list[Path], out: str, *extra: str) -> list[str]:
    return ["compare", "--configs", *map(str, configs), "--config", str(tiny_overlay(tmp, root)), "--seeds", "2",
            "--out", str(tmp / out), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *extra]


def children(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_compare_runs_nested_children_writes_the_report_and_reuses_finished_runs(
    videos: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    configs = [ROOT / "baseline.yaml", ROOT / "recommended.yaml"]
    assert main(compare_args(tmp_path, videos, configs, "rep")) == 0
    printed = capsys.readouterr().out
    assert "4 run(s) trained, 0 reused" in printed and "undecided" in printed

    out = tmp_path / "rep"
    table = pd.read_csv(out / "compare.csv")
    assert table["config"].tolist() == ["baseline", "recommended"]
    assert table["n_seeds"].tolist() == [2, 2]
    assert {"video_auc_mean", "video_auc_std", "clip_auc_mean", "video_ap_mean", "video_eer_mean", "best_epoch_mean",
            "wall_seconds_mean", "ci_low", "ci_high", "p_paired_t", "verdict", "delong_p", "volatility_verdict",
            "spread_verdict", "family", "seeds", "verdict_ci_low", "seeds_needed", "p_tost"} <= set(table.columns)
    assert table["family"].iloc[1] == "primary" and table["seeds"].iloc[1] == "0 1"
    rec = table.iloc[1]
    assert rec["n_pairs"] == 2 and rec["ci_low"] <= rec["video_auc_diff"] <= rec["ci_high"]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(zip(runs["config"], runs["seed"])) == [("baseline", 0), ("baseline", 1), ("recommended", 0),
                                                         ("recommended", 1)]
    assert runs["test_video_auc"].between(0, 1).all() and not runs["reused"].any()
    # train.amp asks for bf16 on a CPU; every seed of one comparison computes in what its first run chose.
    amp = runs.loc[runs["config"] == "recommended", "precision"]
    assert amp.nunique() == 1 and amp.iloc[0] in ("fp32", "bf16")
    assert set(runs.loc[runs["config"] == "baseline", "precision"]) == {"fp32"}
    report = (out / "report.md").read_text()
    assert "| baseline | " in report and "| (baseline) |" in report
    assert "## Against `baseline`" in report and "Synthetic data" not in report  # source ffpp on the fixture
    for png in ("auc_by_config.png", "val_curves.png"):
        assert mpimg.imread(out / png).shape[0] > 100
    assert (out / "configs" / "recommended.yaml").exists()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harness").experiment_id
    parents = client.search_runs([exp], "tags.`harness.role` = 'compare'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    kids = children(client, parent_id)
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)
    assert {(k.data.tags["harness.arm"], k.data.tags["harness.seed"]) for k in kids} == {
        ("baseline", "0"), ("baseline", "1"), ("recommended", "0"), ("recommended", "1")}
    assert len({k.data.tags["harness.config_hash"] for k in kids}) == 2
    assert {k.data.params["seed"] for k in kids} == {"0", "1"}
    assert {k.data.params["train.deterministic"] for k in kids} == {"True"}  # compare's default
    assert all(k.data.tags["harness.torch"] and k.data.tags["harness.code"].startswith("0.") for k in kids)
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"report.md", "compare.csv", "runs.csv",
                                                                  "auc_by_config.png", "val_curves.png", "configs"}

    # The same command again trains nothing: every (config hash, seed) is found finished in MLflow.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(trainer, "fit", no_training)
    assert main(compare_args(tmp_path, videos, configs, "rep")) == 0
    assert "0 run(s) trained, 4 reused" in capsys.readouterr().out
    assert len(children(client, parent_id)) == 4  # same parent, no new children
    again = pd.read_csv(out / "compare.csv")
    assert again["video_auc_mean"].tolist() == pytest.approx(table["video_auc_mean"].tolist())
    assert again["delong_p"].iloc[1] == pytest.approx(table["delong_p"].iloc[1])

    # Identical configs under another name reuse the same runs and cannot differ.
    assert main(compare_args(tmp_path, videos, [configs[0], configs[0]], "same")) == 0
    same = pd.read_csv(tmp_path / "same" / "compare.csv")
    assert same["config"].tolist() == ["baseline", "baseline-2"]
    assert same["video_auc_diff"].iloc[1] == 0.0 and same["p_paired_t"].iloc[1] == 1.0
    assert same["verdict"].iloc[1] == "equivalent"

    # A run made by other code (another commit or torch) is not reused: that one run trains again.
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    old = next(k for k in kids if k.data.tags["harness.arm"] == "recommended" and k.data.tags["harness.seed"] == "1")
    client.set_tag(old.info.run_id, "harness.code", "0.0.0+another-commit")
    assert main(compare_args(tmp_path, videos, configs, "rep")) == 0
    assert "1 run(s) trained, 3 reused" in capsys.readouterr().out


def test_compare_ablate_runs_each_recommendation_alone_and_trains_identical_arms_once(
    videos: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    pair = tmp_path / "tsm.yaml"  # the baseline plus two TSM recommendations
    pair.write_text(f"base: {ROOT / 'baseline.yaml'}\nmodel: {{fold_div: 4, aggregate: attention}}\n")
    args = compare_args(tmp_path, videos, [ROOT / "baseline.yaml", pair], "abl", "--ablate",
                        "--set", "train.epochs=1")
    assert main(args) == 0
    # baseline + fold_div is tsm - attention (and the other way round): 4 distinct configs x 2 seeds.
    assert "8 run(s) trained, 4 reused" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "abl" / "compare.csv")
    assert table["config"].tolist() == ["baseline", "tsm", "baseline + fold_div", "baseline + attention",
                                        "tsm - fold_div", "tsm - attention"]
    by = table.set_index("config")["video_auc_mean"]
    assert by["baseline + fold_div"] == by["tsm - attention"] and by["baseline + attention"] == by["tsm - fold_div"]
    report = (tmp_path / "abl" / "report.md").read_text()
    assert "| fold_div | `model.fold_div` | - | - |" in report
    assert "No `balanced sampler` row" in report
    cfg = yaml.safe_load((tmp_path / "abl" / "configs" / "baseline+attention.yaml").read_text())
    assert cfg["model"]["aggregate"] == "attention" and cfg["model"]["fold_div"] == 8


def test_compare_refuses_bad_input_before_running_anything(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["compare", "--configs", str(ROOT / "baseline.yaml"), "--seeds", "1", "--out", str(tmp_path / "r"),
                 "--tracking-uri", uri])
    assert code == 2
    err = capsys.readouterr().err
    assert "--configs needs a baseline and at least one other config, but got 1 file(s)" in err
    assert "--seeds must be 'auto' or a whole number >= 2" in err and "but got 1" in err
    code = main(["compare", "--configs", str(ROOT / "baseline.yaml"), str(ROOT / "recommended.yaml"),
                 "--set", "optim.lrr=1", "--out", str(tmp_path / "r"), "--tracking-uri", uri])
    assert code == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "mlflow.db").exists()


def test_compare_seeds_auto_stops_each_contrast_at_its_verdict(videos: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "lr.yaml"
    other.write_text(f"base: {ROOT / 'baseline.yaml'}\noptim: {{lr: 0.0003}}\n")
    args = compare_args(tmp_path, videos, [ROOT / "baseline.yaml", ROOT / "baseline.yaml", other], "auto",
                        "--set", "train.epochs=1")
    args[args.index("--seeds") + 1] = "auto"
    assert main([*args, "--max-seeds", "4", "--margin", "0.02"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "auto" / "compare.csv").set_index("config")
    # The identical copy is decided at the first look (3 seeds) and gets no fourth seed.
    assert table.loc["baseline-2", "verdict"] == "equivalent" and table.loc["baseline-2", "decided_at"] == 3
    assert table.loc["baseline-2", "n_pairs"] == 3
    lr = table.loc["lr"]
    assert lr["family"] == "secondary" and lr["verdict"] in ("better", "worse", "equivalent", "undecided")
    if lr["verdict"] == "undecided":  # then it ran to --max-seeds and says how many seeds it would need
        assert lr["n_pairs"] == 4 and "still undecided at --max-seeds 4" in printed and lr["seeds_needed"] > 4
    else:
        assert lr["decided_at"] <= lr["n_pairs"] <= 4
    runs = pd.read_csv(tmp_path / "auto" / "runs.csv")
    assert sorted(runs.loc[runs["config"] == "baseline", "seed"]) == list(range(int(table["n_pairs"].max())))
    report = (tmp_path / "auto" / "report.md").read_text()
    assert "group-sequential" in report and "equivalence margin ±0.02" in report

"""Run every config of a comparison on the same seeds, as child MLflow runs under one compare run.

Seed k means the same initial head, data order and augmentation draws for every config, because
`fit` seeds everything from `cfg.seed` and the loaders reseed from (seed, epoch). A finished run is
found again by its config hash and seed (tags `harness.config_hash`, `harness.seed`), so rerunning
the same command, or another comparison that shares a config, trains only what is missing.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness.compare.ablation import Arm
from harness.compare.identity import code_identity, config_hash
from harness.config.loading import load_config
from harness.errors import ConfigError

__all__ = ["RunRecord", "load_arms", "run_arms", "find_finished_run", "parent_run", "slug", "TEST_VIDEOS_ARTIFACT"]

TEST_VIDEOS_ARTIFACT = "compare/test_videos.csv"
ROLE_PARENT, ROLE_CHILD = "compare", "compare-run"


@dataclass
class RunRecord:
    """What the analysis needs from one (config, seed) run, fresh or found again in MLflow."""

    arm: str
    seed: int
    config_hash: str
    run_id: str | None
    reused: bool
    status: str  # completed | early_stopped | nan | failed
    reason: str = ""
    test_metrics: dict[str, float] = field(default_factory=dict)
    val_curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val_video_auc)
    best_epoch: int | None = None
    wall_seconds: float = math.nan
    peak_mem_mb: float = math.nan  # CUDA max allocated; NaN on CPU
    test_videos: pd.DataFrame | None = None  # index video_idx; prob, label, method
    precision: str = ""  # what autocast computed in: fp32, bf16 or fp16 (tag harness.amp)

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "early_stopped") and "test_video_auc" in self.test_metrics


def slug(name: str) -> str:
    """A file- and run-folder-safe form of an arm name."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", name.replace(" + ", "+").replace(" - ", "-")).strip("_")


def load_arms(config_paths: Sequence[Path], overlays: Sequence[Path] = (), overrides: Sequence[str] = ()) -> list[Arm]:
    """One arm per config file (named by its file stem), each layered with the same overlays and overrides.

    Every file is checked before anything runs, and every problem is reported together.
    """
    arms, problems = [], []
    for path in config_paths:
        try:
            cfg = load_config([path, *overlays], overrides)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        name, n = Path(path).stem, 2
        while any(a.name == name for a in arms):
            name, n = f"{Path(path).stem}-{n}", n + 1
        arms.append(Arm(name, cfg))
    if problems:
        raise ConfigError(problems[0], problems)
    return arms


def find_finished_run(client: Any, experiment_id: str, cfg_hash: str, seed: int) -> Any | None:
    """The newest FINISHED compare run with this config hash, seed and code identity that has test metrics, or None.

    A run of another harness commit or torch version is not reused: either may change the numbers. Nor is one
    made in another commit of the working folder's checkout (tag mlflow.source.git.commit), where the configs
    and any code beside them live; outside a checkout that tag is absent and not asked for.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    from harness.track.record import git_commit

    identity = dict(code_identity())
    if (commit := git_commit(Path.cwd())) is not None:
        identity[MLFLOW_GIT_COMMIT] = commit
    code = " and ".join(f"tags.`{k}` = '{v}'" for k, v in identity.items())
    runs = client.search_runs(
        [experiment_id],
        f"tags.`harness.config_hash` = '{cfg_hash}' and tags.`harness.seed` = '{seed}' and {code} "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    return next((r for r in runs if "test_video_auc" in r.data.metrics), None)


def _curve(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def record_from_mlflow(client: Any, run: Any, arm: str) -> RunRecord | None:
    """A finished run as a RunRecord; None when its per-video scores cannot be read back."""
    from harness.train.precision import label_name

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, TEST_VIDEOS_ARTIFACT, tmp)
        except Exception:  # a run without per-video scores cannot be paired video by video
            return None
        videos = pd.read_csv(local, index_col="video_idx")
    tags, metrics = run.data.tags, run.data.metrics
    peak = [v for _, v in _curve(client, run_id, "gpu_peak_mem_mb")]
    return RunRecord(
        arm=arm,
        seed=int(tags["harness.seed"]),
        config_hash=tags["harness.config_hash"],
        run_id=run_id,
        reused=True,
        status=tags.get("harness.status", "completed"),
        reason=tags.get("harness.reason", ""),
        test_metrics={k: v for k, v in metrics.items() if k.startswith("test_")},
        val_curve=_curve(client, run_id, "val_video_auc"),
        best_epoch=int(tags["best_epoch"]) if "best_epoch" in tags else None,
        wall_seconds=metrics.get("compare_wall_seconds", math.nan),
        peak_mem_mb=max(peak) if peak else math.nan,
        test_videos=videos,
        precision=label_name(tags.get("harness.amp", "")),
    )


def parent_run(client: Any, experiment_id: str, name: str, out: Path, settings: dict[str, Any]) -> str:
    """The compare run for this output folder: found again on a rerun, else created."""
    out_key = str(Path(out).resolve())
    runs = client.search_runs(
        [experiment_id], f"tags.`harness.role` = '{ROLE_PARENT}' and tags.`harness.compare_out` = '{out_key}'",
        order_by=["attributes.start_time DESC"],
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        from harness.track.record import source_tags

        tags = {**source_tags(), "harness.role": ROLE_PARENT, "harness.compare": name, "harness.compare_out": out_key}
        run_id = client.create_run(experiment_id, run_name=f"compare-{name}", tags=tags).info.run_id
    # Tags, not params: a rerun with other seeds or overrides may overwrite them, params may not change.
    for key, value in settings.items():
        client.set_tag(run_id, f"compare.{key}", json.dumps(value, default=str)[:5000])
    return run_id


def _train(arm: Arm, seed: int, cfg_hash: str, run_dir: Path, manifest: pd.DataFrame, tracker: Any,
           precision: str | None = None) -> RunRecord:
    """Fit one (config, seed) through the unchanged trainer; every ending becomes a RunRecord.

    `precision` forces the autocast precision (see `run_arms`); None lets the trainer choose.
    """
    from harness.train.precision import recorded_precision
    from harness.train.trainer import fit

    cfg = arm.config.model_copy(update={"seed": seed})
    started = time.perf_counter()
    try:
        result = fit(cfg, tracker, run_dir=run_dir, manifest=manifest, progress=False, force_precision=precision)
    except Exception as exc:  # one broken run must not end the comparison
        reason = tracker.record_failure(exc)
        return RunRecord(arm.name, seed, cfg_hash, tracker.run_id, False, "failed", reason)
    wall = time.perf_counter() - started
    peak = [h["gpu_peak_mem_mb"] for h in result.train_history if "gpu_peak_mem_mb" in h]
    record = RunRecord(
        arm=arm.name, seed=seed, config_hash=cfg_hash, run_id=tracker.run_id, reused=False, status=result.status,
        reason=result.reason, test_metrics=dict(result.test_metrics),
        val_curve=[(int(h["epoch"]), h["val_video_auc"]) for h in result.history if "val_video_auc" in h],
        best_epoch=result.best_epoch, wall_seconds=wall, peak_mem_mb=max(peak) if peak else math.nan,
        test_videos=result.test_videos, precision=recorded_precision(run_dir) or "",
    )
    tracker.log_metrics({"compare_wall_seconds": wall}, step=result.epochs_run)
    if result.test_videos is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(TEST_VIDEOS_ARTIFACT).name
            result.test_videos.to_csv(path, index_label="video_idx")
            tracker.log_artifact(path, str(Path(TEST_VIDEOS_ARTIFACT).parent))
    tracker.finish("FINISHED" if record.ok else "FAILED")
    # Reuse works per finished run, never from a mid-run state, so the resumable state is dead weight.
    (run_dir / "last.pt").unlink(missing_ok=True)
    return record


def run_arms(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    client: Any,
    experiment: str,
    experiment_id: str,
    parent_run_id: str,
    tracking_uri: str | None,
    run_root: Path,
    compare_name: str,
    say: Callable[[str], None] = print,
    precisions: dict[bool, str] | None = None,
) -> list[RunRecord]:
    """Every arm on every seed (seed-major, so early results are already paired); finished runs are reused.

    All child runs go to one experiment (the first config's `tracking.experiment`), beside their parent.
    `precisions` maps train.amp to the precision the first run with that setting computed in, and later
    runs are held to it: on a CPU with native bf16 the trainer times bf16 against fp32 at each start,
    and a choice that flipped with the machine's load between seeds would be a difference of its own.
    Pass the same dict to every call of one comparison; it is filled as runs finish.
    """
    precisions = {} if precisions is None else precisions
    from harness.data.index import build_manifest
    from harness.track.mlflow_run import MLflowTracker

    manifests: dict[str, pd.DataFrame] = {}
    done: dict[tuple[str, int], RunRecord] = {}  # (hash, seed): identical arms train once
    records: list[RunRecord] = []
    total, i = len(arms) * len(seeds), 0
    for seed in seeds:
        for arm in arms:
            i += 1
            cfg_hash = config_hash(arm.config)
            prefix = f"[{i}/{total}] {arm.name}, seed {seed}:"
            record = done.get((cfg_hash, seed))
            if record is None:
                found = find_finished_run(client, experiment_id, cfg_hash, seed)
                record = record_from_mlflow(client, found, arm.name) if found is not None else None
            else:
                record = _renamed(record, arm.name)
            if record is not None:
                say(f"{prefix} reused run {record.run_id} (test video AUC {record.test_metrics['test_video_auc']:.4f})")
            else:
                data_key = arm.config.data.model_dump_json()
                if data_key not in manifests:
                    manifests[data_key] = build_manifest(arm.config.data, progress=False)
                tracker = MLflowTracker(
                    tracking_uri, experiment, run_name=f"{arm.name} seed {seed}", parent_run_id=parent_run_id,
                    tags={"harness.role": ROLE_CHILD, "harness.config_hash": cfg_hash, "harness.seed": str(seed),
                          "harness.arm": arm.name, "harness.compare": compare_name, **code_identity()},
                    extra_params={"compare.arm": arm.name, "compare.kind": arm.kind,
                                  "compare.recommendation": arm.recommendation or ""},
                    log_checkpoint=False, terminate=False, manifest=manifests[data_key],
                )
                run_dir = run_root / f"{slug(arm.name)}-{cfg_hash}-seed{seed}"
                try:
                    record = _train(arm, seed, cfg_hash, run_dir, manifests[data_key], tracker,
                                    precisions.get(arm.config.train.amp))
                except KeyboardInterrupt as exc:
                    if tracker.run_id:
                        tracker.record_failure(exc)
                    raise
                auc = record.test_metrics.get("test_video_auc")
                say(f"{prefix} {record.status} in {record.wall_seconds:.0f} s"
                    + (f", test video AUC {auc:.4f}" if auc is not None else f" ({record.reason})"))
            if record.ok:
                done[(cfg_hash, seed)] = record
                if record.precision:
                    precisions.setdefault(arm.config.train.amp, record.precision)
            records.append(record)
    return records


def _renamed(record: RunRecord, arm: str) -> RunRecord:
    """The same run, listed under a second arm whose config is identical (e.g. baseline + A = recommended - B)."""
    return replace(record, arm=arm, reused=True)

"""From run records to the comparison's tables: one row per run, per config, and per config vs the baseline.

Every test pairs seed k of a config with seed k of the baseline and uses only seeds where both
finished. Stability is compared like accuracy: the epoch-to-epoch volatility of validation AUC
as paired differences, and the spread across seeds with the Pitman-Morgan test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from harness.compare.runner import RunRecord
from harness.compare.stats import (
    BETTER,
    UNCLEAR,
    WORSE,
    delong_test,
    holm,
    paired_comparison,
    pitman_morgan_test,
    verdict,
    volatility,
)

__all__ = ["TEST_METRICS", "runs_frame", "summary_frame", "comparison_frame", "STEADIER", "LESS_STEADY"]

TEST_METRICS = ("test_video_auc", "test_clip_auc", "test_video_ap", "test_video_eer")
STEADIER, LESS_STEADY = "steadier", "less steady"


def runs_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per (config, seed): test metrics, best epoch, wall time, peak memory, validation volatility."""
    rows = []
    for r in records:
        rows.append(
            {
                "config": r.arm,
                "seed": r.seed,
                "status": r.status,
                "reused": r.reused,
                **{m: r.test_metrics.get(m, math.nan) for m in TEST_METRICS},
                "best_epoch": r.best_epoch if r.best_epoch is not None else math.nan,
                "wall_seconds": r.wall_seconds,
                "peak_mem_mb": r.peak_mem_mb,
                "val_auc_volatility": volatility([v for _, v in r.val_curve]),
                "n_validations": len(r.val_curve),
                "config_hash": r.config_hash,
                "run_id": r.run_id,
                "reason": r.reason if not r.ok else "",
            }
        )
    return pd.DataFrame(rows)


def summary_frame(runs: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per config over its finished seeds: mean, std, min, max of each test metric, and the run costs."""
    rows = []
    for name in order:
        ok = runs[(runs["config"] == name) & runs["status"].isin(["completed", "early_stopped"])]
        row: dict[str, float | str | int] = {"config": name, "n_seeds": len(ok),
                                              "n_failed": int((runs["config"] == name).sum() - len(ok))}
        for m in TEST_METRICS:
            values = ok[m].dropna()
            short = m.removeprefix("test_")
            row[f"{short}_mean"] = values.mean() if len(values) else math.nan
            row[f"{short}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{short}_min"] = values.min() if len(values) else math.nan
            row[f"{short}_max"] = values.max() if len(values) else math.nan
        row["best_epoch_mean"] = ok["best_epoch"].mean()
        row["wall_seconds_mean"] = ok["wall_seconds"].mean()
        row["peak_mem_mb_max"] = ok["peak_mem_mb"].max()
        row["val_auc_volatility_mean"] = ok["val_auc_volatility"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _paired(runs: pd.DataFrame, name: str, baseline: str, column: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Seeds where both configs have a finite value, and the two value arrays in seed order."""
    ok = runs[runs["status"].isin(["completed", "early_stopped"])]
    a = ok[ok["config"] == name].set_index("seed")[column].dropna()
    b = ok[ok["config"] == baseline].set_index("seed")[column].dropna()
    seeds = sorted(set(a.index) & set(b.index))
    return seeds, a.loc[seeds].to_numpy(float), b.loc[seeds].to_numpy(float)


def _delong_per_seed(
    records: Sequence[RunRecord], name: str, baseline: str, seeds: Sequence[int]
) -> list[tuple[int, float, float]]:
    """(seed, AUC difference, DeLong p) on each seed's pooled test videos (all methods together)."""
    by_key = {(r.arm, r.seed): r for r in records if r.ok and r.test_videos is not None}
    out = []
    for seed in seeds:
        a, b = by_key.get((name, seed)), by_key.get((baseline, seed))
        if a is None or b is None:
            continue
        both = a.test_videos.join(b.test_videos, lsuffix="_a", rsuffix="_b", how="inner")
        if len(both) != len(a.test_videos) or not (both["label_a"] == both["label_b"]).all():
            continue  # different test sets cannot be paired video by video
        try:
            res = delong_test(both["label_a"].to_numpy(), both["prob_a"].to_numpy(), both["prob_b"].to_numpy())
        except ValueError:
            continue
        out.append((seed, res.diff, res.p))
    return out


def _stability_word(v: str) -> str:
    return {BETTER: STEADIER, WORSE: LESS_STEADY}.get(v, v)


def comparison_frame(
    runs: pd.DataFrame,
    records: Sequence[RunRecord],
    baseline: str,
    order: Sequence[str],
    level: float = 0.95,
    n_boot: int = 10_000,
) -> pd.DataFrame:
    """Each config against the baseline: AUC difference with interval, tests and verdict; stability likewise."""
    alpha = 1.0 - level
    rows = []
    for name in order:
        if name == baseline:
            continue
        seeds, x, y = _paired(runs, name, baseline, "test_video_auc")
        auc = paired_comparison(x, y, level, n_boot)
        vseeds, vx, vy = _paired(runs, name, baseline, "val_auc_volatility")
        vol = paired_comparison(vx, vy, level, n_boot)
        ratio, p_spread = pitman_morgan_test(x, y)
        delong = _delong_per_seed(records, name, baseline, seeds)
        spread = UNCLEAR if math.isnan(p_spread) or p_spread >= alpha else (STEADIER if ratio < 1 else LESS_STEADY)
        rows.append(
            {
                "config": name,
                "n_pairs": auc.n,
                "video_auc_diff": auc.mean_diff,
                "ci_low": auc.ci_low,
                "ci_high": auc.ci_high,
                "p_paired_t": auc.p_t,
                "p_wilcoxon": auc.p_wilcoxon,
                "verdict": verdict(auc, level),
                "delong_seed": delong[0][0] if delong else math.nan,
                "delong_auc_diff": delong[0][1] if delong else math.nan,
                "delong_p": delong[0][2] if delong else math.nan,
                "delong_rejects": f"{sum(p < alpha for _, _, p in delong)}/{len(delong)}",
                "volatility_diff": vol.mean_diff,
                "volatility_ci_low": vol.ci_low,
                "volatility_ci_high": vol.ci_high,
                "volatility_p_paired_t": vol.p_t,
                "volatility_verdict": _stability_word(verdict(vol, level, higher_is_better=False)),
                "spread_ratio": ratio,
                "spread_p_pitman_morgan": p_spread,
                "spread_verdict": spread,
            }
        )
    frame = pd.DataFrame(rows)
    if len(frame):
        # Many rows against one baseline: Holm says which p-values survive all of them being asked at once.
        frame.insert(frame.columns.get_loc("p_wilcoxon"), "p_paired_t_holm", holm(frame["p_paired_t"].tolist()))
    return frame


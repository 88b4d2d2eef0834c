"""From run records to the comparison's tables: one row per run, per config, and per config vs the baseline.

Every test pairs seed k of a config with seed k of the baseline and uses only seeds where both
finished. The verdict on test video AUC comes from `harness.compare.sequential` (better, worse,
equivalent within the margin, undecided) under one family rule: the primary contrast (the second
config against the baseline) is tested at the full level; every other row (further configs,
ablations) is secondary, Holm-adjusted with a fixed seed count and Bonferroni-split with
`--seeds auto`. Stability is compared like accuracy: the epoch-to-epoch volatility of validation
AUC (on the epochs both runs validated) as paired differences, and the spread across seeds with
the Pitman-Morgan test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.compare.runner import RunRecord
from harness.compare.sequential import BETTER as SEQ_BETTER
from harness.compare.sequential import EQUIVALENT, UNDECIDED, Decision, SequentialDesign, decide, seeds_needed
from harness.compare.sequential import WORSE as SEQ_WORSE
from harness.compare.stats import (
    BETTER,
    UNCLEAR,
    WORSE,
    delong_test,
    holm,
    paired_comparison,
    paired_t_p,
    pitman_morgan_test,
    verdict,
    volatility,
)

__all__ = [
    "TEST_METRICS", "runs_frame", "summary_frame", "comparison_frame", "contrast_decisions", "paired_diffs",
    "STEADIER", "LESS_STEADY", "PRIMARY", "SECONDARY",
]

TEST_METRICS = ("test_video_auc", "test_clip_auc", "test_video_ap", "test_video_eer")
STEADIER, LESS_STEADY = "steadier", "less steady"
PRIMARY, SECONDARY = "primary", "secondary"


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
                "precision": r.precision,
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


def paired_diffs(runs: pd.DataFrame, name: str, baseline: str, column: str = "test_video_auc") -> tuple[list[int], np.ndarray]:
    """Seeds where both finished, and `name - baseline` on each, in seed order."""
    seeds, x, y = _paired(runs, name, baseline, column)
    return seeds, x - y


def _family(order: Sequence[str], baseline: str) -> dict[str, str]:
    others = [n for n in order if n != baseline]
    return {n: PRIMARY if i == 0 else SECONDARY for i, n in enumerate(others)}


def _first_decision(diffs: np.ndarray, design: SequentialDesign, alpha: float) -> Decision:
    """Replays the looks in seed order and keeps the first decision: a contrast decided once stays decided."""
    last = None
    for n in design.looks:
        if n > len(diffs):
            break
        last = decide(diffs[:n], design, alpha)
        if last.verdict != UNDECIDED:
            return last
    if last is None:  # fewer seeds than the first look
        n = len(diffs)
        mean = float(diffs.mean()) if n else math.nan
        sd = float(diffs.std(ddof=1)) if n > 1 else math.nan
        return Decision(UNDECIDED, n, mean, sd, math.nan, math.nan, math.nan, math.nan, math.nan)
    return last


def _tost_p(diffs: np.ndarray, margin: float) -> float:
    """Two one-sided t-tests against ±margin; the larger p decides equivalence."""
    n = len(diffs)
    sd = diffs.std(ddof=1) if n > 1 else math.nan
    if n < 2 or math.isnan(sd):
        return math.nan
    if sd == 0:
        return 0.0 if abs(diffs.mean()) < margin else 1.0
    se = sd / math.sqrt(n)
    p_low = sps.t.sf((diffs.mean() + margin) / se, n - 1)
    p_high = sps.t.cdf((diffs.mean() - margin) / se, n - 1)
    return float(max(p_low, p_high))


def contrast_decisions(
    runs: pd.DataFrame, baseline: str, order: Sequence[str], design: SequentialDesign | None,
    alpha: float = 0.05, margin: float = 0.01,
) -> dict[str, dict]:
    """Each config's verdict on test video AUC against the baseline, under the family rule.

    design None: one look at however many seeds each pair has; the primary contrast at `alpha`, the
    secondary ones Holm-adjusted (superiority and equivalence p-values each over the secondary rows).
    A sequential design: every look replayed; the secondary rows each at alpha / their number.
    """
    family = _family(order, baseline)
    n_secondary = sum(f == SECONDARY for f in family.values())
    out: dict[str, dict] = {}
    for name, role in family.items():
        seeds, d = paired_diffs(runs, name, baseline)
        # Bonferroni's share: the sequential rows are tested at it, and Holm's first step is the same.
        share = alpha if role == PRIMARY else alpha / max(1, n_secondary)
        if design is not None:
            plan, tested_at = design, share
            rule = "group-sequential" + ("" if role == PRIMARY else f", Bonferroni alpha/{n_secondary}")
        else:  # one look at the pairs there are; the secondary rows' Holm adjustment follows below
            plan, tested_at = SequentialDesign.fixed(max(len(d), 2), alpha, margin), alpha
            rule = "paired t + TOST" + ("" if role == PRIMARY else f", Holm over {n_secondary}")
        out[name] = {"decision": _first_decision(d, plan, tested_at), "plan": plan, "share": share, "family": role,
                     "alpha": tested_at, "rule": rule, "seeds": seeds, "p_t": paired_t_p(d), "p_tost": _tost_p(d, margin)}
    if design is None:
        secondary = [n for n, f in family.items() if f == SECONDARY]
        p_sup = holm([out[n]["p_t"] for n in secondary])
        p_eq = holm([out[n]["p_tost"] for n in secondary])
        for name, ps, pe in zip(secondary, p_sup, p_eq):
            dec = out[name]["decision"]
            verdict = UNDECIDED
            if not math.isnan(ps) and ps < alpha and dec.mean_diff != 0:
                verdict = SEQ_BETTER if dec.mean_diff > 0 else SEQ_WORSE
            elif not math.isnan(pe) and pe < alpha:
                verdict = EQUIVALENT
            out[name]["decision"] = replace(dec, verdict=verdict)
            out[name]["p_t_holm"], out[name]["p_tost_holm"] = ps, pe
    for info in out.values():
        info["decision"] = replace(info["decision"], seeds_needed=seeds_needed(info["decision"], info["plan"], info["share"]))
    return out


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


def _paired_volatility(
    records: Sequence[RunRecord], name: str, baseline: str
) -> tuple[np.ndarray, np.ndarray]:
    """Volatility of each run of a pair over the epochs both validated, seed by seed.

    A config validated every 2 epochs and one validated every epoch then both step over 2 epochs,
    and a run that stopped early is compared only over the epochs it ran.
    """
    by_key = {(r.arm, r.seed): r for r in records if r.ok}
    xs, ys = [], []
    for (arm, seed), a in sorted(by_key.items(), key=lambda kv: kv[0][1]):
        b = by_key.get((baseline, seed))
        if arm != name or b is None:
            continue
        common = {e for e, _ in a.val_curve} & {e for e, _ in b.val_curve}
        va = volatility([v for e, v in a.val_curve if e in common])
        vb = volatility([v for e, v in b.val_curve if e in common])
        if not (math.isnan(va) or math.isnan(vb)):
            xs.append(va)
            ys.append(vb)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def comparison_frame(
    runs: pd.DataFrame,
    records: Sequence[RunRecord],
    baseline: str,
    order: Sequence[str],
    level: float = 0.95,
    n_boot: int = 10_000,
    design: SequentialDesign | None = None,
    margin: float = 0.01,
) -> pd.DataFrame:
    """Each config against the baseline: verdict on test video AUC with its interval and tests; stability likewise.

    `design` None judges the seeds there are in one look; a sequential design replays its looks.
    """
    alpha = 1.0 - level
    decisions = contrast_decisions(runs, baseline, order, design, alpha, margin)
    rows = []
    for name in order:
        if name == baseline:
            continue
        seeds, x, y = _paired(runs, name, baseline, "test_video_auc")
        auc = paired_comparison(x, y, level, n_boot)
        info = decisions[name]
        dec: Decision = info["decision"]
        vx, vy = _paired_volatility(records, name, baseline)
        vol = paired_comparison(vx, vy, level, n_boot)
        ratio, p_spread = pitman_morgan_test(x, y)
        delong = _delong_per_seed(records, name, baseline, seeds)
        spread = UNCLEAR if math.isnan(p_spread) or p_spread >= alpha else (STEADIER if ratio < 1 else LESS_STEADY)
        rows.append(
            {
                "config": name,
                "family": info["family"],
                "rule": info["rule"],
                "alpha": info["alpha"],
                "n_pairs": auc.n,
                "seeds": " ".join(str(k) for k in seeds),
                "decided_at": dec.n if dec.verdict != UNDECIDED else math.nan,
                "video_auc_diff": auc.mean_diff,
                "diff_at_decision": dec.mean_diff,
                "verdict_ci_low": dec.ci_low,
                "verdict_ci_high": dec.ci_high,
                "t": dec.t,
                "t_bound": dec.bound,
                "seeds_needed": dec.seeds_needed,
                "ci_low": auc.ci_low,
                "ci_high": auc.ci_high,
                "p_paired_t": auc.p_t,
                "p_paired_t_holm": info.get("p_t_holm", math.nan),
                "p_tost": info["p_tost"],
                "p_tost_holm": info.get("p_tost_holm", math.nan),
                "p_wilcoxon": auc.p_wilcoxon,
                "verdict": dec.verdict,
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
    return pd.DataFrame(rows)

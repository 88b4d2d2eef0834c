"""Seeds until the answer is known: group-sequential bounds, equivalence, the family rule, what a rerun reuses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.compare.analysis import comparison_frame, contrast_decisions, runs_frame
from harness.compare.runner import RunRecord
from harness.compare.sequential import (
    BETTER,
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    SequentialDesign,
    decide,
    seeds_needed,
    spending_boundaries,
)

ALPHA = 0.05


def _first_verdict(diffs: np.ndarray, design: SequentialDesign) -> tuple[str, int]:
    for n in design.looks:
        d = decide(diffs[:n], design)
        if d.verdict != UNDECIDED:
            return d.verdict, n
    return UNDECIDED, design.looks[-1]


def _mc_limit(rate: float, n: int) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / n)


def test_one_look_is_the_plain_t_quantile() -> None:
    assert spending_boundaries((5,), ALPHA, True) == pytest.approx((sps.t.ppf(0.975, 4),))
    assert spending_boundaries((5,), ALPHA, False) == pytest.approx((sps.t.ppf(0.95, 4),))


def test_bounds_start_high_and_fall_towards_the_last_look() -> None:
    bounds = spending_boundaries(SequentialDesign.auto(10).looks, ALPHA, True)
    assert len(bounds) == 8 and all(a > b for a, b in zip(bounds, bounds[1:]))
    # Every look spends some alpha, so each bound is above the fixed-sample quantile at its seed count.
    assert all(c > sps.t.ppf(0.975, n - 1) for c, n in zip(bounds, range(3, 11)))


def test_null_sequences_keep_false_better_or_worse_verdicts_within_the_level() -> None:
    # 2,000 sequences of seed differences with no true effect, looked at after every seed from 3 to 10.
    rng = np.random.default_rng(7)  # not the seed the bounds were simulated with
    design = SequentialDesign.auto(10, ALPHA, margin=0.01)
    sims = 2000
    false = 0
    naive = 0
    for _ in range(sims):
        d = rng.normal(0.0, rng.uniform(0.005, 0.05), size=10)
        verdict, _ = _first_verdict(d, design)
        false += verdict in (BETTER, WORSE)
        # The same looks at the fixed-sample level: what testing after every seed would do.
        naive += any(sps.ttest_1samp(d[:n], 0.0).pvalue < ALPHA for n in design.looks)
    assert false / sims <= _mc_limit(ALPHA, sims)
    assert naive / sims > 0.1  # the bound is needed: repeated looks at 0.05 more than double the error


def test_false_equivalence_at_the_margin_stays_within_the_level() -> None:
    rng = np.random.default_rng(11)
    design = SequentialDesign.auto(10, ALPHA, margin=0.01)
    sims = 2000
    false = sum(_first_verdict(rng.normal(0.01, 0.01, size=10), design)[0] == EQUIVALENT for _ in range(sims))
    assert false / sims <= _mc_limit(ALPHA, sims)


def test_a_clear_difference_is_decided_early_in_its_direction() -> None:
    design = SequentialDesign.auto(10)
    up = np.array([0.05, 0.06, 0.055, 0.052, 0.058, 0.049, 0.061, 0.05, 0.053, 0.057])
    assert _first_verdict(up, design) == (BETTER, 3)
    assert _first_verdict(-up, design) == (WORSE, 3)


def test_tiny_differences_with_small_spread_are_equivalent_not_undecided() -> None:
    d = np.array([0.001, -0.002, 0.0015, 0.0, -0.001, 0.002])
    verdict, n = _first_verdict(d, SequentialDesign.auto(10, margin=0.01))
    assert verdict == EQUIVALENT and n <= 6
    # The same differences against a margin below their noise cannot be called equivalent.
    assert _first_verdict(d, SequentialDesign.auto(6, margin=0.0005))[0] == UNDECIDED


def test_identical_runs_are_equivalent_and_a_constant_nonzero_difference_is_undecided() -> None:
    design = SequentialDesign.fixed(3)
    assert decide([0.0, 0.0, 0.0], design).verdict == EQUIVALENT
    assert decide([0.02, 0.02, 0.02], design).verdict == UNDECIDED


def test_seeds_needed_is_where_the_observed_mean_and_spread_would_cross_the_bound() -> None:
    design = SequentialDesign.fixed(3)
    d = np.array([0.03, -0.01, 0.01])  # mean 0.01, sd 0.02
    dec = decide(d, design)
    assert dec.verdict == UNDECIDED
    n = seeds_needed(dec, design)
    # Fixed design: the smallest n with 0.01 / (0.02 / sqrt(n)) > t(0.975, n - 1).
    expected = next(k for k in range(4, 100) if 0.01 / (0.02 / math.sqrt(k)) > sps.t.ppf(0.975, k - 1))
    assert n == expected == 18
    assert math.isinf(seeds_needed(decide([0.02, 0.02, 0.02], design), design))


def _runs(diffs: dict[str, list[float]], base: list[float]) -> pd.DataFrame:
    rows = [{"config": "baseline", "seed": k, "status": "completed", "test_video_auc": v} for k, v in enumerate(base)]
    for name, d in diffs.items():
        rows += [{"config": name, "seed": k, "status": "completed", "test_video_auc": b + x}
                 for k, (b, x) in enumerate(zip(base, d))]
    return pd.DataFrame(rows)


def test_primary_contrast_is_unadjusted_and_secondary_rows_are_holm_adjusted() -> None:
    base = [0.70, 0.72, 0.68, 0.71, 0.69]
    d = [0.012, 0.02, 0.005, 0.018, 0.01]  # paired t p ~ 0.006
    names = ["recommended", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    runs = _runs({n: d for n in names[:2]} | {n: [0.0] * 5 for n in names[2:]}, base)
    out = contrast_decisions(runs, "baseline", ["baseline", *names], None, ALPHA, margin=0.001)
    assert 0.001 < out["recommended"]["p_t"] < ALPHA / 5
    assert out["recommended"]["decision"].verdict == BETTER and out["recommended"]["family"] == "primary"
    # The same differences on a secondary row: Holm over 10 rows (the 9 identical rows have p = 1) keeps
    # p * 10 > alpha, so the row is undecided, and its p is reported adjusted.
    assert out["a"]["family"] == "secondary" and out["a"]["p_t_holm"] == pytest.approx(10 * out["a"]["p_t"])
    assert out["a"]["decision"].verdict == UNDECIDED
    assert out["b"]["decision"].verdict == EQUIVALENT


def test_sequential_secondary_rows_get_a_bonferroni_share() -> None:
    base = [0.70, 0.72, 0.68, 0.71, 0.69]
    runs = _runs({"recommended": [0.01] * 5, "x": [0.01] * 5, "y": [0.0] * 5}, base)
    out = contrast_decisions(runs, "baseline", ["baseline", "recommended", "x", "y"], SequentialDesign.auto(10), ALPHA)
    assert out["recommended"]["alpha"] == ALPHA and out["x"]["alpha"] == ALPHA / 2


def _record(arm: str, seed: int, curve: list[tuple[int, float]], auc: float) -> RunRecord:
    return RunRecord(arm=arm, seed=seed, config_hash=arm, run_id=None, reused=False, status="completed",
                     test_metrics={"test_video_auc": auc}, val_curve=curve)


def test_volatility_is_compared_on_the_epochs_both_runs_validated() -> None:
    # One underlying curve, validated every epoch by the baseline and every 2 epochs by the other config:
    # on the shared epochs both move the same, so the volatility difference must be 0.
    rng = np.random.default_rng(0)
    records = []
    for seed in range(3):
        curve = [(e, float(v)) for e, v in zip(range(1, 9), 0.6 + np.cumsum(rng.normal(0, 0.03, 8)))]
        records.append(_record("baseline", seed, curve, 0.7 + seed / 100))
        records.append(_record("every2", seed, [(e, v) for e, v in curve if e % 2 == 0], 0.7 + seed / 100))
    frame = comparison_frame(runs_frame(records), records, "baseline", ["baseline", "every2"])
    assert frame.loc[0, "volatility_diff"] == pytest.approx(0.0, abs=1e-12)

"""The comparison's statistics on known cases: no difference, a planted one, interval coverage, DeLong."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harness.compare.stats import (
    PairedResult,
    bootstrap_mean_ci,
    delong_test,
    holm,
    paired_comparison,
    pitman_morgan_test,
    verdict,
    volatility,
)


def test_identical_configs_are_not_distinguishable() -> None:
    aucs = [0.71, 0.64, 0.77]
    result = paired_comparison(aucs, aucs)
    assert result.mean_diff == 0.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.p_t == 1.0 and result.p_wilcoxon == 1.0
    assert verdict(result) == "not distinguishable"


def test_a_planted_difference_is_detected_in_both_directions() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.6, 0.8, size=5)
    better = baseline + 0.05 + rng.normal(0, 0.005, size=5)
    up = paired_comparison(better, baseline)
    assert up.mean_diff == pytest.approx(0.05, abs=0.01)
    assert up.ci_low > 0 and up.p_t < 0.001
    assert verdict(up) == "better"
    assert verdict(paired_comparison(baseline, better)) == "worse"
    # Lower-is-better metrics (volatility, EER) flip the words.
    assert verdict(up, higher_is_better=False) == "worse"


def test_noise_as_large_as_the_difference_is_not_distinguishable() -> None:
    result = paired_comparison([0.75, 0.66, 0.72], [0.70, 0.69, 0.70])  # diffs +0.05, -0.03, +0.02
    assert result.mean_diff == pytest.approx(0.0133, abs=1e-3)
    assert result.ci_low < 0 < result.ci_high
    assert verdict(result) == "not distinguishable"


def test_a_constant_difference_over_few_seeds_gets_no_verdict() -> None:
    # Two seeds that both moved by one AUC step (0.025) are a coincidence of discrete AUCs, not a proof.
    result = paired_comparison([0.575, 0.625], [0.55, 0.60])
    assert result.mean_diff == pytest.approx(0.025) and math.isnan(result.p_t)
    assert verdict(result) == "not distinguishable"


def test_verdict_is_never_better_when_the_interval_crosses_zero() -> None:
    crossing = PairedResult(n=3, mean_diff=0.02, ci_low=-0.001, ci_high=0.04, p_t=0.001, p_wilcoxon=0.25)
    assert verdict(crossing) == "not distinguishable"
    untested = PairedResult(n=3, mean_diff=0.02, ci_low=0.01, ci_high=0.04, p_t=0.2, p_wilcoxon=0.25)
    assert verdict(untested) == "not distinguishable"


def test_bootstrap_interval_covers_the_true_difference_at_about_its_nominal_rate() -> None:
    rng = np.random.default_rng(1)
    true_diff, n_sims = 0.02, 400
    covered = 0
    for sim in range(n_sims):
        diffs = rng.normal(true_diff, 0.03, size=10)
        lo, hi = bootstrap_mean_ci(diffs, level=0.95, n_boot=2000, seed=sim)
        covered += lo <= true_diff <= hi
    # Binomial sd at 95 % over 400 draws is about 1.1 points; the expansion keeps small n near nominal.
    assert 0.91 <= covered / n_sims <= 0.985


def test_bootstrap_interval_cannot_reach_outside_the_observed_differences() -> None:
    # Why three seeds can never give a 95 % bootstrap interval: it lies within [min, max] of the diffs.
    diffs = [0.01, 0.03, 0.02]
    lo, hi = bootstrap_mean_ci(diffs, level=0.95)
    assert 0.01 <= lo < hi <= 0.03
    assert lo == pytest.approx(0.01) and hi == pytest.approx(0.03)


def _two_scorers(seed: int = 3, n_real: int = 30, n_fake: int = 60):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n_real), np.ones(n_fake)].astype(int)
    a = labels * 0.9 + rng.normal(size=labels.size)
    b = 0.5 * a + labels * 0.2 + rng.normal(size=labels.size)  # correlated with a, weaker
    return labels, a, b


def test_delong_aucs_equal_sklearn_and_its_standard_error_matches_a_bootstrap_over_videos() -> None:
    labels, a, b = _two_scorers()
    result = delong_test(labels, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(labels, a))
    assert result.auc_b == pytest.approx(roc_auc_score(labels, b))
    rng = np.random.default_rng(0)
    real, fake = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    diffs = []
    for _ in range(2000):  # stratified, so every resample holds both classes in the original numbers
        i = np.r_[rng.choice(real, real.size), rng.choice(fake, fake.size)]
        diffs.append(roc_auc_score(labels[i], a[i]) - roc_auc_score(labels[i], b[i]))
    assert result.se == pytest.approx(np.std(diffs), rel=0.1)


def test_delong_handles_ties_and_identical_scorers() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    tied = np.array([0.2, 0.5, 0.5, 0.5, 0.7, 0.9, 0.9])
    same = delong_test(labels, tied, tied)
    assert same.diff == 0.0 and same.p == 1.0
    assert same.auc_a == pytest.approx(roc_auc_score(labels, tied))


def test_delong_detects_a_planted_difference_and_not_a_null_one() -> None:
    labels, _, _ = _two_scorers(n_real=60, n_fake=120)
    rng = np.random.default_rng(9)
    strong = labels * 2.0 + rng.normal(size=labels.size)  # AUC about 0.92
    noise = rng.normal(size=labels.size)  # AUC about 0.5
    assert delong_test(labels, strong, noise).p < 0.001
    # Under the null (two equally good, independent scorers) it rejects at about its level.
    rng = np.random.default_rng(11)
    rejections = 0
    for _ in range(300):
        x = labels * 0.8 + rng.normal(size=labels.size)
        y = labels * 0.8 + rng.normal(size=labels.size)
        rejections += delong_test(labels, x, y).p < 0.05
    assert 0.02 <= rejections / 300 <= 0.09


def test_delong_refuses_a_class_with_fewer_than_two_videos() -> None:
    with pytest.raises(ValueError, match="at least 2 videos of each class, but got 3 fake and 1 real"):
        delong_test([0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])


def test_pitman_morgan_tells_a_wider_spread_from_an_equal_one() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(0.7, 0.01, size=12)
    ratio, p = pitman_morgan_test(0.7 + 4 * (y - 0.7) + rng.normal(0, 0.002, size=12), y)
    assert ratio > 3 and p < 0.001
    ratio, p = pitman_morgan_test(y + 0.05, y)
    assert ratio == pytest.approx(1.0) and math.isnan(p)  # a pure shift: x - y is constant, nothing to test
    assert math.isnan(pitman_morgan_test([0.7, 0.8], [0.6, 0.65])[1])  # needs 3 seeds


def test_volatility_is_the_mean_absolute_step_between_validations() -> None:
    assert volatility([0.5, 0.7, 0.6, 0.6]) == pytest.approx((0.2 + 0.1 + 0.0) / 3)
    assert volatility([0.5, float("nan"), 0.7]) == pytest.approx(0.2)
    assert math.isnan(volatility([0.5]))


def test_holm_adjusts_in_step_down_order_and_keeps_nans() -> None:
    adjusted = holm([0.01, 0.04, float("nan"), 0.03])
    assert adjusted[0] == pytest.approx(0.03)
    assert adjusted[1] == pytest.approx(0.06) and adjusted[3] == pytest.approx(0.06)
    assert math.isnan(adjusted[2])

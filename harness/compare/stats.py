"""The statistics of a paired-seed comparison: intervals, tests and a verdict that respects the noise.

Two sources of noise are kept apart. Seeds (initial head, data order, augmentation draws) are the
unit of replication: paired differences over seeds get a bootstrap interval and a paired t-test.
The test videos are a second, smaller source: DeLong's test on one seed's videos says whether two
models' AUCs differ on *these* videos, and knows nothing about how much another seed would move them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "PairedResult",
    "DeLongResult",
    "bootstrap_mean_ci",
    "paired_comparison",
    "paired_t_p",
    "delong_test",
    "pitman_morgan_test",
    "volatility",
    "holm",
    "verdict",
]

BETTER, WORSE, UNCLEAR = "better", "worse", "not distinguishable"


def bootstrap_mean_ci(
    diffs: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Expanded percentile bootstrap interval of the mean of paired differences (resampling seeds).

    The plain percentile interval is too narrow for few seeds (it covers 74 % at n=3 and 91 % at
    n=15 where 95 % is asked), because a bootstrap pretends the sample's spread is the truth and
    uses normal rather than t quantiles. Hesterberg's expansion (2015, "What teachers should know
    about the bootstrap") widens the quantiles to alpha' with z(alpha'/2) = sqrt(n/(n-1)) t(alpha/2, n-1).
    No bootstrap interval of a mean can reach outside [min, max] of the data, so with n seeds it
    covers at most 1 - 2**(1-n) (75 % with 3 seeds, 94 % with 5): see `verdict`, which also asks
    the paired t-test for that reason.
    """
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)  # (n_boot,)
    t = sps.t.ppf(1 - (1 - level) / 2, n - 1)
    tail = float(sps.norm.sf(math.sqrt(n / (n - 1)) * t))  # alpha'/2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedResult:
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_t: float  # paired t-test: the one the verdict uses
    p_wilcoxon: float  # Wilcoxon signed-rank, reported beside it


def paired_comparison(
    values: Sequence[float], reference: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> PairedResult:
    """`values - reference`, paired by position (seed k against seed k).

    The paired t-test decides, not Wilcoxon: Wilcoxon's exact two-sided p-value cannot fall below
    2 / 2**n (0.25 with 3 seeds, 0.0625 with 5), so at the seed counts one can afford it could never
    reject; the t-test assumes roughly normal differences, which mean AUC differences of seeds are
    close to. Identical pairs give p = 1 (not NaN), so "no difference at all" reads as such.
    """
    x = np.asarray(values, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, but got {len(x)} and {len(y)}")
    d = x - y
    n = len(d)
    if n < 2:
        return PairedResult(n, float(d.mean()) if n else math.nan, math.nan, math.nan, math.nan, math.nan)
    lo, hi = bootstrap_mean_ci(d, level, n_boot, seed)
    p_t = paired_t_p(d)
    nonzero = d[d != 0]
    p_w = 1.0 if len(nonzero) == 0 else float(sps.wilcoxon(d, zero_method="wilcox").pvalue)
    return PairedResult(n, float(d.mean()), lo, hi, p_t, p_w)


def paired_t_p(diffs: Sequence[float] | np.ndarray) -> float:
    """Two-sided p of the paired t-test on per-seed differences (NaN below 2 seeds).

    Zero variance leaves t undefined. All-zero differences are "no difference" (p = 1); a constant
    nonzero one is, with AUC moving in steps of 1/(n_real n_fake), more likely a coincidence of few
    seeds than proof, so it gets no p-value and hence no verdict.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if len(d) < 2:
        return math.nan
    if np.allclose(d, d[0]):
        return 1.0 if d[0] == 0 else math.nan
    return float(sps.ttest_1samp(d, 0.0).pvalue)


def verdict(result: PairedResult, level: float = 0.95, higher_is_better: bool = True) -> str:
    """better / worse only when the bootstrap interval excludes zero *and* the paired t-test rejects."""
    alpha = 1.0 - level
    if result.n < 2 or math.isnan(result.ci_low) or math.isnan(result.p_t) or result.p_t >= alpha:
        return UNCLEAR
    if result.ci_low > 0:
        return BETTER if higher_is_better else WORSE
    if result.ci_high < 0:
        return WORSE if higher_is_better else BETTER
    return UNCLEAR


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    se: float
    z: float
    p: float


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank, along the last axis."""
    return np.apply_along_axis(sps.rankdata, -1, x)


def delong_test(labels: Sequence[int], scores_a: Sequence[float], scores_b: Sequence[float]) -> DeLongResult:
    """DeLong's test for two correlated ROC AUCs on the same videos, by Sun & Xu's fast midrank form (2014).

    AUC_r = (sum of positive midranks among all - m(m+1)/2) / (m n); the structural components
    V10 (per positive) and V01 (per negative) give the covariance S = S10/m + S01/n.
    """
    y = np.asarray(labels).astype(int)
    scores = np.vstack([np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)])  # (2, N)
    pos, neg = scores[:, y == 1], scores[:, y == 0]  # (2, m), (2, n)
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 videos of each class, but got {m} fake and {n} real")
    tx, ty, tz = _midranks(pos), _midranks(neg), _midranks(np.hstack([pos, neg]))  # (2, m), (2, n), (2, m+n)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)  # (2,)
    v10 = (tz[:, :m] - tx) / n  # (2, m): share of negatives each positive beats
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (2, n): share of positives that beat each negative
    cov = np.cov(v10) / m + np.cov(v01) / n  # (2, 2)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(auc[0] - auc[1])
    if var <= 1e-15:
        # Identical rankings: no difference and no variance; any nonzero difference would be exact.
        return DeLongResult(float(auc[0]), float(auc[1]), diff, 0.0, 0.0 if diff == 0 else math.inf, 1.0 if diff == 0 else 0.0)
    se = math.sqrt(var)
    z = diff / se
    return DeLongResult(float(auc[0]), float(auc[1]), diff, se, z, float(2 * sps.norm.sf(abs(z))))


def pitman_morgan_test(values: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Do two paired samples spread alike? Returns (std ratio values/reference, two-sided p).

    Pitman-Morgan: var(x) = var(y) exactly when x+y and x-y are uncorrelated, so the test is a
    t-test of that correlation with n-2 degrees of freedom (needs 3 seeds at least).
    """
    x = np.asarray(values, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    sx, sy = x.std(ddof=1) if len(x) > 1 else math.nan, y.std(ddof=1) if len(y) > 1 else math.nan
    ratio = float(sx / sy) if sy > 0 else (1.0 if sx == 0 else math.inf)
    n = len(x)
    s, d = x + y, x - y
    if n < 3 or s.std() == 0 or d.std() == 0:
        return ratio, math.nan
    r = float(np.corrcoef(s, d)[0, 1])
    r = max(min(r, 1 - 1e-12), -1 + 1e-12)
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return ratio, float(2 * sps.t.sf(abs(t), n - 2))


def volatility(curve: Sequence[float]) -> float:
    """Mean absolute change of a validation metric between consecutive validations (NaNs dropped)."""
    c = np.asarray([v for v in curve if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(c) < 2:
        return math.nan
    return float(np.abs(np.diff(c)).mean())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (NaNs stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx])]
    k = len(order)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (k - i) * p[j]))
        out[j] = running
    return out.tolist()

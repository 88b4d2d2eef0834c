"""Deciding a paired contrast while seeds accumulate, without letting repeated looks inflate errors.

A contrast is the per-seed difference d_k = AUC(config, seed k) - AUC(baseline, seed k). After each
round of seeds it is decided as one of:

- better / worse: the paired t statistic mean(d) / (sd(d) / sqrt(n)) crosses the two-sided boundary;
- equivalent within ±margin: two one-sided tests (TOST) both cross their one-sided boundary, i.e.
  (mean + margin) / se and (mean - margin) / se lie beyond it on the right sides;
- undecided: neither; another seed is run, until `max_seeds`.

Testing at a fixed level after every seed would reject a true null far more often than that level
(about 2.5x at ten looks). The boundaries are therefore group-sequential: an error budget alpha is
spent over the looks by the Lan-DeMets Pocock-type function alpha * ln(1 + (e - 1) * n / N), and
each look's boundary is the one that spends exactly its share. Under normal seed differences with
mean 0 the t statistics' joint law does not depend on the unknown spread, so the boundaries are
found once by simulating that law (`spending_boundaries`); a test replays the whole procedure on
null sequences to check the rate. With one look the boundary is the plain t quantile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "BETTER",
    "WORSE",
    "EQUIVALENT",
    "UNDECIDED",
    "FIRST_LOOK",
    "SequentialDesign",
    "Decision",
    "spending_boundaries",
    "decide",
    "seeds_needed",
]

BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
FIRST_LOOK = 3  # two seeds leave one degree of freedom: a look there would spend alpha for almost no power
_N_SIM = 200_000
_SIM_SEED = 20261127


def _pocock_spending(alpha: float, fraction: np.ndarray) -> np.ndarray:
    return alpha * np.log1p((math.e - 1.0) * fraction)


@functools.lru_cache(maxsize=64)
def spending_boundaries(looks: tuple[int, ...], alpha: float, two_sided: bool) -> tuple[float, ...]:
    """Critical values c_j of the t statistic at each look (seed counts `looks`), spending `alpha`.

    two_sided: reject when |t_j| > c_j (alpha over both sides); else when t_j > c_j. One look is the
    exact t quantile. Several are found by simulating `_N_SIM` null paths of normal differences; each
    boundary is the quantile, among paths not yet stopped, that stops the spending increment's share.
    """
    if not looks or any(b <= a for a, b in zip(looks, looks[1:])) or looks[0] < 2:
        raise ValueError(f"looks must be increasing seed counts >= 2, but got {looks}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), but got {alpha}")
    tail = alpha / 2 if two_sided else alpha
    if len(looks) == 1:
        return (float(sps.t.ppf(1.0 - tail, looks[0] - 1)),)
    rng = np.random.default_rng(_SIM_SEED)
    diffs = rng.standard_normal((_N_SIM, looks[-1]))  # (paths, seeds)
    n = np.arange(1, looks[-1] + 1)
    mean = np.cumsum(diffs, axis=1) / n  # (paths, seeds)
    # Running sample variance from running sums; fine in float64 at these sizes.
    var = (np.cumsum(diffs**2, axis=1) - n * mean**2) / np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # n = 1 has no spread; never a look
        t_all = mean / np.sqrt(var / n)  # (paths, seeds)
    spent = _pocock_spending(alpha, np.asarray(looks, dtype=float) / looks[-1])
    alive = np.ones(_N_SIM, dtype=bool)
    bounds = []
    for j, k in enumerate(looks):
        stat = np.abs(t_all[:, k - 1]) if two_sided else t_all[:, k - 1]
        target = spent[j] - (spent[j - 1] if j else 0.0)  # share of all paths to stop here
        n_stop = int(round(target * _N_SIM))
        live = np.sort(stat[alive])[::-1]
        c = float(live[n_stop]) if 0 < n_stop < len(live) else float(live[0]) + 1.0
        bounds.append(c)
        alive &= ~(stat > c)
    return tuple(bounds)


@dataclass(frozen=True)
class SequentialDesign:
    """When to look and at what level: the seed counts of the looks, the family's alpha, the margin."""

    looks: tuple[int, ...]
    alpha: float = 0.05
    margin: float = 0.01

    @classmethod
    def fixed(cls, n: int, alpha: float = 0.05, margin: float = 0.01) -> SequentialDesign:
        """One look after n seeds: the plain paired t-test and TOST."""
        return cls((n,), alpha, margin)

    @classmethod
    def auto(cls, max_seeds: int, alpha: float = 0.05, margin: float = 0.01) -> SequentialDesign:
        """A look after every seed from FIRST_LOOK to max_seeds."""
        if max_seeds < FIRST_LOOK:
            raise ValueError(f"max_seeds must be >= {FIRST_LOOK}, but got {max_seeds}")
        return cls(tuple(range(FIRST_LOOK, max_seeds + 1)), alpha, margin)

    def bound(self, n: int, alpha: float, two_sided: bool) -> float:
        """The boundary at n seeds for a contrast tested at `alpha` (its share of the family)."""
        bounds = spending_boundaries(self.looks, alpha, two_sided)
        if n in self.looks:
            return bounds[self.looks.index(n)]
        if n > self.looks[-1]:  # only for estimates beyond the design
            if len(self.looks) == 1:  # a fixed design of n seeds is the plain t quantile
                return float(sps.t.ppf(1.0 - (alpha / 2 if two_sided else alpha), n - 1))
            return bounds[-1]
        raise ValueError(f"n must be one of the looks {self.looks}, but got {n}")


@dataclass(frozen=True)
class Decision:
    verdict: str
    n: int
    mean_diff: float
    sd: float
    t: float  # mean / (sd / sqrt(n)); NaN when sd is 0
    bound: float  # two-sided boundary the t statistic had to cross (better/worse)
    ci_low: float  # repeated confidence interval: mean ± bound * se, valid at every look
    ci_high: float
    seeds_needed: float = math.nan  # undecided only, filled by `seeds_needed` where wanted (inf: not within its limit)


def seeds_needed(decision: Decision, design: SequentialDesign, alpha: float | None = None, limit: int = 200) -> float:
    """For an undecided contrast: the fewest seeds at which its observed mean and spread would cross a bound.

    An estimate (the next seeds will move both), for planning; inf when no count up to `limit` would do.
    """
    alpha = design.alpha if alpha is None else alpha
    mean, sd = abs(decision.mean_diff), decision.sd
    if decision.verdict != UNDECIDED or math.isnan(sd) or sd == 0.0:
        return math.nan if decision.verdict != UNDECIDED else math.inf
    for n in range(max(decision.n + 1, design.looks[0]), limit + 1):
        se = sd / math.sqrt(n)
        if mean / se > design.bound(n, alpha, two_sided=True):
            return float(n)
        if mean < design.margin and (design.margin - mean) / se > design.bound(n, alpha, two_sided=False):
            return float(n)
    return math.inf


def decide(diffs: Sequence[float], design: SequentialDesign, alpha: float | None = None) -> Decision:
    """The contrast's verdict after n = len(diffs) seeds, at `alpha` (default the design's).

    n must be one of the design's looks; between looks call it with the last look's seeds.
    Differences that are all zero are equivalent (no seed moved the AUC at all); a constant nonzero
    difference has no spread to judge by and stays undecided.
    """
    alpha = design.alpha if alpha is None else alpha
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    c2 = design.bound(n, alpha, two_sided=True)
    if n < 2 or sd == 0.0:
        verdict = EQUIVALENT if n >= 2 and mean == 0.0 and design.margin > 0 else UNDECIDED
        return Decision(verdict, n, mean, sd, math.nan, c2, mean, mean)
    se = sd / math.sqrt(n)
    t = mean / se
    c1 = design.bound(n, alpha, two_sided=False)
    if t > c2:
        verdict = BETTER
    elif t < -c2:
        verdict = WORSE
    elif (mean + design.margin) / se > c1 and (mean - design.margin) / se < -c1:
        verdict = EQUIVALENT
    else:
        verdict = UNDECIDED
    return Decision(verdict, n, mean, sd, t, c2, mean - c2 * se, mean + c2 * se)

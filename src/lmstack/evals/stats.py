"""Statistics for eval scores: means with standard errors and bootstrap intervals, and paired tests.

Scores of one run are a list of per-sample values; samples that share a `group` (e.g. several
questions about one document) are not independent, so their standard error is clustered and their
bootstrap resamples whole groups. Comparisons of two runs are *paired*: the same samples are scored
under both, so a test on the per-sample differences is far more sensitive than comparing two means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(slots=True)
class Summary:
    mean: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    clusters: int


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for fewer than 2 values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    return float(x.std(ddof=1) / math.sqrt(len(x)))


def clustered_stderr(values: Sequence[float], groups: Sequence[object]) -> float:
    """Cluster-robust standard error of the mean (CR1: residuals summed within a group, G/(G-1) correction).

    With every sample in its own group this reduces to sqrt((n-1)/n) * `mean_stderr`'s population form,
    i.e. the usual standard error up to the small-sample factor.
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 2:
        return 0.0
    residual = x - x.mean()
    sums: dict[object, float] = {}
    for r, g in zip(residual, groups):
        sums[g] = sums.get(g, 0.0) + float(r)
    n_groups = len(sums)
    if n_groups < 2:
        return 0.0
    variance = n_groups / (n_groups - 1) * sum(s * s for s in sums.values()) / (n * n)
    return math.sqrt(variance)


def _resampled_means(x: np.ndarray, groups: Sequence[object] | None, n_boot: int,
                     rng: np.random.Generator) -> np.ndarray:
    """`n_boot` bootstrap means of `x`: samples resampled, or whole groups when `groups` is given."""
    if groups is None:
        return x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    keys = list(dict.fromkeys(groups))
    position = {k: i for i, k in enumerate(keys)}
    gid = np.array([position[g] for g in groups])
    sums = np.bincount(gid, weights=x, minlength=len(keys))
    counts = np.bincount(gid, minlength=len(keys)).astype(np.float64)
    picks = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)


def bootstrap_ci(values: Sequence[float], groups: Sequence[object] | None = None, n_boot: int = 2000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; with `groups`, whole groups are resampled."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return (math.nan, math.nan)  # one value has no spread to resample: no interval, not a zero-width one
    means = _resampled_means(x, groups, n_boot, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def clusters_to_use(groups: Sequence[object] | None) -> Sequence[object] | None:
    """`groups` when clustering applies (some group repeats and there are at least two), else None.

    A single group leaves no between-group variation to estimate: the clustered SE is 0 and resampling
    the one group gives the same mean every time, a zero-width CI that claims certainty. We then fall
    back to treating the samples as independent (the per-sample SE and bootstrap), the usual choice;
    it may understate the uncertainty when the samples are correlated, but never reports none.
    """
    if groups is None:
        return None
    return groups if 1 < len(set(groups)) < len(groups) else None


def summarize(values: Sequence[float], groups: Sequence[object] | None = None, n_boot: int = 2000,
              seed: int = 0) -> Summary:
    """Mean, (clustered) standard error and bootstrap CI of one scorer's per-sample values."""
    x = [float(v) for v in values]
    if not x:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0, 0)
    if len(x) == 1:  # one sample measures no uncertainty; a stderr of 0 and a zero-width CI would claim certainty
        return Summary(x[0], math.nan, math.nan, math.nan, 1, 1)
    clusters = clusters_to_use(groups)
    stderr = mean_stderr(x) if clusters is None else clustered_stderr(x, clusters)
    low, high = bootstrap_ci(x, clusters, n_boot=n_boot, seed=seed)
    return Summary(float(np.mean(x)), stderr, low, high, len(x), len(x) if clusters is None else len(set(clusters)))


@dataclass(slots=True)
class McNemar:
    a_only: int  # samples right under A, wrong under B
    b_only: int  # samples wrong under A, right under B
    p_value: float


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact (binomial) two-sided McNemar test on paired binary outcomes.

    Only discordant pairs carry information; under "no difference" each is equally likely to favour
    A or B, so the smaller count is Binomial(n_discordant, 1/2). Exact integer arithmetic keeps the
    p-value right even for thousands of discordant pairs.
    """
    assert len(a) == len(b), "paired test needs the same samples in both runs"
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = a_only + b_only
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1))
    return McNemar(a_only, b_only, min(1.0, 2 * tail / 2**n))


@dataclass(slots=True)
class PairedBootstrap:
    mean_diff: float  # mean of (b - a)
    ci_low: float
    ci_high: float
    p_value: float


def paired_bootstrap(a: Sequence[float], b: Sequence[float], groups: Sequence[object] | None = None,
                     n_boot: int = 5000, seed: int = 0, confidence: float = 0.95) -> PairedBootstrap:
    """The mean per-sample difference b - a: a bootstrap CI, and the p-value of a paired sign-flip test.

    The p-value is not read off the bootstrap: a bootstrap of 2 or 3 differences of one sign never
    crosses zero and would report p ~ 0. Under "no difference" each difference (each group's summed
    difference, with `groups`) is as likely positive as negative, so the p-value is the share of sign
    assignments whose |mean| is at least the observed one: exact (all 2^m assignments) for up to 16
    units, Monte Carlo beyond. One unit gives p = 1; m units all of one sign give at least 2 / 2^m.
    """
    assert len(a) == len(b), "paired test needs the same samples in both runs"
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(diffs) == 0:
        return PairedBootstrap(math.nan, math.nan, math.nan, 1.0)
    observed = float(diffs.mean())
    p_value = sign_flip_p_value(diffs, groups, n_boot, seed)
    if len(diffs) < 2:
        return PairedBootstrap(observed, math.nan, math.nan, p_value)
    if np.allclose(diffs, diffs[0]):
        return PairedBootstrap(observed, observed, observed, p_value)
    means = _resampled_means(diffs, groups, n_boot, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedBootstrap(observed, float(low), float(high), p_value)


def sign_flip_p_value(diffs: np.ndarray, groups: Sequence[object] | None = None, n_perm: int = 5000,
                      seed: int = 0, exact_up_to: int = 16) -> float:
    """Two-sided p-value of the paired randomization test: signs of the (group-summed) differences flipped."""
    if groups is None:
        units = diffs
    else:
        keys = list(dict.fromkeys(groups))
        position = {k: i for i, k in enumerate(keys)}
        units = np.bincount([position[g] for g in groups], weights=diffs, minlength=len(keys))
    observed = abs(float(units.sum()))
    if observed == 0:
        return 1.0
    if len(units) <= exact_up_to:
        signs = 1 - 2 * ((np.arange(2 ** len(units))[:, None] >> np.arange(len(units))) & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, len(units)))
    totals = np.abs(signs @ units)
    extreme = int((totals >= observed * (1 - 1e-9)).sum())  # the tolerance keeps float ties as ties
    if len(units) <= exact_up_to:
        return extreme / len(signs)
    return (extreme + 1) / (len(signs) + 1)  # the observed assignment counts as one of the draws


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): chance that at least one of k draws from n attempts passes."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} epochs, got {n}")
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def pass_hat_k(n: int, correct: int, k: int) -> float:
    """pass^k (tau-bench): chance that all of k draws from n attempts pass -- reliability, not luck."""
    if k > n:
        raise ValueError(f"pass^{k} needs at least {k} epochs, got {n}")
    return math.comb(correct, k) / math.comb(n, k)

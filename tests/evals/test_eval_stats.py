"""Statistics against hand-computed and closed-form values."""

import math

import numpy as np
import pytest

from lmstack.evals import stats


def test_mcnemar_exact_p_value_by_hand():
    # 9 samples right only under B, 1 right only under A, 5 agreeing: n_discordant = 10.
    # Two-sided exact: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024.
    a = [True] * 1 + [False] * 9 + [True] * 3 + [False] * 2
    b = [False] * 1 + [True] * 9 + [True] * 3 + [False] * 2
    result = stats.mcnemar(a, b)
    assert (result.a_only, result.b_only) == (1, 9)
    assert result.p_value == pytest.approx(22 / 1024)


def test_mcnemar_no_discordant_pairs_is_p_one():
    assert stats.mcnemar([True, False], [True, False]).p_value == 1.0


def test_mcnemar_balanced_discordance_is_capped_at_one():
    # 3 vs 3: 2 * P(X <= 3), X ~ Bin(6, 1/2) = 2 * 42/64 > 1 -> 1.
    a = [True] * 3 + [False] * 3
    assert stats.mcnemar(a, [not x for x in a]).p_value == 1.0


def test_bootstrap_ci_matches_normal_interval_on_large_sample():
    rng = np.random.default_rng(1)
    values = rng.binomial(1, 0.3, size=5000).astype(float)
    low, high = stats.bootstrap_ci(values, n_boot=4000, seed=7)
    mean = values.mean()
    se = math.sqrt(mean * (1 - mean) / len(values))  # closed form for a proportion
    assert low == pytest.approx(mean - 1.96 * se, abs=0.003)
    assert high == pytest.approx(mean + 1.96 * se, abs=0.003)


def test_stderr_by_hand():
    # values 1,2,3,4: sample sd = sqrt(5/3), se = sqrt(5/3)/2
    assert stats.mean_stderr([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3) / 2)


def test_clustered_stderr_by_hand():
    # groups {a: 1, 1}, {b: 0, 0}: mean 0.5, residual sums +1 and -1,
    # var = G/(G-1) * (1 + 1) / n^2 = 2 * 2 / 16 = 0.25 -> se 0.5 (vs 0.289 unclustered)
    assert stats.clustered_stderr([1, 1, 0, 0], ["a", "a", "b", "b"]) == pytest.approx(0.5)
    assert stats.mean_stderr([1, 1, 0, 0]) == pytest.approx(math.sqrt(1 / 3) / 2)


def test_summarize_clusters_only_when_groups_repeat():
    s = stats.summarize([1, 1, 0, 0], ["a", "a", "b", "b"])
    assert s.clusters == 2 and s.stderr == pytest.approx(0.5)
    s = stats.summarize([1, 1, 0, 0], ["a", "b", "c", "d"])
    assert s.clusters == 4 and s.stderr == pytest.approx(stats.mean_stderr([1, 1, 0, 0]))


def test_one_group_falls_back_to_per_sample_stderr_and_ci():
    # The val_bpb walkthrough: three chunks of one document. The clustered SE of a single cluster is 0
    # (it gave the CI [5.321, 5.321]); the fallback is the per-sample SE: mean 5.32, residuals -0.2,
    # 0.27, -0.07, squares summing to 0.1178, se = sqrt(0.1178 / 2 / 3).
    s = stats.summarize([5.12, 5.59, 5.25], ["doc0"] * 3)
    assert s.mean == pytest.approx(5.32) and s.stderr == pytest.approx(math.sqrt(0.1178 / 2 / 3))
    # Resampling 3 values, "all three the smallest" has chance 1/27 > 2.5% (likewise the largest),
    # so the 95% percentile interval is [min, max].
    assert (s.ci_low, s.ci_high) == (pytest.approx(5.12), pytest.approx(5.59)) and s.clusters == 3


def test_compare_with_one_group_is_not_a_certain_difference():
    from lmstack.evals.compare import _compare_scorer

    ids = ["c0", "c1", "c2"]
    values_a = {i: (v, "doc0") for i, v in zip(ids, [5.12, 5.59, 5.25])}
    values_b = {i: (v, "doc0") for i, v in zip(ids, [5.22, 5.39, 5.30])}  # differences +0.1, -0.2, +0.05
    result = _compare_scorer("bpb", ids, values_a, values_b, higher=False, alpha=0.05, seed=0)
    # One resampled cluster would give p = 1/5000 and a zero-width CI: a "significant improvement".
    assert (result.ci_low, result.ci_high) == (pytest.approx(-0.2), pytest.approx(0.1))  # [min, max], as above
    assert result.p_value > 0.05 and not result.improvement and not result.regression


def test_paired_bootstrap_detects_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    shifted = stats.paired_bootstrap(a, a - 0.3 + rng.normal(0, 0.2, 400), seed=1)
    assert shifted.p_value < 0.001 and shifted.ci_high < 0
    noise = stats.paired_bootstrap(a, a + rng.normal(0, 0.2, 400), seed=1)
    assert noise.p_value > 0.05 and noise.ci_low < 0 < noise.ci_high


def test_pass_at_k_by_hand():
    # n=5 attempts, 2 correct: pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass^2 = C(2,2)/C(5,2) = 1/10
    assert stats.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert stats.pass_hat_k(5, 2, 2) == pytest.approx(0.1)
    assert stats.pass_at_k(5, 0, 1) == 0.0 and stats.pass_hat_k(5, 5, 3) == 1.0


def test_one_sample_has_no_stderr_or_interval():
    # One value measures no spread: no stderr and no CI (None in the stored summary), not a certain [x, x].
    one = stats.summarize([0.5])
    assert one.mean == 0.5 and one.n == 1
    assert math.isnan(one.stderr) and math.isnan(one.ci_low) and math.isnan(one.ci_high)


def test_paired_p_value_is_the_exact_sign_flip_test_on_few_samples():
    # 3 differences, all negative: of the 2^3 sign assignments, only all-minus and all-plus reach
    # |mean| >= the observed one, so p = 2/8 -- not the ~0 a bootstrap that never crosses zero reports.
    result = stats.paired_bootstrap([0.3, 0.5, 0.2], [0.1, 0.45, 0.1])
    assert result.mean_diff == pytest.approx(-0.35 / 3) and result.p_value == pytest.approx(0.25)
    assert stats.paired_bootstrap([1.0], [0.5]).p_value == 1.0  # one pair can show nothing
    assert stats.paired_bootstrap([0.5] * 6, [0.4] * 6).p_value == pytest.approx(2 / 64)  # the sign test
    # diffs 1, 2, 3, -0.5 (|sum| 5.5): sums of +-1, +-2, +-3, +-0.5 with |sum| >= 5.5 are 6.5, 5.5 and their negatives
    assert stats.paired_bootstrap([0, 0, 0, 0], [1, 2, 3, -0.5]).p_value == pytest.approx(4 / 16)


def test_paired_p_value_flips_whole_groups():
    # Two groups with summed differences -0.3 and -0.2: 4 assignments, 2 reach |sum| 0.5 -> p = 1/2.
    a, b = [0.5, 0.5, 0.5, 0.5], [0.4, 0.3, 0.4, 0.4]
    assert stats.paired_bootstrap(a, b, groups=["x", "x", "y", "y"]).p_value == pytest.approx(0.5)


def test_paired_p_value_on_many_samples_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.1, 1.0, size=400)
    z = diffs.mean() / (diffs.std(ddof=1) / math.sqrt(len(diffs)))
    expected = math.erfc(abs(z) / math.sqrt(2))  # two-sided normal p-value
    result = stats.paired_bootstrap(np.zeros(400), diffs, n_boot=20000, seed=1)
    assert result.p_value == pytest.approx(expected, abs=0.01)

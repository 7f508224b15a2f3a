"""The significance tests against scipy (and textbook values) on known inputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from fwlora.harness import stats


def _correctness(b: int, c: int, both: int = 5, neither: int = 3):
    """Per-example correctness with b (A right, B wrong) and c (A wrong, B right) cells."""
    a = [1] * b + [0] * c + [1] * both + [0] * neither
    bb = [0] * b + [1] * c + [1] * both + [0] * neither
    return np.array(a, bool), np.array(bb, bool)


def test_mcnemar_counts_and_exact_p_match_scipy_binomtest():
    a, b = _correctness(12, 4)
    result = stats.mcnemar(a, b)
    assert (result["b"], result["c"]) == (12, 4)
    expected = sps.binomtest(4, 16, 0.5).pvalue
    assert result["p_value"] == pytest.approx(expected)
    # χ² with continuity correction: (|12 − 4| − 1)² / 16 = 49/16.
    assert result["statistic"] == pytest.approx(49 / 16)
    assert result["p_value_chi2"] == pytest.approx(sps.chi2.sf(49 / 16, 1))


def test_mcnemar_textbook_example():
    # b = 25, c = 10: continuity-corrected χ² = 14²/35 = 5.6, p ≈ 0.01796.
    result = stats.mcnemar(*_correctness(25, 10))
    assert result["statistic"] == pytest.approx(5.6)
    assert result["p_value_chi2"] == pytest.approx(0.017960, abs=1e-5)
    assert result["p_value"] == pytest.approx(2 * sps.binom.cdf(10, 35, 0.5))


def test_mcnemar_identical_predictions_is_not_significant():
    a, _ = _correctness(0, 0)
    assert stats.mcnemar(a, a) == {
        "b": 0,
        "c": 0,
        "statistic": 0.0,
        "p_value": 1.0,
        "p_value_chi2": 1.0,
    }


def test_mcnemar_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        stats.mcnemar(np.ones(3, bool), np.ones(4, bool))


@given(st.integers(0, 40), st.integers(0, 40))
def test_mcnemar_is_symmetric_and_a_probability(b, c):
    x, y = _correctness(b, c)
    forward, backward = stats.mcnemar(x, y), stats.mcnemar(y, x)
    assert forward["p_value"] == pytest.approx(backward["p_value"])
    assert 0.0 <= forward["p_value"] <= 1.0
    assert 0.0 <= forward["p_value_chi2"] <= 1.0


def test_paired_tests_match_scipy():
    a = [0.91, 0.93, 0.92, 0.95]
    b = [0.90, 0.915, 0.925, 0.93]
    result = stats.paired_tests(a, b)
    t = sps.ttest_rel(a, b)
    w = sps.wilcoxon(a, b)
    assert result["n"] == 4
    assert result["mean_difference"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert result["paired_t"]["statistic"] == pytest.approx(t.statistic)
    assert result["paired_t"]["p_value"] == pytest.approx(t.pvalue)
    assert result["wilcoxon"]["statistic"] == pytest.approx(w.statistic)
    assert result["wilcoxon"]["p_value"] == pytest.approx(w.pvalue)


@pytest.mark.parametrize(
    ("a", "b"),
    [([0.9], [0.8]), ([0.9, 0.9], [0.9, 0.9]), ([0.9, 0.8], [0.8, 0.7])],
    ids=["one-seed", "all-equal", "constant-difference"],
)
def test_paired_tests_are_null_where_undefined(a, b):
    result = stats.paired_tests(a, b)
    assert result["paired_t"] is None
    if len(a) < 2 or np.all(np.subtract(a, b) == 0):
        assert result["wilcoxon"] is None


def test_bootstrap_ci_matches_scipy_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.random((3, 200)) < 0.8
    b = rng.random((3, 200)) < 0.7
    result = stats.bootstrap_difference_ci(a, b, n_resamples=2000, seed=7)
    per_example = (a.astype(float) - b.astype(float)).mean(axis=0)
    expected = sps.bootstrap(
        (per_example,),
        np.mean,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert result["estimate"] == pytest.approx(a.mean() - b.mean())
    assert result["low"] == pytest.approx(expected.low)
    assert result["high"] == pytest.approx(expected.high)
    assert result["low"] < result["estimate"] < result["high"]


def test_bootstrap_ci_of_identical_predictions_is_a_point():
    a = np.array([[True, False, True]])
    result = stats.bootstrap_difference_ci(a, a)
    assert result["low"] == result["high"] == result["estimate"] == 0.0


def test_holm_adjusts_in_order_and_skips_none():
    holm = stats.holm
    # sorted 0.01, 0.02, 0.04 → 3·0.01, 2·0.02, max(0.04, 0.04): returned in input order.
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04], nan_ok=True)
    assert holm([0.5, 0.6]) == [1.0, 1.0]


def test_min_detectable_difference_has_80_percent_power_by_simulation():
    sd, n = 0.01, 10
    delta = stats.min_detectable_difference(sd, n)
    # The textbook approximation (z_{α/2} + z_β)·sd/√n is a little below the exact value.
    assert 0.0089 < delta < 0.0105
    rng = np.random.default_rng(0)
    diffs = rng.normal(delta, sd, size=(20000, n))
    t = diffs.mean(1) / (diffs.std(1, ddof=1) / np.sqrt(n))
    rejected = np.abs(t) > sps.t.ppf(0.975, n - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    assert stats.min_detectable_difference(sd, 1) is None


# ------------------------------------------------------------------ intervals and TOST
def test_paired_comparison_interval_and_tost_match_a_hand_computation():
    a = np.array([0.71, 0.70, 0.72, 0.69, 0.73, 0.70])
    b = np.array([0.70, 0.70, 0.71, 0.70, 0.71, 0.69])
    d = a - b
    n, mean, sd = len(d), d.mean(), d.std(ddof=1)
    se = sd / np.sqrt(n)
    c = stats.paired_comparison(a, b, margin=0.02)
    half = sps.t.ppf(0.975, n - 1) * se
    assert c["mean_difference"] == pytest.approx(mean)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((mean - half, mean + half))
    assert c["p_difference"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    # TOST: the larger of the two one-sided p-values against −margin and +margin.
    p_low = sps.t.sf((mean + 0.02) / se, n - 1)
    p_high = sps.t.cdf((mean - 0.02) / se, n - 1)
    assert c["p_equivalence"] == pytest.approx(max(p_low, p_high))
    assert c["mde_80"] == pytest.approx(stats.min_detectable_difference(sd, n))
    assert c["wilcoxon"]["nonzero_pairs"] == 5 and c["wilcoxon"]["method"]


@pytest.mark.parametrize(
    ("a", "b", "margin", "verdict"),
    [
        ([0.8, 0.81, 0.82, 0.83], [0.7, 0.70, 0.71, 0.73], 0.01, "different"),
        ([0.70, 0.701, 0.699, 0.70], [0.70, 0.70, 0.70, 0.70], 0.01, "equivalent"),
        ([0.70, 0.75, 0.66, 0.71], [0.70, 0.70, 0.70, 0.70], 0.01, "inconclusive"),
        ([0.7, 0.7, 0.7], [0.7, 0.7, 0.7], 0.01, "equivalent"),  # degenerate: all zero
        ([0.72, 0.72, 0.72], [0.7, 0.7, 0.7], 0.01, "different"),  # degenerate: all 0.02
    ],
)
def test_paired_comparison_verdicts(a, b, margin, verdict):
    assert stats.paired_comparison(a, b, margin)["verdict"] == verdict


@pytest.mark.parametrize("margin", [0, -0.01, float("nan"), float("inf"), True, "0.01"])
def test_paired_comparison_refuses_a_bad_margin(margin):
    with pytest.raises(ValueError, match="--equivalence-margin: expected a finite number > 0"):
        stats.paired_comparison([0.1, 0.2], [0.1, 0.3], margin)


def test_family_holm_adjusts_both_tests_and_states_its_size():
    comps = [
        stats.paired_comparison([0.8, 0.81, 0.82, 0.8], [0.7, 0.72, 0.71, 0.7], 0.01),
        stats.paired_comparison([0.7, 0.71, 0.69], [0.7, 0.7, 0.7], 0.01),
        stats.paired_comparison([0.7], [0.7], 0.01),  # one seed: undefined, not a member
    ]
    raw = [c["p_difference"] for c in comps]
    assert stats.classify_family(comps) == 2
    assert comps[0]["p_difference_holm"] == pytest.approx(min(1.0, 2 * min(raw[:2])))
    assert [c["family_size"] for c in comps] == [2, 2, 2]
    assert comps[2]["verdict"] == "inconclusive"


def test_wilcoxon_states_its_method_and_zero_handling():
    exact = stats.wilcoxon(np.array([0.01, -0.02, 0.03, 0.0, 0.05]))
    assert exact["method"] == "exact" and exact["nonzero_pairs"] == 4
    assert exact["p_value"] == pytest.approx(sps.wilcoxon([0.01, -0.02, 0.03, 0.05]).pvalue)
    tied = stats.wilcoxon(np.array([0.01, 0.01, -0.01, 0.02, 0.0, 0.0]))
    assert tied["method"] == "normal approximation" and tied["ties"]
    assert "dropped" in tied["zero_method"]

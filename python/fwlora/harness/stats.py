"""Significance tests between two methods: McNemar per seed, paired tests across seeds,
and a bootstrap confidence interval of the accuracy difference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """Paired McNemar test on per-example correctness of A and B (same examples, same order).

    b = A right and B wrong, c = A wrong and B right. `p_value` is the exact (binomial)
    two-sided test; `p_value_chi2` the χ² test with continuity correction, (|b−c|−1)²/(b+c).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"mcnemar: shapes differ, {a.shape} vs {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "p_value_chi2": 1.0}
    p_exact = float(stats.binomtest(min(b, c), n, 0.5, alternative="two-sided").pvalue)
    chi2 = (abs(b - c) - 1) ** 2 / n
    return {
        "b": b,
        "c": c,
        "statistic": float(chi2),
        "p_value": min(1.0, p_exact),
        "p_value_chi2": float(stats.chi2.sf(chi2, df=1)),
    }


def paired_tests(values_a: list[float], values_b: list[float]) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test of A − B over seeds (None where undefined:
    fewer than two seeds, or differences that are all equal / all zero)."""
    a = np.asarray(values_a, dtype=float)
    b = np.asarray(values_b, dtype=float)
    diff = a - b
    out: dict[str, Any] = {
        "n": len(diff),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_difference": float(diff.mean()),
        "paired_t": None,
        "wilcoxon": None,
    }
    # Differences equal up to rounding (e.g. 0.9 − 0.8 vs 0.8 − 0.7): t is undefined.
    if len(diff) >= 2 and np.ptp(diff) > 1e-9 * max(1.0, float(np.abs(diff).max())):
        t = stats.ttest_rel(a, b)
        out["paired_t"] = {"statistic": float(t.statistic), "p_value": float(t.pvalue)}
    if len(diff) >= 2 and np.any(diff != 0):
        w = stats.wilcoxon(a, b, zero_method="wilcox")
        out["wilcoxon"] = {"statistic": float(w.statistic), "p_value": float(w.pvalue)}
    return out


def bootstrap_difference_ci(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap CI of acc(A) − acc(B), resampling examples.

    `correct_a`/`correct_b` are (seeds × examples) correctness arrays; each example's
    difference is averaged over seeds first, so the CI is for the seed-averaged accuracy
    difference and the same resampled examples are used for every seed (paired).
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=float))
    b = np.atleast_2d(np.asarray(correct_b, dtype=float))
    per_example = (a - b).mean(axis=0)
    estimate = float(per_example.mean())
    result: dict[str, Any] = {
        "estimate": estimate,
        "confidence_level": confidence,
        "n_resamples": n_resamples,
        "method": "percentile",
        "unit": "examples (difference averaged over seeds)",
    }
    if np.ptp(per_example) == 0:  # every resample gives the same value
        return {**result, "low": estimate, "high": estimate}
    res = stats.bootstrap(
        (per_example,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return {**result, "low": float(ci.low), "high": float(ci.high)}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values of a family, in the given order (None stays None
    and does not count as a member)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))  # monotone in the sorted order
        adjusted[i] = running
    return adjusted


def min_detectable_difference(
    sd: float, n: int, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """The smallest true mean paired difference a two-sided paired t-test at `alpha` detects
    with probability `power`, given n pairs whose differences have standard deviation `sd`
    (exact, from the noncentral t distribution). None for fewer than two pairs."""
    if n < 2 or not sd > 0:
        return None
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))

    def power_at(delta: float) -> float:
        nc = delta * math.sqrt(n) / sd
        return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))

    low, high = 0.0, sd
    while power_at(high) < power:
        high *= 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if power_at(mid) < power else (low, mid)
    return high

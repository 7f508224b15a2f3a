"""Significance tests between two methods: McNemar per seed, paired tests across seeds,
a bootstrap confidence interval of the accuracy difference, and the paired comparison that
classifies a difference as different, equivalent (TOST against a margin) or inconclusive."""

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
    if len(diff) >= 2 and not _constant(diff):
        t = stats.ttest_rel(a, b)
        out["paired_t"] = {"statistic": float(t.statistic), "p_value": float(t.pvalue)}
    if len(diff) >= 2 and np.any(diff != 0):
        out["wilcoxon"] = wilcoxon(diff)
    return out


def _constant(diff: np.ndarray) -> bool:
    return bool(np.ptp(diff) <= 1e-9 * max(1.0, float(np.abs(diff).max())))


def wilcoxon(diff: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test of paired differences, with the method it used stated:
    zero differences dropped (Wilcoxon's own handling, zero_method="wilcox"); the exact null
    distribution when the non-zero |differences| have no ties (and ≤ 50 of them), else the
    normal approximation (with tie correction, no continuity correction)."""
    diff = np.asarray(diff, dtype=float)
    nonzero = diff[diff != 0]
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    method = "exact" if not ties and len(nonzero) <= 50 else "approx"
    w = stats.wilcoxon(nonzero, zero_method="wilcox", method=method)
    return {
        "statistic": float(w.statistic),
        "p_value": float(w.pvalue),
        "method": "exact" if method == "exact" else "normal approximation",
        "zero_method": "zero differences dropped (wilcox)",
        "nonzero_pairs": len(nonzero),
        "ties": bool(ties),
    }


VERDICTS = ("different", "equivalent", "inconclusive")
# The equivalence margin when the user gives none (--equivalence-margin): ±0.01 accuracy.
DEFAULT_MARGIN = 0.01


def check_margin(margin: object) -> float:
    """The margin, or ValueError naming --equivalence-margin and what it must be."""
    ok = isinstance(margin, (int, float)) and not isinstance(margin, bool)
    if not (ok and math.isfinite(float(margin)) and float(margin) > 0):  # type: ignore[arg-type]
        raise ValueError(
            f"--equivalence-margin: expected a finite number > 0 (in the metric's units, e.g. "
            f"0.01 accuracy), got {margin!r}"
        )
    return float(margin)  # type: ignore[arg-type]


def paired_comparison(
    values_a: list[float] | np.ndarray,
    values_b: list[float] | np.ndarray,
    margin: float,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """A − B over paired seeds: the mean difference with its (1 − alpha) t-interval, the
    two-sided paired t-test, the paired equivalence test (two one-sided t-tests, TOST)
    against ±margin, the Wilcoxon test (method stated) and, as a planning figure only, the
    minimum detectable difference at 80 % power. `verdict` (before any family correction,
    see `classify_family`): different (t p < alpha), else equivalent (TOST p < alpha: the
    (1 − 2·alpha) interval lies inside ±margin), else inconclusive.

    Differences that are all equal (zero spread) have a degenerate interval [d, d]: the
    t-test's p is 0 for d ≠ 0 and 1 for d = 0, TOST's p is 0 when |d| < margin, else 1."""
    margin = check_margin(margin)
    a = np.asarray(values_a, dtype=float)
    b = np.asarray(values_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison: shapes differ, {a.shape} vs {b.shape}")
    diff = a - b
    n = len(diff)
    out: dict[str, Any] = {
        "n": n,
        "mean_a": float(a.mean()) if n else None,
        "mean_b": float(b.mean()) if n else None,
        "mean_difference": float(diff.mean()) if n else None,
        "sd_difference": float(diff.std(ddof=1)) if n > 1 else None,
        "confidence_level": 1 - alpha,
        "ci_low": None,
        "ci_high": None,
        "margin": float(margin),
        "p_difference": None,
        "p_equivalence": None,
        "wilcoxon": None,
        "mde_80": None,
        "verdict": "inconclusive",
    }
    if n < 2:
        return out
    mean = float(diff.mean())
    if _constant(diff):
        out.update(ci_low=mean, ci_high=mean, sd_difference=0.0)
        out["p_difference"] = 0.0 if abs(mean) > 1e-12 else 1.0
        out["p_equivalence"] = 0.0 if abs(mean) < margin else 1.0
    else:
        sd = float(diff.std(ddof=1))
        half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
        out.update(ci_low=mean - half, ci_high=mean + half)
        out["p_difference"] = float(stats.ttest_1samp(diff, 0.0).pvalue)
        lower = float(stats.ttest_1samp(diff, -margin, alternative="greater").pvalue)
        upper = float(stats.ttest_1samp(diff, margin, alternative="less").pvalue)
        out["p_equivalence"] = max(lower, upper)
        out["mde_80"] = min_detectable_difference(sd, n, alpha)
    if np.any(diff != 0):
        out["wilcoxon"] = wilcoxon(diff)
    out["verdict"] = verdict(out["p_difference"], out["p_equivalence"], alpha)
    return out


def verdict(p_difference: float | None, p_equivalence: float | None, alpha: float = 0.05) -> str:
    if p_difference is not None and p_difference < alpha:
        return "different"
    if p_equivalence is not None and p_equivalence < alpha:
        return "equivalent"
    return "inconclusive"


def classify_family(comparisons: list[dict[str, Any]], alpha: float = 0.05) -> int:
    """Holm-adjusts the difference and the equivalence p-values of a family of
    `paired_comparison` results in place (keys p_difference_holm, p_equivalence_holm),
    sets each verdict from the adjusted values, and returns the family size actually used
    (members with a defined p-value)."""
    p_diff = holm([c.get("p_difference") for c in comparisons])
    p_eq = holm([c.get("p_equivalence") for c in comparisons])
    for c, pd, pe in zip(comparisons, p_diff, p_eq):
        c["p_difference_holm"] = pd
        c["p_equivalence_holm"] = pe
        c["verdict"] = verdict(pd, pe, alpha)
    size = sum(p is not None for p in p_diff)
    for c in comparisons:
        c["family_size"] = size
    return size


def comparison_text(c: dict[str, Any], digits: int = 4) -> str:
    """'+0.0012 [95 % CI −0.0031, +0.0055], TOST p 0.01 (margin ±0.01): equivalent'."""
    if c.get("mean_difference") is None:
        return "no paired seeds"
    text = f"{c['mean_difference']:+.{digits}f}"
    if c.get("ci_low") is not None:
        level = round(100 * c.get("confidence_level", 0.95))
        text += f" [{level} % CI {c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}]"
    pe = c.get("p_equivalence_holm", c.get("p_equivalence"))
    if pe is not None:
        text += f", TOST p {pe:.2g} (margin ±{c['margin']:g})"
    return f"{text}: {c['verdict']}"


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

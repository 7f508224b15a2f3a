"""Core per-call cost: Rust (fwlora._core) vs numpy vs pure Python, same update, same run.

    python benches/bench_core.py [--quick]

(a) observe: one optimizer step's g (float64 row of M) into the Fisher EMA.
(b) normalise: freeze, i.e. the observation of step K that computes I = F / ΣF.
(c) factors: read out λ·(1 − I)·scale(step) as a float64 array.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import md_table, write
from fwlora import FisherCore


class NumpyCore:
    def __init__(self, m, alpha=0.98, lam=1e-4):
        self.f = np.zeros(m)
        self.alpha, self.lam = alpha, lam
        self.imp = None

    def observe(self, g):
        if not np.isfinite(g).all():
            return False
        self.f *= self.alpha
        self.f += (1 - self.alpha) * g
        return True

    def normalise(self):
        total = self.f.sum()
        self.imp = self.f / total if total > 0 else np.full_like(self.f, 1 / len(self.f))

    def factors(self):
        return self.lam * (1.0 - self.imp)


class PythonCore:
    def __init__(self, m, alpha=0.98, lam=1e-4):
        self.f = [0.0] * m
        self.alpha, self.lam = alpha, lam
        self.imp = None

    def observe(self, g):
        a = self.alpha
        self.f = [a * f + (1 - a) * x for f, x in zip(self.f, g)]

    def normalise(self):
        total = sum(self.f)
        m = len(self.f)
        self.imp = [f / total for f in self.f] if total > 0 else [1 / m] * m

    def factors(self):
        return [self.lam * (1 - i) for i in self.imp]


def per_call(fn, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def bench(m: int, quick: bool) -> dict:
    rng = np.random.default_rng(0)
    g = rng.random(m)
    g_list = g.tolist()
    number = max(10, (20_000 if m <= 1000 else 200) // (10 if quick else 1))
    repeat = 3 if quick else 7
    big = 10**9
    rust = FisherCore(m, warmup=big)
    npc, pyc = NumpyCore(m), PythonCore(m)
    res = {
        "observe": {
            "rust": per_call(lambda: rust.observe(g), number, repeat),
            "numpy": per_call(lambda: npc.observe(g), number, repeat),
            "python": per_call(lambda: pyc.observe(g_list), max(1, number // 10), repeat),
        }
    }

    # Normalise = the freezing observation (a warm-up of 1 step), minus nothing: it includes
    # the EMA update of that step for Rust; numpy/python do the same EMA + normalisation.
    def rust_freeze():
        FisherCore(m, warmup=1).observe(g)

    def numpy_freeze():
        c = NumpyCore(m)
        c.observe(g)
        c.normalise()

    def python_freeze():
        c = PythonCore(m)
        c.observe(g_list)
        c.normalise()

    res["normalise"] = {
        "rust": per_call(rust_freeze, number, repeat),
        "numpy": per_call(numpy_freeze, number, repeat),
        "python": per_call(python_freeze, max(1, number // 10), repeat),
    }
    frozen = FisherCore(m, warmup=1)
    frozen.observe(g)
    npc.normalise()
    pyc.normalise()
    res["factors"] = {
        "rust": per_call(lambda: frozen.factors(600), number, repeat),
        "numpy": per_call(npc.factors, number, repeat),
        "python": per_call(pyc.factors, max(1, number // 10), repeat),
    }
    return res


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results, rows = {}, []
    for m in (72, 1000, 100_000):
        r = bench(m, args.quick)
        results[str(m)] = r
        for op, t in r.items():
            rows.append(
                [
                    m,
                    op,
                    f"{t['rust']:.2f}",
                    f"{t['numpy']:.2f}",
                    f"{t['python']:.2f}",
                    f"{t['numpy'] / t['rust']:.2f}",
                    f"{t['python'] / t['rust']:.1f}",
                ]
            )
    obs72 = results["72"]["observe"]["rust"]
    faster = all(
        results[m]["observe"]["rust"] < results[m]["observe"]["numpy"] for m in ("72", "1000")
    )
    targets = {
        "observe_M72_us_le_2": {"value": obs72, "met": obs72 <= 2.0},
        "rust_faster_than_numpy_up_to_M1000": {"met": faster},
    }
    table = md_table(
        ["M", "operation", "Rust µs", "numpy µs", "Python µs", "numpy/Rust", "Python/Rust"], rows
    )
    table += (
        f"\n\nTarget ≤ 2 µs per observation at M = 72: {obs72:.2f} µs → "
        f"{'met' if obs72 <= 2 else 'missed'}. Rust faster than numpy up to M = 1000 "
        f"(observe): {'met' if faster else 'missed'}."
    )
    write("core", {"per_call_us": results, "targets": targets}, table)
    return {"per_call_us": results, "targets": targets}


if __name__ == "__main__":
    main()

"""The benchmarks of record for two versions of the package in one run: before and after a
change (issue 24's refactor: "no slower, measured before and after in the same run").

    python benches/compare_versions.py --before /tmp/old/python --after python --rounds 6

Each round runs bench_optimizer (FisherAdamW.step() / torch AdamW foreach, caches evicted) and
bench_training (training step after warm-up, and the exact and sketch warm-up steps, / plain
LoRA) once per version, in a fresh subprocess whose PYTHONPATH puts that version's package
first; the order of the two versions alternates from round to round. Every figure is a
same-run ratio to its own baseline (taken inside the subprocess), so the two versions are
compared by their ratios, round by round: after / before of each figure, median and quartiles
over the rounds. Writes results/compare_versions.json and .md (BENCH_RESULTS moves them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, md_table  # noqa: E402  (benches/ is put on the path above)

# (benchmark, key in its ratio table, the figure's name)
FIGURES = (
    ("optimizer", "FisherAdamW foreach (after warm-up)", "optimizer step / AdamW foreach"),
    ("training", "fw-after-warmup", "penalised training step / plain LoRA"),
    ("training", "fw-warmup-exact", "warm-up step, exact / plain LoRA"),
    ("training", "fw-warmup-sketch", "warm-up step, sketch / plain LoRA"),
)
RATIO_KEYS = {"optimizer": "ratio_vs_foreach", "training": "ratio_vs_lora"}
_CHILD = """
import json, sys
sys.path.insert(0, {benches!r})
import bench_optimizer, bench_training
import fwlora
out = {{"package": fwlora.__file__,
       "optimizer": bench_optimizer.main({flags!r}),
       "training": bench_training.main({flags!r})}}
print("@@RESULT@@" + json.dumps(out, default=str))
"""


def one_round(package: Path, inner_rounds: int) -> dict:
    """The ratios of one version, from a fresh interpreter with `package` first on the path."""
    flags = [f"--rounds={inner_rounds}"]
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(package), str(HERE.parent / "tests")]),
            "BENCH_RESULTS": scratch,  # the children's own files stay out of results/
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        code = _CHILD.format(benches=str(HERE), flags=flags)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark of {package} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@"))
    result = json.loads(line.removeprefix("@@RESULT@@"))
    if not result["package"].startswith(str(package.resolve())):
        raise SystemExit(f"expected the package from {package}, imported {result['package']}")
    return {name: result[bench][RATIO_KEYS[bench]][key] for bench, key, name in FIGURES}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="python/ of the old version")
    parser.add_argument("--after", type=Path, required=True, help="python/ of the new version")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (default 6)")
    parser.add_argument("--inner-rounds", type=int, default=3, help="each bench's own rounds")
    args = parser.parse_args(argv)
    for path in (args.before, args.after):
        if not (path / "fwlora" / "__init__.py").is_file():
            parser.error(f"{path}: expected a folder holding the fwlora package (python/)")
    ratios: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for which in order:
            figures = one_round(getattr(args, which).resolve(), args.inner_rounds)
            for name, value in figures.items():
                ratios[which].setdefault(name, []).append(value)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows, out = [], {}
    for _, _, name in FIGURES:
        before, after = np.array(ratios["before"][name]), np.array(ratios["after"][name])
        change = after / before  # round by round: the two versions ran side by side
        q1, med, q3 = np.percentile(change, [25, 50, 75])
        out[name] = {
            "before": ratios["before"][name],
            "after": ratios["after"][name],
            "after_over_before_median": float(med),
            "after_over_before_q1_q3": [float(q1), float(q3)],
        }
        rows.append(
            (
                name,
                f"{np.median(before):.3f}×",
                f"{np.median(after):.3f}×",
                f"{med:.3f} [{q1:.3f}–{q3:.3f}]",
            )
        )
    table = md_table(("figure (same-run ratio)", "before", "after", "after / before"), rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"rounds": args.rounds, "inner_rounds": args.inner_rounds, "figures": out}
    (RESULTS / "compare_versions.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / "compare_versions.md").write_text(table + "\n")
    print(table)
    return payload


if __name__ == "__main__":
    main()

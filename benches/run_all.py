"""`make bench`: every benchmark in one run, then benches/results/summary.md.

    python benches/run_all.py [--quick] [--full]

Each figure is a ratio against its baseline measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core
import bench_estimators
import bench_optimizer
import bench_training
from common import RESULTS, environment


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true", help="real roberta-base config (GPU)")
    args = parser.parse_args(argv)
    flags = ["--quick"] if args.quick else []
    model_flags = flags + (["--full"] if args.full else [])
    print("== core ==")
    bench_core.main(flags)
    print("\n== optimizer step ==")
    bench_optimizer.main(flags)
    print("\n== training step ==")
    bench_training.main(model_flags)
    print("\n== estimators ==")
    bench_estimators.main(model_flags)
    suffix = "_full" if args.full else ""
    parts = [f"# Benchmark summary\n\nEnvironment: {environment()}\n"]
    for title, name in [
        ("Core per-call cost", "core"),
        ("Optimizer step", "optimizer"),
        ("Training step", f"training{suffix}"),
        ("Fisher estimators", f"estimators{suffix}"),
    ]:
        parts.append(f"## {title}\n\n{(RESULTS / f'{name}.md').read_text()}")
    out = RESULTS / f"summary{suffix}.md"
    out.write_text("\n".join(parts))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

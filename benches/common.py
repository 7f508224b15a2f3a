"""Shared benchmark plumbing: interleaved timing, device choice, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], None]], rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each case, measured in interleaved rounds.

    Interleaving (A B C, A B C, ...) spreads machine noise over every case alike, so the
    ratios between cases measured in one run are meaningful even on a shared machine.
    """
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up: allocator, kernels, lazy state
        fn()
    sync()
    for _ in range(rounds):
        for name, fn in cases.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(v) for name, v in samples.items()}


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


def write(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

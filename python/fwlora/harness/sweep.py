"""Sweeps across methods: methods × λ × normalisation × seeds, and what they are for.

The question a sweep answers is whether the *Fisher weighting* matters, not only "some L2
on ΔW": `l2-lora` is FW-LoRA with uniform importances (I_m = 1/M, the same penalty path and
the same total weight Σ(1 − I_m) = M − 1), so at each λ fw-lora and l2-lora differ only in
where the penalty falls. Plain LoRA (no penalty) and AdaLoRA have no λ: one run per seed.

Run labels: `lora`, `adalora`, `fw-lora-{normalization}-lam{λ}`, `l2-lora-lam{λ}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fwlora.harness.config import RunConfig, run_lists
from fwlora.harness.errors import HarnessError

DEFAULT_METHODS = ("lora", "fw-lora", "l2-lora")
DEFAULT_LAMS = (1e-4, 1e-2, 1e-1)
DEFAULT_NORMALIZATIONS = ("sum",)
GRID_NORMALIZATIONS = ("sum", "max")  # uniform is the l2-lora method, not a normalisation here


def grid_label(method: str, lam: float | None = None, normalization: str | None = None) -> str:
    """`lora`, `fw-lora-sum-lam0.01`, `l2-lora-lam0.01`."""
    if method == "fw-lora":
        return f"fw-lora-{normalization}-lam{lam:g}"
    if method == "l2-lora":
        return f"l2-lora-lam{lam:g}"
    return method


def plan_grid(
    base: RunConfig,
    methods: Sequence[str] = DEFAULT_METHODS,
    lams: Sequence[float] = DEFAULT_LAMS,
    normalizations: Sequence[str] = DEFAULT_NORMALIZATIONS,
    seeds: Sequence[int] = (42,),
) -> list[RunConfig]:
    """Every (method, λ, normalisation) of the grid for every seed, seed-major (so an
    interrupted sweep has whole seeds done). λ and normalisation apply only where they
    mean something: fw-lora takes both, l2-lora takes λ (its normalisation is uniform),
    lora and adalora take neither."""
    if not lams:
        raise HarnessError("lams: expected at least one λ")
    if not normalizations:
        raise HarnessError("normalizations: expected at least one of sum, max")
    for lam in lams:
        if not lam > 0:
            raise HarnessError(f"lams: expected numbers > 0, got {lam!r}")
    for norm in normalizations:
        if norm not in GRID_NORMALIZATIONS:
            raise HarnessError(
                f"normalizations: unknown value {norm!r}; choose from sum, max (the uniform "
                "control is the method l2-lora)"
            )
    if len(set(lams)) != len(lams) or len(set(normalizations)) != len(normalizations):
        raise HarnessError("lams / normalizations: a value is given twice")
    cells: list[tuple[str, str | None, dict]] = []  # (method, variant, changes)
    for method in methods:
        if method == "fw-lora":
            for norm in normalizations:
                for lam in lams:
                    changes = {"fisher_lam": lam, "fisher_normalization": norm}
                    cells.append((method, grid_label(method, lam, norm), changes))
        elif method == "l2-lora":
            for lam in lams:
                changes = {"fisher_lam": lam, "fisher_normalization": None}
                cells.append((method, grid_label(method, lam), changes))
        else:
            cells.append((method, None, {}))
    return [
        base.replace(method=method, seed=seed, variant=variant, **changes)
        for seed in seeds
        for method, variant, changes in cells
    ]


def _items(key: str, value: Any) -> list[Any]:
    """A list from a config-file list or comma-separated text; empty items refused."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise HarnessError(f"{key}: expected a list (or comma-separated text), got {value!r}")
    items = [x.strip() if isinstance(x, str) else x for x in items]
    if not items or any(x == "" for x in items):
        raise HarnessError(f"{key}: expected comma-separated, non-empty items, got {value!r}")
    return items


def _lams(value: Any) -> list[float]:
    out = []
    for item in _items("lams", value):
        try:
            lam = float(item)
        except (TypeError, ValueError):
            lam = math.nan
        if isinstance(item, bool) or not (math.isfinite(lam) and lam > 0):
            raise HarnessError(f"lams: expected finite numbers > 0, got {item!r}")
        out.append(lam)
    return out


def sweep_lists(file: dict[str, Any], args: Any) -> dict[str, list[Any]]:
    """methods, seeds, lams, normalizations of `fwlora sweep`: flags over the config file
    over the defaults, each checked."""

    def pick(key: str, default: Any) -> Any:
        flag = getattr(args, key, None)
        return flag if flag is not None else file.get(key, default)

    lists = run_lists(
        {"methods": list(DEFAULT_METHODS), "seeds": [42]},
        {"methods": file.get("methods"), "seeds": file.get("seeds")},
        {"methods": getattr(args, "methods", None), "seeds": getattr(args, "seeds", None)},
    )
    norms = [
        str(n) for n in _items("normalizations", pick("normalizations", DEFAULT_NORMALIZATIONS))
    ]
    return {
        "methods": list(lists.methods),
        "seeds": list(lists.seeds),
        "lams": _lams(pick("lams", DEFAULT_LAMS)),
        "normalizations": norms,
    }


def write_sweep(out_dir: Path) -> str:
    """The sweep's own artefacts in a finished experiment folder; returns terminal text."""
    return ""

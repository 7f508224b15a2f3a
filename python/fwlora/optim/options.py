"""FisherOptions: every FW-LoRA option, its default and its validation, defined once.

The core's options (warm-up, λ, α, normalisation, schedule, refresh) take their defaults from
the Rust core (`FisherCore.defaults()`) and are validated by it; the options that only the
torch side reads (penalty mode, estimator, flushing, ranks, excluded modules) are defined and
checked here. `FisherAdamW`, `FisherWeighting` and the harness's run settings all build one of
these, so no option is written or checked twice.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fwlora._core import FisherCore
from fwlora.optim.calibration import DEFAULT_TARGET_RATIO, check_strength
from fwlora.optim.strength import MEASURE_EVERY

_CORE = FisherCore.defaults()
CORE_OPTIONS = tuple(_CORE)  # the options the Rust core holds and validates
PENALTY_MODES = ("coupled", "decoupled")
ESTIMATORS = ("exact", "sketch", "adapter")


def _opt(
    default: Any, doc: str, *, minimum: float | None = None, choices: tuple[str, ...] | None = None
) -> Any:
    return field(default=default, metadata={"doc": doc, "minimum": minimum, "choices": choices})


@dataclass(frozen=True)
class FisherOptions:
    """FW-LoRA's options. Construction validates them all (ValueError naming the option)."""

    warmup: int = _opt(_CORE["warmup"], "K: optimizer steps observed before importances freeze")
    lam: float | str = _opt(
        _CORE["lam"],
        'λ: strength of the Fisher-weighted penalty; "auto": calibrated once, at the first '
        "penalised step, to target_ratio",
    )
    target_ratio: float | None = _opt(
        _CORE["target_ratio"],
        f'lam="auto" only: ‖∇P‖/‖∇L_task‖ over the LoRA factors at the calibration step, in '
        f'(0, 10]; default {DEFAULT_TARGET_RATIO} with lam="auto"',
    )
    alpha: float = _opt(_CORE["alpha"], "α: decay of the Fisher EMA")
    normalization: str = _opt(
        _CORE["normalization"],
        'F → I: "sum" (the paper), "max", or "uniform" (I = 1/M: the L2 control)',
    )
    penalty: str = _opt(
        "coupled",
        '"coupled": the penalty\'s gradient joins the loss\'s; "decoupled": scales AdamW\'s '
        "weight decay by (1 - I)",
        choices=PENALTY_MODES,
    )
    estimator: str = _opt("exact", "how ‖∂L/∂W‖² is measured in warm-up", choices=ESTIMATORS)
    sketch_dim: int = _opt(8, "k of the Gaussian sketch (estimator='sketch')", minimum=1)
    schedule: str = _opt(_CORE["schedule"], '"constant" or "ramp" (linear over ramp_steps)')
    ramp_steps: int = _opt(_CORE["ramp_steps"], "length of the ramp after warm-up")
    refresh_every: int = _opt(
        _CORE["refresh_every"], "0: frozen importances (the paper); N: recomputed every N steps"
    )
    flush_every: int = _opt(32, "warm-up steps kept on the device between core updates", minimum=1)
    accumulation_steps: int = _opt(
        1,
        "backward passes per optimizer step: > 1 keeps the step's accumulated weight gradient "
        "(out × in per matrix in warm-up; out × k with the sketch) for the exact statistic",
        minimum=1,
    )
    seed: int = _opt(0, "seed of the sketch's random projections", minimum=0)
    ratio_every: int = _opt(
        MEASURE_EVERY,
        "penalty_grad_ratio read-out: ‖∇L_task‖ (a pass over the LoRA gradients) on the first "
        "N penalised steps, then every Nth; 1 measures every penalised step, so a median over "
        "the read-outs is the median over the run (the harness uses 1)",
        minimum=1,
    )
    exclude: tuple[str, ...] = _opt(
        (), "LoRA modules left out of FW-LoRA: exact names or fnmatch patterns"
    )

    def __post_init__(self) -> None:
        exclude: Any = self.exclude  # users pass a str, a list, a tuple ...
        if isinstance(exclude, str):
            exclude = (exclude,)
        if not isinstance(exclude, Iterable):
            raise ValueError(
                f"invalid `exclude`: expected module names or patterns, got {exclude!r}"
            )
        object.__setattr__(self, "exclude", tuple(exclude))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, plain_number(getattr(self, f.name)))
            _check(f, getattr(self, f.name))
        object.__setattr__(
            self, "target_ratio", check_strength(self.lam, self.target_ratio, self.penalty)
        )
        # The core is the judge of its own options (ranges, names, schedule/ramp pairing).
        FisherCore(1, **self.core_options())
        if self.penalty == "decoupled" and self.lam != _CORE["lam"]:
            raise ValueError(
                f'invalid `lam`: penalty="decoupled" does not use λ (each adapter\'s decay is '
                f"weight_decay·(1 - I_m)), got lam={self.lam!r}; set the strength with "
                'weight_decay, or use penalty="coupled"'
            )

    @classmethod
    def from_kwargs(cls, **options: Any) -> FisherOptions:
        """FisherOptions(**options), naming the known options when one is unknown."""
        unknown = sorted(set(options) - set(NAMES))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: unknown FW-LoRA option(s); expected some of "
                f"{', '.join(NAMES)}"
            )
        return cls(**options)

    def core_options(self) -> dict[str, Any]:
        """The options the Rust core takes, as keyword arguments of FisherCore."""
        out = {name: getattr(self, name) for name in CORE_OPTIONS}
        if self.lam == "auto":
            out["lam"] = None  # the core calibrates it (target_ratio is set)
        return out

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["exclude"] = list(self.exclude)
        return out


def plain_number(value: Any) -> Any:
    """numpy's (and any registered) integer and real scalars as Python int and float, so that
    np.int64(500) and np.float32(1e-4) are taken exactly like 500 and 1e-4 (np.float64 already
    is a float). Booleans (Python's and np.bool_) and everything else are returned unchanged,
    for the checks to accept or refuse."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _check(f: dataclasses.Field, value: Any) -> None:
    """Type, range and choice of one option, from its annotation and metadata."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    name, meta = f.name, f.metadata
    if kind == "bool":
        ok, what = isinstance(value, bool), "True or False"
    elif kind == "int":
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        if ok and abs(value) >= 2**63:  # the core and torch's generators hold 64 bits
            ok, what = False, "an integer below 2**63"
    elif kind == "float":
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        what = "a finite number"
    elif kind in ("float | str", "float | None"):  # lam ("auto"), target_ratio (None)
        special = "auto" if kind == "float | str" else None
        ok = value == special or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        what = f"a finite number or {special!r}"
    elif kind == "str":
        ok, what = isinstance(value, str), "a string"
    else:  # tuple[str, ...]
        ok, what = all(isinstance(v, str) and v for v in value), "non-empty strings"
    if ok and meta.get("minimum") is not None and value < meta["minimum"]:
        ok, what = False, f"{what} >= {meta['minimum']}"
    if ok and meta.get("choices") and value not in meta["choices"]:
        ok, what = False, f"one of {', '.join(map(repr, meta['choices']))}"
    if not ok:
        raise ValueError(f"invalid `{name}`: expected {what}, got {value!r}")


NAMES = tuple(f.name for f in dataclasses.fields(FisherOptions))
DEFAULTS = FisherOptions()

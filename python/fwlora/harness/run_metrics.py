"""A run's metrics.json record, typed (`RunMetrics`, with FW-LoRA's entry `FisherMetrics`),
and its one codec: `encode_run` / `write_run` for the writers, `decode_run` / `read_run` for
the readers (the run loop, --resume, report, merge, the sweep's analysis, the experiment's
metrics.json).

The codec is lossless: a record read and written back is the bytes it was read from, keys
this version does not know and keys an older version did not write included (they stay
absent, and read as None). A record is also a read-only mapping of its JSON (`run["fisher"]`
is the file's entry), so callers that index runs by key keep working.

Reading checks the fields the commands rely on and refuses a file of another shape with a
ValueError naming the first field that is off (the caller words it as one line).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_SCHEMA = "fwlora.run-metrics/1"
METRICS_FILE = "metrics.json"
COMPLETE = "complete"
FISHER_KEY = "fisher"  # FW-LoRA's record (`FisherMetrics`), beside every run's metrics

# The fields every record has, and their types: a file of another shape is refused by name
# rather than failing deep in a command.
RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run": str,
    "label": str,
    "method": str,
    "seed": int,
    "final_eval_acc": (int, float),
}
# Fields checked for their type where present.
OPTIONAL_RUN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task": str,
    "config": dict,
    "adapters": dict,
    "epochs": list,
    FISHER_KEY: (dict, type(None)),
    "best_eval_acc": (int, float),
    "runtime_sec": (int, float),
}


@dataclass(frozen=True, kw_only=True)
class FisherMetrics:
    """metrics.json's "fisher" entry of a FW-LoRA run (fw-lora, l2-lora); a key an older
    version did not write reads as None."""

    warmup_steps: int | None = None  # K
    lam: float | None = None  # λ in effect (the calibrated one with "auto")
    target_ratio: float | None = None
    normalization: str | None = None
    phase: str | None = None
    # median over the penalised steps of ‖∇P‖/‖∇L_task‖ (None: none penalised)
    penalty_grad_ratio: float | None = None
    penalised_steps: int | None = None
    importance: dict[str, float] | None = None
    fisher: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def decode(cls, entry: Mapping[str, Any]) -> FisherMetrics:
        return cls(**{f.name: entry.get(f.name) for f in dataclasses.fields(cls)})

    def value(self, axis: str) -> Any:
        """The entry's `lam` or `target_ratio` (a sweep's axis)."""
        return {"lam": self.lam, "target_ratio": self.target_ratio}[axis]


@dataclass(frozen=True, eq=False, kw_only=True)
class RunMetrics(Mapping[str, Any]):
    """One run's metrics.json, in the order it is written. Fields a record lacks (written by
    an older version, or a partial record) are None; `extras` holds every other key: the
    methods' records ("fisher", "adalora", see `methods.record_keys`) and keys this version
    does not know."""

    schema: str | None = None
    status: str | None = None
    run: str
    label: str
    method: str
    task: str | None = None
    model: str | None = None
    model_display: str | None = None
    seed: int
    primary_metric: str | None = None
    best_epoch: int | None = None
    best_eval_acc: float | None = None
    best_eval_mcc: float | None = None
    best_eval_f1: float | None = None
    final_eval_acc: float
    final_eval_f1: float | None = None
    final_eval_mcc: float | None = None
    final_eval_macro_f1: float | None = None
    final_eval_recall: list[float] | None = None
    final_confusion_matrix: list[list[int]] | None = None
    final_eval_loss: float | None = None
    final_train_loss: float | None = None
    final_train_acc: float | None = None
    runtime_sec: float | None = None
    train_time_sec: float | None = None
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    total_steps: int | None = None
    device: str | None = None
    precision: str | None = None
    torch_version: str | None = None
    adapters: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] | None = None
    train_loss_steps: list[float] | None = None
    config: dict[str, Any] | None = None
    notes: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # The record's keys in file order (empty: every field above, then `extras`).
    layout: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.layout:
            object.__setattr__(self, "layout", (*FIELDS, *self.extras))

    # The mapping of the JSON record.
    def __getitem__(self, key: str) -> Any:
        if key not in self.layout:
            raise KeyError(key)
        return getattr(self, key) if key in FIELDS else self.extras[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout)

    def __len__(self) -> int:
        return len(self.layout)

    @property
    def finished(self) -> bool:
        return self.status == COMPLETE

    @property
    def fisher(self) -> FisherMetrics | None:
        """FW-LoRA's entry (None: a run of another method, or none recorded)."""
        entry = self.extras.get(FISHER_KEY)
        return FisherMetrics.decode(entry) if entry else None


FIELDS = tuple(f.name for f in dataclasses.fields(RunMetrics) if f.name not in ("extras", "layout"))


# ------------------------------------------------------------------ the codec
def check_run_metrics(record: Any) -> Mapping[str, Any]:
    """`record` if it has a run record's shape; ValueError naming the first field that is off."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fields = {**RUN_FIELDS, **{k: v for k, v in OPTIONAL_RUN_FIELDS.items() if k in record}}
    for key, kind in fields.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"field {key!r} is {value!r}, not of its type")
    if "epochs" in record and not all(isinstance(h, dict) for h in record["epochs"]):
        raise ValueError("field 'epochs' holds something other than epoch records")
    return record


def decode_run(record: Any) -> RunMetrics:
    """A run's record from its JSON object (a RunMetrics is returned as it is)."""
    if isinstance(record, RunMetrics):
        return record
    check_run_metrics(record)
    return RunMetrics(
        **{k: v for k, v in record.items() if k in FIELDS},
        extras={k: v for k, v in record.items() if k not in FIELDS},
        layout=tuple(record),
    )


def decode_runs(records: Iterable[Any]) -> list[RunMetrics]:
    return [decode_run(r) for r in records]


def encode_run(run: RunMetrics) -> dict[str, Any]:
    """The JSON object of a run's record, its keys in the record's order."""
    return {key: run[key] for key in run.layout}


def run_text(run: RunMetrics) -> str:
    """A run's metrics.json."""
    return json.dumps(encode_run(run), indent=2)


def write_run(run_dir: Path, run: RunMetrics) -> Path:
    path = run_dir / METRICS_FILE
    path.write_text(run_text(run))
    return path


def read_run(path: Path) -> RunMetrics | None:
    """The record in a run's metrics.json, None while the run is unfinished; ValueError for
    a damaged file (see `errors.read_saved`)."""
    record = json.loads(path.read_text())
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if record.get("status") != COMPLETE:
        return None
    return decode_run(record)

"""Run settings: the paper's recipe as defaults, overridable by a YAML/TOML file or flags."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import yaml

from fwlora.harness.errors import HarnessError

METHODS = ("lora", "fw-lora", "adalora")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
# Keys whose change does not alter what a run computes (so --resume accepts them).
NON_RESULT_KEYS = frozenset({"output_dir", "quiet", "overwrite", "resume"})


@dataclass
class RunConfig:
    """Every setting of one training run. Defaults are the paper's recipe (§5)."""

    # What is trained on what.
    method: str = "fw-lora"
    model: str = "roberta-base"
    task: str = "sst2"
    # Local data (task "file"): train/eval files and their columns.
    train_file: str | None = None
    eval_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    eval_fraction: float = 0.2  # held out from train_file when eval_file is not given
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # Adapters: same targets for every method unless overridden.
    target_modules: list[str] = field(
        default_factory=lambda: ["query", "key", "value", "intermediate.dense", "output.dense"]
    )
    rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    budget_percent: float | None = None  # if set, overrides `rank`
    # Fully trained non-adapter modules (None: peft's default, the classification head).
    modules_to_save: list[str] | None = None
    # Optimisation.
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # linear schedule warm-up
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: int = 3
    max_length: int = 128
    truncation_side: str = "right"  # "left" keeps the end of long texts
    seed: int = 42
    precision: str = "auto"  # bf16 on GPU, fp32 on CPU
    device: str = "auto"
    num_threads: int | None = None  # torch CPU threads during the run (None: torch's default)
    # FW-LoRA.
    fisher_warmup: int = 500  # K
    fisher_warmup_fraction: float | None = None  # if set, K = fraction of total steps
    fisher_alpha: float = 0.98
    fisher_lam: float = 1e-4
    fisher_normalization: str = "sum"
    # AdaLoRA (target_r = rank, so the final budget matches LoRA's).
    adalora_init_r_factor: float = 1.5
    adalora_tinit_fraction: float = 0.1
    adalora_tfinal_fraction: float = 0.2
    adalora_delta_t: int = 10
    adalora_orth_reg_weight: float = 0.5
    # Run bookkeeping.
    variant: str | None = None  # label used to group runs (default: method)
    quiet: bool = False

    @property
    def label(self) -> str:
        return self.variant or self.method

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        return validate(dataclasses.replace(self, **changes))


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a .yaml/.yml/.toml/.json file: a flat mapping of RunConfig keys.

    Extra top-level keys `methods` and `seeds` (lists, for `compare`) pass through.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"config file {path}: not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise HarnessError(
                f"config file {path}: unknown format {suffix!r}; use .yaml, .yml, .toml or .json"
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"config file {path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"config file {path}: expected a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(*layers: dict[str, Any] | None) -> RunConfig:
    """RunConfig from defaults, then each layer of overrides in order (None values skipped)."""
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if value is None:
                continue
            if key not in FIELDS:
                raise HarnessError(
                    f"unknown setting {key!r}; known settings: {', '.join(sorted(FIELDS))}"
                )
            values[key] = value
    for key in ("target_modules", "modules_to_save"):
        if isinstance(values.get(key), str):
            values[key] = [m.strip() for m in values[key].split(",") if m.strip()]
    return validate(RunConfig(**values))


def validate(cfg: RunConfig) -> RunConfig:
    """Raises HarnessError naming the setting and its allowed values."""
    _choice("method", cfg.method, METHODS)
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("device", cfg.device, DEVICES)
    _choice("truncation_side", cfg.truncation_side, ("right", "left"))
    _choice("fisher_normalization", cfg.fisher_normalization, ("sum", "max"))
    for name in ("rank", "batch_size", "eval_batch_size", "epochs", "max_length"):
        if int(getattr(cfg, name)) < 1:
            raise HarnessError(f"{name}: expected an integer >= 1, got {getattr(cfg, name)!r}")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise HarnessError(f"num_threads: expected an integer >= 1, got {cfg.num_threads!r}")
    if cfg.fisher_warmup < 1:
        raise HarnessError(f"fisher_warmup: expected an integer >= 1, got {cfg.fisher_warmup!r}")
    if cfg.fisher_warmup_fraction is not None and not 0 < cfg.fisher_warmup_fraction < 1:
        raise HarnessError("fisher_warmup_fraction: expected a number in (0, 1)")
    if not 0.0 < cfg.fisher_alpha < 1.0:
        raise HarnessError("fisher_alpha: expected a number in (0, 1)")
    if cfg.fisher_lam < 0 or cfg.lr <= 0 or cfg.weight_decay < 0:
        raise HarnessError("fisher_lam, lr and weight_decay must be non-negative (lr positive)")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise HarnessError("warmup_ratio: expected a number in [0, 1)")
    if cfg.budget_percent is not None and not 0.0 < cfg.budget_percent < 100.0:
        raise HarnessError("budget_percent: expected a percentage in (0, 100), e.g. 0.2")
    if not cfg.target_modules:
        raise HarnessError("target_modules: expected at least one module name")
    return cfg


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HarnessError(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def load_saved_config(path: Path) -> RunConfig:
    return build_config(yaml.safe_load(path.read_text(encoding="utf-8")))


def result_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings that determine a run's results (for --resume compatibility checks)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NON_RESULT_KEYS}

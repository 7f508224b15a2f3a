"""Run settings: the paper's recipe as defaults, overridable by a YAML/TOML file or flags.

One typed schema (`RunConfig`, a pydantic dataclass) validates every source alike: config
files, flags (which arrive as text) and Python callers. What is unambiguous is coerced (the
text "1e-3", which YAML 1.1 reads as a string, becomes 0.001); anything else is refused with
a `HarnessError` naming the key, the expected type or range, and the value given. The FW-LoRA
options are judged by `fwlora.optim.options.FisherOptions`, their one definition.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from fwlora.harness import methods
from fwlora.harness.errors import HarnessError
from fwlora.optim.calibration import DEFAULT_TARGET_RATIO
from fwlora.optim.options import DEFAULTS as FISHER_DEFAULTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

# The methods, from their one definition each (`methods`): lora, fw-lora, adalora, l2-lora.
METHODS = methods.names()
# Methods trained with FisherAdamW; l2-lora is its uniform control (I_m = 1/M: the same
# penalty path and total weight, no Fisher information).
FISHER_METHODS = tuple(m.name for m in methods.all_methods() if m.fisher)
# The FW-LoRA normalisation a method uses when `fisher_normalization` is not set.
DEFAULT_NORMALIZATION = {m.name: m.normalization for m in methods.all_methods() if m.fisher}
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
TRUNCATION_SIDES = ("right", "left")
EVALUATE = ("every-epoch", "final")
# Keys whose change does not alter what a run computes (so --resume accepts them).
NON_RESULT_KEYS = frozenset({"output_dir", "quiet", "overwrite", "resume"})
# Keys a config file may hold besides RunConfig's: the lists of multi-run commands.
LIST_KEYS = {
    "methods",
    "seeds",
    "lams",
    "target_ratios",
    "normalizations",
    "ks",
    "k",
    "fraction",
    "rank_by",
}


# ------------------------------------------------------------------ field types
def _no_bool(value: Any) -> Any:
    """true/false is not a number (pydantic's lax mode would read it as 1/0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_for_number", "a number (not true/false)")
    return value


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _name_list(value: Any) -> Any:
    """ "a, b" → ["a", "b"]; one number (YAML's `seeds: 42`) → [42]; an empty item ("",
    "a,,b", ",") is refused."""
    if isinstance(value, str):
        value = value.split(",")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (list, tuple)):
        items = [v.strip() if isinstance(v, str) else v for v in value]
        if any(v == "" for v in items):
            raise PydanticCustomError("empty_item", "comma-separated, non-empty items")
        return items
    return value


def one_of(choices: tuple[str, ...] | Callable[[], tuple[str, ...]]) -> AfterValidator:
    """A text field's allowed values: the tuple that is the one list of them, or the function
    that returns it when a value is checked (the registered methods)."""

    def check(value: str) -> str:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            raise PydanticCustomError(
                "literal_error", "one of {expected}", {"expected": ", ".join(map(repr, allowed))}
            )
        return value

    return AfterValidator(check)


def _lam_value(value: Any) -> Any:
    """λ: a number (text "1e-3" too), or "auto" (calibrated to fisher_target_ratio)."""
    if value == "auto":
        return value
    value = _no_bool(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PydanticCustomError("lam_value", 'a number >= 0 or "auto"') from None


# One of the registered methods (checked against the registry when a value is read).
MethodName = Annotated[str, one_of(methods.names)]
Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Text = Annotated[str, BeforeValidator(_path_text)]
Names = Annotated[list[str], BeforeValidator(_name_list)]
Count = Annotated[Int, Field(ge=1)]
Fraction = Annotated[Float, Field(ge=0.0, lt=1.0)]
SCHEMA = ConfigDict(extra="forbid", allow_inf_nan=False)
T = TypeVar("T")


@dataclass(config=SCHEMA)
class RunConfig:
    """Every setting of one training run. Defaults are the paper's recipe (§5)."""

    # What is trained on what.
    method: MethodName = "fw-lora"
    model: Text = "roberta-base"
    task: str = "sst2"
    # Local data (task "file"): train/eval files and their columns.
    train_file: Text | None = None
    eval_file: Text | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    # Held out from train_file when eval_file is not given.
    eval_fraction: Annotated[Float, Field(gt=0.0, lt=1.0)] = 0.2
    max_train_samples: Count | None = None
    max_eval_samples: Count | None = None
    # Adapters: same targets for every method unless overridden.
    target_modules: Annotated[Names, Field(min_length=1)] = field(
        default_factory=lambda: ["query", "key", "value", "intermediate.dense", "output.dense"]
    )
    rank: Count = 8
    lora_alpha: Annotated[Float, Field(gt=0.0)] = 16.0
    lora_dropout: Fraction = 0.0
    # If set, overrides `rank`: a percentage of the backbone, e.g. 0.2.
    budget_percent: Annotated[Float, Field(gt=0.0, lt=100.0)] | None = None
    # Fully trained non-adapter modules (None: peft's default, the classification head).
    modules_to_save: Names | None = None
    # Of the adapted matrices, only these train (qualified backbone names, e.g.
    # "bert.encoder.layer.5.output.dense"); every other adapter stays in the model frozen at
    # zero (B = 0, never updated). Arms of the premise test are so one model with the same
    # initialisation draws and random streams. None: every adapted matrix trains.
    trainable_modules: Names | None = None
    # Optimisation.
    lr: Annotated[Float, Field(gt=0.0)] = 2e-4
    weight_decay: Annotated[Float, Field(ge=0.0)] = 0.01
    warmup_ratio: Fraction = 0.06  # linear schedule warm-up
    batch_size: Count = 32
    eval_batch_size: Count = 64
    epochs: Count = 3
    # "final": evaluate only after the last epoch (no per-epoch curve, best = final).
    evaluate: Annotated[str, one_of(EVALUATE)] = "every-epoch"
    max_length: Count = 128
    # "left" keeps the end of long texts.
    truncation_side: Annotated[str, one_of(TRUNCATION_SIDES)] = "right"
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] = 42
    precision: Annotated[str, one_of(PRECISIONS)] = "auto"  # bf16 on GPU, fp32 on CPU
    device: Annotated[str, one_of(DEVICES)] = "auto"
    num_threads: Count | None = None  # torch CPU threads during the run (None: torch's default)
    # FW-LoRA: types here; defaults and validity from FisherOptions (see _fisher_options).
    fisher_warmup: Int = FISHER_DEFAULTS.warmup  # K
    # If set, K = fraction of total steps.
    fisher_warmup_fraction: Annotated[Float, Field(gt=0.0, lt=1.0)] | None = None
    fisher_alpha: Float = FISHER_DEFAULTS.alpha
    fisher_lam: Annotated[float | str, BeforeValidator(_lam_value)] = FISHER_DEFAULTS.lam
    # fisher_lam "auto" only: ‖∇P‖/‖∇L_task‖ at the calibration step (None: the default).
    fisher_target_ratio: Float | None = None
    # None: "sum" for fw-lora, "uniform" for l2-lora (see `normalization`).
    fisher_normalization: str | None = None
    # AdaLoRA (target_r = rank, so the final budget matches LoRA's).
    adalora_init_r_factor: Annotated[Float, Field(ge=1.0)] = 1.5
    adalora_tinit_fraction: Fraction = 0.1
    adalora_tfinal_fraction: Fraction = 0.2
    adalora_delta_t: Count = 10
    adalora_orth_reg_weight: Annotated[Float, Field(ge=0.0)] = 0.5
    # Run bookkeeping.
    variant: str | None = None  # label used to group runs (default: method)
    quiet: bool = False

    @model_validator(mode="after")
    def _fisher_options(self) -> RunConfig:
        """The FW-LoRA options, judged by their one definition (FisherOptions)."""
        from fwlora.optim.options import FisherOptions

        method = methods.get(self.method)
        if method.fixed_normalization and self.fisher_normalization not in (
            None,
            method.normalization,
        ):
            free = next(
                m.name for m in methods.all_methods() if m.fisher and not m.fixed_normalization
            )
            text = (
                f"invalid `normalization`: {method.name} is {method.fixed_normalization}, so "
                f"its normalization is {method.normalization!r}, not "
                f"{self.fisher_normalization!r}; leave fisher_normalization unset, or use "
                f"method {free} for 'sum'/'max'"
            )
            raise PydanticCustomError("fisher_option", "{text}", {"text": text})
        try:
            FisherOptions(
                warmup=self.fisher_warmup,
                lam=self.fisher_lam,
                target_ratio=self.fisher_target_ratio,
                alpha=self.fisher_alpha,
                normalization=self.normalization,
            )
        except ValueError as exc:
            raise PydanticCustomError("fisher_option", "{text}", {"text": str(exc)}) from None
        return self

    @model_validator(mode="after")
    def _trainable_subset(self) -> RunConfig:
        if self.trainable_modules is not None and not methods.get(self.method).trains_subsets:
            text = (
                f"freezes adapters of plain LoRA runs only; method {self.method!r} "
                "trains every adapter it adds: leave trainable_modules unset or use method lora"
            )
            raise PydanticCustomError("trainable_modules", "{text}", {"text": text})
        return self

    @property
    def label(self) -> str:
        return self.variant or self.method

    @property
    def normalization(self) -> str:
        """The FW-LoRA normalisation this run uses (`fisher_normalization`, else the
        method's default: sum for fw-lora, uniform for l2-lora)."""
        method = methods.lookup(self.method)
        return self.fisher_normalization or (method.normalization if method else "sum")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        return _checked(RunConfig, lambda: dataclasses.replace(self, **changes))


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
# The seeds of a multi-run command when none are given: the run's default seed (`compare`
# has its own, three seeds).
DEFAULT_SEEDS: tuple[int, ...] = (RunConfig.seed,)
# λ = "auto" calibrates to this ‖∇P‖/‖∇L_task‖ when fisher_target_ratio is unset.
UNSET_TARGET_RATIO = DEFAULT_TARGET_RATIO


Item = TypeVar("Item")
# A list field of a multi-run command: a list, comma-separated text or one value.
ListOf = Annotated[list[Item], BeforeValidator(_name_list), Field(min_length=1)]
Seeds = ListOf[Annotated[Int, Field(ge=0, le=2**32 - 1)]]


def _distinct(**lists: list[Any]) -> None:
    """A value given twice in a list is refused by name (before any work: it would run the
    same runs twice)."""
    for key, values in lists.items():
        twice = [v for i, v in enumerate(values) if v in values[:i]]
        if twice:
            text = f"{key}: {twice[0]!r} is given twice; give distinct values"
            raise PydanticCustomError("distinct", "{text}", {"text": text})


@dataclass(config=SCHEMA)
class RunLists:
    """The lists of a multi-run command (`compare`): methods × seeds."""

    methods: ListOf[MethodName]
    seeds: Seeds

    @model_validator(mode="after")
    def _no_repeats(self) -> RunLists:
        _distinct(methods=self.methods, seeds=self.seeds)
        return self


@dataclass(config=SCHEMA)
class SeedLists:
    """The seeds of a command that runs its own design per seed (`targeting`, `demo`)."""

    seeds: Seeds

    @model_validator(mode="after")
    def _no_repeats(self) -> SeedLists:
        _distinct(seeds=self.seeds)
        return self


@dataclass(config=SCHEMA)
class AblationLists:
    """The lists of `fwlora ablation`: for each seed, the K sweep (at the base λ) and the λ
    sweep (at the base K)."""

    seeds: Seeds
    ks: ListOf[Annotated[Int, Field(ge=1)]]
    lams: ListOf[Annotated[Float, Field(ge=0.0)]]

    @model_validator(mode="after")
    def _no_repeats(self) -> AblationLists:
        _distinct(seeds=self.seeds, ks=self.ks, lams=self.lams)
        return self


def _layered(schema: type[T], layers: tuple[dict[str, Any] | None, ...]) -> T:
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in (layer or {}).items() if v is not None})
    return _checked(schema, lambda: schema(**values))


def run_lists(*layers: dict[str, Any] | None) -> RunLists:
    """RunLists from layers in order (e.g. defaults, config file, flags; None values skipped)."""
    return _layered(RunLists, layers)


def ablation_lists(*layers: dict[str, Any] | None) -> AblationLists:
    """AblationLists from layers in order, like `run_lists`."""
    return _layered(AblationLists, layers)


def seed_lists(*layers: dict[str, Any] | None) -> SeedLists:
    """SeedLists from layers in order, like `run_lists`."""
    return _layered(SeedLists, layers)


# ------------------------------------------------------------------ errors
_NUMERIC_ERRORS = frozenset(
    {
        "int_parsing",
        "int_type",
        "int_from_float",
        "float_parsing",
        "float_type",
        "finite_number",
        "bool_for_number",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
    }
)
_EXPECTED = {
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list (or comma-separated text)",
    "too_short": "at least one item",
}
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _walk(annotation: Any, bounds: dict[str, Any], bases: set[type]) -> None:
    """Collects the numeric bounds (ge, gt, le, lt) and base types inside an annotation."""
    if annotation in (int, float):
        bases.add(annotation)
    _bounds(getattr(annotation, "__metadata__", ()), bounds)
    for arg in typing.get_args(annotation):
        _walk(arg, bounds, bases)


def _bounds(metadata: Any, bounds: dict[str, Any]) -> None:
    for item in metadata:
        for constraint in [item, *getattr(item, "metadata", [])]:
            for name, _ in _BOUNDS:
                if getattr(constraint, name, None) is not None:
                    bounds[name] = getattr(constraint, name)


def _range(schema: type, key: str) -> str:
    """The whole allowed range of a numeric field, e.g. 'a number in [0, 1)'."""
    info = getattr(schema, "__pydantic_fields__", {}).get(key)
    bounds: dict[str, Any] = {}
    bases: set[type] = set()
    if info is not None:
        _walk(info.annotation, bounds, bases)
        _bounds(info.metadata, bounds)
    kind = "an integer" if bases == {int} else "a number"
    low = next((b for b in ("ge", "gt") if b in bounds), None)
    high = next((b for b in ("le", "lt") if b in bounds), None)
    if low and high:
        left, right = "[" if low == "ge" else "(", "]" if high == "le" else ")"
        return f"{kind} in {left}{_num(bounds[low])}, {_num(bounds[high])}{right}"
    sign = dict(_BOUNDS)
    return " and ".join(f"{kind} {sign[b]} {_num(bounds[b])}" for b in (low, high) if b) or kind


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe(schema: type, error: Any) -> str:
    """One line for one validation error: key, what was expected, what was given."""
    kind, ctx = error["type"], error.get("ctx") or {}
    key, given = _key(error["loc"]), error.get("input")
    if kind == "trainable_modules":
        return f"trainable_modules: {ctx['text']}"
    if kind == "distinct":
        return str(ctx["text"])
    if kind == "fisher_option":
        match = re.match(r"invalid `(\w+)`: (.*)", ctx["text"], re.S)
        return f"fisher_{match[1]}: {match[2]}" if match else f"FW-LoRA options: {ctx['text']}"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = ", ".join(sorted(f for f in getattr(schema, "__pydantic_fields__", {})))
        return f"unknown setting {key!r}; known settings: {known}"
    if kind == "literal_error":
        choices = ", ".join(re.findall(r"'([^']*)'", ctx.get("expected", "")))
        return f"{key}: unknown value {given!r}; choose one of {choices}"
    if kind in _NUMERIC_ERRORS:
        expected = _range(schema, key.split("[")[0])
        if kind == "finite_number":
            expected += " (finite)"
        elif kind == "bool_for_number":
            expected += " (not true/false)"
    else:
        expected = _EXPECTED.get(kind) or (
            error["msg"] if kind == "empty_item" else error["msg"].lower()
        )
    return f"{key}: expected {expected}, got {given!r}"


def _checked(schema: type, build: Callable[[], T]) -> T:
    """build(); a validation error becomes one HarnessError line (the first error, and how
    many more there are)."""
    try:
        return build()
    except ValidationError as exc:
        lines = [_describe(schema, e) for e in exc.errors(include_url=False)]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise HarnessError(lines[0] + more) from None


# ------------------------------------------------------------------ sources
def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a .yaml/.yml/.toml/.json file: a flat mapping of RunConfig keys.

    Extra top-level keys `methods` and `seeds` (lists, for `compare`) pass through.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"config file {path}: not found")
    try:  # UTF-8, with or without the byte-order mark some editors write
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HarnessError(
            f"config file {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    suffix = path.suffix.lower()
    try:
        if suffix in {".yaml", ".yml"}:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)  # TOML itself refuses a key given twice
        elif suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_json_keys)
        else:
            raise HarnessError(
                f"config file {path}: unknown format {suffix!r}; use .yaml, .yml, .toml or .json"
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise HarnessError(f"config file {path}: cannot parse: {_parse_error(exc)}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"config file {path}: expected a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a mapping key given twice (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {twice[0]!r} is given twice; keep one")
    return dict(pairs)


def _parse_error(exc: Exception) -> str:
    """One line for a parser's error: what it expected, and where (line, column)."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        return f"{exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


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
    return _checked(RunConfig, lambda: RunConfig(**values))


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def load_saved_config(path: Path) -> RunConfig:
    return build_config(yaml.safe_load(path.read_text(encoding="utf-8")))


def result_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings that determine a run's results (for --resume compatibility checks)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in NON_RESULT_KEYS}


# Settings added after experiment.yaml's first format, each with the value every run
# written before it used: a run saved without the key ran with that value. Adding a setting
# means adding it here (with the behaviour it had before), so --resume and merge keep
# accepting older experiments.
ADDED_SETTINGS: dict[str, Any] = {"evaluate": "every-epoch", "trainable_modules": None}
# The experiment.yaml format that first wrote each added setting: a file of an earlier format
# never holds it (format 1: evaluate; format 2: trainable_modules).
SETTING_FORMAT: dict[str, int] = {"evaluate": 2, "trainable_modules": 3}


def with_added_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (a run's settings from an older experiment.yaml or metrics.json) with the
    settings added since it was written, at the value it ran with."""
    return {**saved, **{k: v for k, v in ADDED_SETTINGS.items() if k not in saved}}

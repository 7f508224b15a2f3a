"""`fwlora`: the harness's commands (COMMAND_HELP) — a thin shell over fwlora.harness.

Every flag arrives as text and is validated, with the config file's settings, by the
harness's one schema (`fwlora.harness.config`). Every user error (and a machine's: a full
disk, a read-only folder) ends the command with exit status 2 and one line on stderr, never a
traceback; Ctrl-C exits 130 and SIGTERM 143, each saying what was kept. The harness's
dependencies are imported only when a command runs, so a lean install (`pip install fwlora`)
gets a line naming the extra to install instead of an ImportError.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Top-level modules of the `harness` extra (and of peft's own deps, in case of a broken env).
_HARNESS_MODULES = frozenset(
    {
        "datasets",
        "matplotlib",
        "pandas",
        "pydantic",
        "pydantic_core",
        "scipy",
        "sklearn",
        "transformers",
        "accelerate",
        "yaml",
        "tqdm",
        "huggingface_hub",
    }
)
# A value that argparse would otherwise take for an option: -1e-3, -5, -.5, -inf.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is one `--help` away), and an
    unknown flag is reported by the command it was given to."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        where = self.commands.get(getattr(parsed, "command", ""), self)
        if extra:
            where.error(f"unrecognized arguments: {' '.join(extra)}")
        # An empty value (--rank-by "") would otherwise read as "not given": the default.
        for name, value in vars(parsed).items():
            if isinstance(value, str) and not value.strip():
                flag = "--" + name.replace("_", "-")
                where.error(f"argument {flag}: expected a value, got an empty one")
        return parsed


# Settings a command sets per run (its axes), so not run-option flags of that command.
COMPARE_AXES = ("method", "seed")
ABLATION_AXES = ("method", "seed", "variant")
TARGETING_AXES = ("method", "seed", "variant", "fisher_lam", "fisher_normalization")
SWEEP_AXES = (
    "method",
    "seed",
    "variant",
    "fisher_lam",
    "fisher_target_ratio",
    "fisher_normalization",
)


def _flag_help(methods: tuple[str, ...], target_ratio: float) -> dict[str, str]:
    return {
        "method": f"one of {', '.join(methods)}",
        "model": "hub name, local directory, or minilm-l6 (offline)",
        "task": "sst2, cola, mrpc, qnli, rte, qqp (GLUE), drugreview, drugreview3 (offline) "
        "or file",
        "target_modules": "comma-separated module names",
        "budget_percent": "adapter budget in %% of the backbone (overrides --rank)",
        "evaluate": "every-epoch, or final (evaluate only after the last epoch)",
        "fisher_warmup": "FW-LoRA warm-up steps K",
        "fisher_warmup_fraction": "K as a fraction of the total steps (overrides --fisher-warmup)",
        "fisher_lam": "FW-LoRA shrinkage λ, or auto (calibrated to --fisher-target-ratio)",
        "fisher_target_ratio": "with --fisher-lam auto: ‖∇P‖/‖∇L_task‖ at the first penalised "
        f"step (unset: {target_ratio:g})",
        "fisher_alpha": "FW-LoRA EMA decay α",
        "fisher_normalization": "sum, max or uniform (unset: sum for fw-lora, uniform for l2-lora)",
    }


def _add_run_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per RunConfig setting (default None = keep the config file's or the default).

    Values stay text here: the schema converts and checks them, like a config file's."""
    from fwlora.harness.config import UNSET_TARGET_RATIO, RunConfig
    from fwlora.harness.methods import names

    helps = _flag_help(names(), UNSET_TARGET_RATIO)
    group = parser.add_argument_group("run settings (defaults: the paper's recipe)")
    group.add_argument("--config", help="YAML/TOML/JSON file of settings (flags override it)")
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = helps.get(f.name, "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if str(f.type) == "bool":
            group.add_argument(flag, action="store_true", default=None, help="no progress bars")
        else:
            group.add_argument(flag, default=None, metavar=f.name.upper(), help=help_text)


def _add_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("-o", "--output", default=default, help=f"default: {default}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite", action="store_true", help="replace an existing output that fwlora wrote"
    )
    mode.add_argument("--resume", action="store_true", help="continue an interrupted output")


def _margin(text: str) -> float:
    """--equivalence-margin: a finite number > 0 (argparse names the flag on error)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a finite number > 0 in the metric's units (e.g. 0.01 accuracy), got {text!r}"
        )
    return value


def _add_margin_option(parser: argparse.ArgumentParser) -> None:
    from fwlora.harness.stats import DEFAULT_MARGIN

    parser.add_argument(
        "--equivalence-margin",
        type=_margin,
        default=DEFAULT_MARGIN,
        metavar="M",
        help="paired comparisons: ±M is 'no practical difference' for the equivalence test "
        "(TOST); each comparison is then different, equivalent or inconclusive "
        f"(default: {DEFAULT_MARGIN:g}, in accuracy / macro-F1 units)",
    )


def _listed(values: Any) -> str:
    """A default list as its flag takes it: `42,43,44`, `1e-4,1e-2` (a float in short
    e-notation)."""

    def one(value: Any) -> str:
        if isinstance(value, float):
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return str(value)

    return ",".join(one(v) for v in values)


def _overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    from fwlora.harness.config import FIELDS

    names = set(FIELDS) - set(skip)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _version_line() -> str:
    """From the installed distribution's metadata (no import of the package's torch side)."""
    from importlib import metadata

    try:
        return f"fwlora {metadata.version('fwlora')}"
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        from fwlora._core import __version__

        return f"fwlora {__version__}"


# Every command: its one line of help and the extra whose dependencies it needs. The top-level
# --help is printed from this table without importing the harness (or torch), so a lean
# install (`pip install fwlora`) sees every command and what to install for it.
COMMAND_HELP = {
    "train": ("one run (one method, one seed)", "harness"),
    "compare": ("methods × seeds with identical settings", "harness"),
    "sweep": ("methods × λ × normalisation × seeds (fw-lora vs its l2-lora control)", "harness"),
    "ablation": ("the paper's FW-LoRA ablations: K, λ, no Fisher term", "harness"),
    "merge": ("several finished experiments as one (e.g. a sweep split by seeds)", "harness"),
    "targeting": (
        "the premise test: LoRA on the TOP-k matrices by F_m against matched controls",
        "harness",
    ),
    "report": ("static results page (index.html + images/)", "harness"),
    "demo": ("offline LoRA vs FW-LoRA on drug reviews (≈ minutes)", "all"),
}
DESCRIPTION = "Fisher-Weighted LoRA experiments: runs, artefacts, figures and a report."


def top_level_help() -> str:
    """`fwlora --help`, from COMMAND_HELP alone."""
    width = max(map(len, COMMAND_HELP))
    lines = [
        "usage: fwlora [-h] [--version] COMMAND ...",
        "",
        DESCRIPTION,
        "",
        'commands (each needs its extra: pip install "fwlora[EXTRA]"):',
    ]
    for name, (text, extra) in COMMAND_HELP.items():
        lines.append(f"  {name.ljust(width)}  {text} [{extra}]")
    lines += [
        "",
        "options:",
        "  -h, --help  show this help message and exit",
        "  --version   print the version and exit",
        "",
        "fwlora COMMAND --help: the command's options.",
    ]
    return "\n".join(lines)


def _seeds_help() -> str:
    from fwlora.harness.config import DEFAULT_SEEDS

    return f"comma-separated (default: {_listed(DEFAULT_SEEDS)})"


# Adds one command's subparser (by name, with argparse's keywords) and returns it.
Command = Callable[..., argparse.ArgumentParser]


def _train_command(command: Command) -> None:
    train = command("train", help=COMMAND_HELP["train"][0])
    _add_output_options(train, "fwlora-train")
    _add_run_options(train)


def _compare_command(command: Command) -> None:
    from fwlora.harness.experiment import COMPARE_METHODS, COMPARE_SEEDS

    compare = command("compare", help=COMMAND_HELP["compare"][0])
    _add_output_options(compare, "fwlora-compare")
    compare.add_argument("--methods", help=f"comma-separated (default: {_listed(COMPARE_METHODS)})")
    compare.add_argument("--seeds", help=f"comma-separated (default: {_listed(COMPARE_SEEDS)})")
    _add_margin_option(compare)
    _add_run_options(compare, skip=COMPARE_AXES)


def _sweep_command(command: Command) -> None:
    from fwlora.harness.sweep import (
        DEFAULT_LAMS,
        DEFAULT_METHODS,
        DEFAULT_NORMALIZATIONS,
        GRID_NORMALIZATIONS,
    )

    sweep = command(
        "sweep",
        help=COMMAND_HELP["sweep"][0],
        description="Runs every method at every λ (fw-lora also at every normalisation) for "
        "every seed, then draws sweep_lambda_curve and tests fw-lora against l2-lora at each "
        "λ. Labels: lora, fw-lora-sum-lam0.01, l2-lora-lam0.01. --resume skips finished runs.",
    )
    _add_output_options(sweep, "fwlora-sweep")
    sweep.add_argument("--methods", help=f"comma-separated (default: {_listed(DEFAULT_METHODS)})")
    strength = sweep.add_mutually_exclusive_group()
    strength.add_argument("--lams", help=f"comma-separated λ (default: {_listed(DEFAULT_LAMS)})")
    strength.add_argument(
        "--target-ratios",
        help="instead of --lams: comma-separated ‖∇P‖/‖∇L_task‖ targets in (0, 10], λ = auto "
        "calibrated to each at the first penalised step (labels ...-tr0.1)",
    )
    sweep.add_argument(
        "--normalizations",
        help=f"fw-lora's, comma-separated: {', '.join(GRID_NORMALIZATIONS)} "
        f"(default: {_listed(DEFAULT_NORMALIZATIONS)})",
    )
    sweep.add_argument("--seeds", help=_seeds_help())
    _add_margin_option(sweep)
    _add_run_options(sweep, skip=SWEEP_AXES)


def _ablation_command(command: Command) -> None:
    from fwlora.harness.experiment import ABLATION_KS, ABLATION_LAMS

    ablation = command("ablation", help=COMMAND_HELP["ablation"][0])
    _add_output_options(ablation, "fwlora-ablation")
    ablation.add_argument("--seeds", help=_seeds_help())
    ablation.add_argument("--ks", help=f"comma-separated K (default: {_listed(ABLATION_KS)})")
    ablation.add_argument("--lams", help=f"comma-separated λ (default: {_listed(ABLATION_LAMS)})")
    _add_run_options(ablation, skip=ABLATION_AXES)


def _merge_command(command: Command) -> None:
    merge = command(
        "merge",
        help=COMMAND_HELP["merge"][0],
        description="Copies the runs of each EXPERIMENT_DIR (without checkpoints) into one "
        "experiment folder and writes its artefacts, λ-sweep tests and figures anew. Only "
        "the seed may differ between runs of the same method/variant.",
    )
    merge.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR")
    merge.add_argument("-o", "--output", required=True, help="the merged experiment folder")
    merge.add_argument(
        "--overwrite", action="store_true", help="replace an existing output that fwlora wrote"
    )
    _add_margin_option(merge)


def _targeting_command(command: Command) -> None:
    from fwlora.harness.targeting import DEFAULT_RANK_BY

    targeting = command(
        "targeting",
        help=COMMAND_HELP["targeting"][0],
        description="Per seed: a K-step FW-LoRA warm-up ranks the adapted matrices by F_m "
        "(or F_m/(in·out)); one model adapts every matrix and, arm by arm, trains only k of "
        "them (the rest frozen at zero): the k highest (TOP), k random ones with TOP's LoRA "
        "parameter count within 5% (RANDOM), TOP's count per module type in random layers "
        "(TYPE), TOP's count per layer with random types (LAYER), the k lowest (BOTTOM). TOP "
        "minus each is reported with its 95% interval, an equivalence test and a verdict. "
        "Writes targeting.json and figures/targeting_accuracy.* beside the experiment.",
    )
    _add_output_options(targeting, "fwlora-targeting")
    size = targeting.add_mutually_exclusive_group()
    size.add_argument("--k", type=int, help="matrices per set")
    size.add_argument("--fraction", type=float, help="k as a fraction of the adapted matrices")
    targeting.add_argument("--seeds", help=_seeds_help())
    targeting.add_argument(
        "--rank-by",
        help="fisher (F_m), per-weight (F_m/(in·out)), or both "
        f"(default: {_listed(DEFAULT_RANK_BY)})",
    )
    _add_margin_option(targeting)
    _add_run_options(targeting, skip=TARGETING_AXES)


def _report_command(command: Command) -> None:
    report = command("report", help=COMMAND_HELP["report"][0])
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="experiment directories")
    report.add_argument("-o", "--output", help="a folder (default: RUN_DIR/report, first RUN_DIR)")
    report.add_argument("--title", help="page title (default: from the runs)")
    report.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder holding files fwlora report did not write",
    )


def _demo_command(command: Command) -> None:
    from fwlora.harness.demo import DEMO_SETTINGS

    demo = command("demo", help=COMMAND_HELP["demo"][0])
    _add_output_options(demo, "fwlora-demo")
    demo.add_argument("--seeds", help=_seeds_help())
    demo.add_argument("--epochs", help=f"default: {DEMO_SETTINGS['epochs']}")
    demo.add_argument("--max-length", help=f"default: {DEMO_SETTINGS['max_length']}")
    demo.add_argument("--quiet", action="store_true", default=None, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fwlora",
        description=DESCRIPTION,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--version", action="version", version=_version_line(), help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser.commands[name] = sub.add_parser(name, allow_abbrev=False, **kwargs)
        return parser.commands[name]

    for add in (
        _train_command,
        _compare_command,
        _sweep_command,
        _ablation_command,
        _merge_command,
        _targeting_command,
        _report_command,
        _demo_command,
    ):
        add(command)
    return parser


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings (of every subcommand) that take one value."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= _value_options(child)
        elif action.option_strings and action.nargs is None:
            found.update(action.option_strings)
    return found


def _join_negative_numbers(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--lr -1e-3` → `--lr=-1e-3`: argparse takes "-1e-3" for an option and would answer
    "expected one argument"; joined, the schema sees the value and names what is wrong."""
    options = _value_options(parser)
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in options and i + 1 < len(argv) and _NEGATIVE_NUMBER.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _finish(exp, started: float, write_report: bool = True, extra: str = "") -> None:
    from fwlora.harness import build_report, summary_table
    from fwlora.harness.errors import Interrupted
    from fwlora.harness.progress import write_line

    def out(text: str) -> None:  # a reader that has gone (`| head`) stops nothing here
        write_line(text, "stdout")

    out("")
    out(summary_table(exp))
    if extra:
        out(extra)
    if write_report:
        try:
            index = build_report([exp.out_dir], exp.out_dir / "report")
        except KeyboardInterrupt:
            raise Interrupted(
                f"the experiment is complete in {exp.out_dir}, but its report was not "
                f"written; write it with `fwlora report {exp.out_dir}`"
            ) from None
        out(f"\nreport: {index}")
    out(
        f"artefacts: {exp.out_dir} (metrics.json, aggregated_metrics.json, "
        f"significance_tests.json, figures/)"
    )
    out(f"wall time: {time.perf_counter() - started:.1f} s")


def cmd_train(args) -> None:
    from fwlora.harness.experiment import config_from, run_experiment

    cfg = config_from(args.config, _overrides(args))
    started = time.perf_counter()
    exp = run_experiment([cfg], Path(args.output), args.overwrite, args.resume)
    _finish(exp, started)


def cmd_compare(args) -> None:
    from fwlora.harness.config import read_config_file, run_lists
    from fwlora.harness.experiment import (
        COMPARE_METHODS,
        COMPARE_SEEDS,
        config_from,
        plan_compare,
        run_experiment,
    )

    file = read_config_file(args.config) if args.config else {}
    lists = run_lists(
        {"methods": list(COMPARE_METHODS), "seeds": list(COMPARE_SEEDS)},
        {"methods": file.get("methods"), "seeds": file.get("seeds")},
        {"methods": args.methods, "seeds": args.seeds},
    )
    base = config_from(args.config, _overrides(args, skip=COMPARE_AXES))
    started = time.perf_counter()
    exp = run_experiment(
        plan_compare(base, lists.methods, lists.seeds),
        Path(args.output),
        args.overwrite,
        args.resume,
        margin=args.equivalence_margin,
    )
    _finish(exp, started)


def cmd_sweep(args) -> None:
    from fwlora.harness.config import read_config_file
    from fwlora.harness.experiment import config_from, run_experiment
    from fwlora.harness.sweep import plan_grid, sweep_lists, write_sweep

    file = read_config_file(args.config) if args.config else {}
    lists = sweep_lists(
        file,
        methods=args.methods,
        seeds=args.seeds,
        lams=args.lams,
        target_ratios=args.target_ratios,
        normalizations=args.normalizations,
    )
    base = config_from(args.config, _overrides(args, skip=SWEEP_AXES))
    started = time.perf_counter()
    configs = plan_grid(
        base,
        lists["methods"],
        lists["lams"] or (),
        lists["normalizations"],
        lists["seeds"],
        target_ratios=lists["target_ratios"],
    )
    exp = run_experiment(
        configs, Path(args.output), args.overwrite, args.resume, margin=args.equivalence_margin
    )
    extra = write_sweep(exp.out_dir, args.equivalence_margin)
    _finish(exp, started, extra=extra)


def cmd_ablation(args) -> None:
    from fwlora.harness.config import DEFAULT_SEEDS, ablation_lists, read_config_file
    from fwlora.harness.experiment import (
        ABLATION_KS,
        ABLATION_LAMS,
        config_from,
        plan_sweep,
        run_experiment,
    )

    file = read_config_file(args.config) if args.config else {}
    keys = ("seeds", "ks", "lams")
    lists = ablation_lists(
        {"seeds": list(DEFAULT_SEEDS), "ks": list(ABLATION_KS), "lams": list(ABLATION_LAMS)},
        {k: file.get(k) for k in keys},
        {k: getattr(args, k) for k in keys},
    )
    base = config_from(args.config, _overrides(args, skip=ABLATION_AXES))
    started = time.perf_counter()
    exp = run_experiment(
        plan_sweep(base, lists.seeds, lists.ks, lists.lams),
        Path(args.output),
        args.overwrite,
        args.resume,
    )
    _finish(exp, started)


def cmd_merge(args) -> None:
    from fwlora.harness.merge import merge_experiments

    started = time.perf_counter()
    exp, extra = merge_experiments(
        args.experiments, Path(args.output), args.overwrite, margin=args.equivalence_margin
    )
    _finish(exp, started, extra=extra)


def cmd_targeting(args) -> None:
    from fwlora.harness.config import DEFAULT_SEEDS, read_config_file, seed_lists
    from fwlora.harness.experiment import config_from
    from fwlora.harness.progress import say
    from fwlora.harness.targeting import DEFAULT_FRACTION, rankings, run_targeting, summary_lines

    file = read_config_file(args.config) if args.config else {}
    seeds = seed_lists(
        {"seeds": list(DEFAULT_SEEDS)}, {"seeds": file.get("seeds")}, {"seeds": args.seeds}
    ).seeds
    rank_by = rankings(args.rank_by or file.get("rank_by"))
    k = args.k if args.k is not None else file.get("k")
    fraction = args.fraction if args.fraction is not None else file.get("fraction")
    if k is None and fraction is None:
        fraction = DEFAULT_FRACTION
    base = config_from(args.config, _overrides(args, skip=TARGETING_AXES))
    started = time.perf_counter()
    exp, doc = run_targeting(
        base,
        list(seeds),
        k,
        fraction,
        rank_by,
        Path(args.output),
        args.overwrite,
        args.resume,
        progress=lambda text: say(f"[targeting] {text}"),
        margin=args.equivalence_margin,
    )
    _finish(exp, started, extra="\n".join(summary_lines(doc)))


def cmd_report(args) -> None:
    from fwlora.harness import build_report
    from fwlora.harness.errors import HarnessError
    from fwlora.harness.progress import write_line

    output = Path(args.output) if args.output else Path(args.run_dirs[0]) / "report"
    try:
        index = build_report(args.run_dirs, output, title=args.title, overwrite=args.overwrite)
    except OSError as exc:
        raise HarnessError(
            f"-o {output}: cannot write the report there ({exc.strerror or exc})"
        ) from None
    write_line(f"report: {index}", "stdout")


def cmd_demo(args) -> None:
    from fwlora.harness.config import seed_lists
    from fwlora.harness.demo import DEMO_SETTINGS, demo_config, run_demo
    from fwlora.harness.progress import write_line

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = {
        k: v
        for k, v in (
            ("epochs", args.epochs),
            ("max_length", args.max_length),
            ("quiet", args.quiet),
        )
        if v is not None
    }
    seeds = seed_lists({"seeds": [demo_config(overrides).seed]}, {"seeds": args.seeds}).seeds
    started = time.perf_counter()
    exp = run_demo(Path(args.output), overrides, seeds, args.overwrite, args.resume)
    run = next((r for r in exp.runs if r.fisher), None)
    if run is not None and run.fisher is not None:
        write_line(
            f"\nFW-LoRA warm-up: K = {run.fisher.warmup_steps} of {run.total_steps} steps "
            f"({DEMO_SETTINGS['fisher_warmup_fraction']:.0%} of the run: the paper's K = 500 "
            "exceeds this small run); importances frozen after step K "
            f"(phase at end: {run.fisher.phase}).",
            "stdout",
        )
    _finish(exp, started)


COMMANDS = {
    "train": cmd_train,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "ablation": cmd_ablation,
    "merge": cmd_merge,
    "targeting": cmd_targeting,
    "report": cmd_report,
    "demo": cmd_demo,
}


def _missing_extra(exc: ModuleNotFoundError, command: str | None = None) -> int:
    """Exit status 2 with the install line of `command`'s extra when one of its dependencies
    is missing; re-raise otherwise."""
    root = (exc.name or "").split(".")[0]
    if root not in _HARNESS_MODULES:
        raise exc
    extra = COMMAND_HELP.get(command or "", ("", "harness"))[1]
    who = f"fwlora {command}" if command in COMMAND_HELP else "the fwlora commands"
    print(
        f'{who} needs `pip install "fwlora[{extra}]"` (missing: {root})',
        file=sys.stderr,
    )
    return 2


@contextlib.contextmanager
def _sigterm_as_interrupt(received: list[int]):
    """SIGTERM (a cluster's pre-emption, `kill`) stops a command like Ctrl-C: what is worth
    keeping is kept for --resume. The signal's number is appended to `received`."""

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Answered without the harness (or torch): a lean install has them too, at once.
    if argv == ["--version"]:
        print(_version_line())
        return 0
    if argv in ([], ["-h"], ["--help"]):
        print(top_level_help(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command = next((a for a in argv if a in COMMAND_HELP), None)
    try:
        from fwlora.harness.errors import HarnessError, Interrupted

        parser = build_parser()
    except ModuleNotFoundError as exc:
        return _missing_extra(exc, command)
    argv = _join_negative_numbers(parser, argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, its line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    name = f"fwlora {args.command}"
    received: list[int] = []
    try:
        with _sigterm_as_interrupt(received):
            COMMANDS[args.command](args)
    except ModuleNotFoundError as exc:
        return _missing_extra(exc, args.command)
    except HarnessError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # a write outside the harness's own lines (which never raise this)
        from fwlora.harness.progress import detach

        detach("stdout")
        return 141  # 128 + SIGPIPE: what a shell reports for a process a closed pipe stopped
    except OSError as exc:
        from fwlora.harness.errors import environment_error

        problem = environment_error(exc)
        if problem is None:
            raise
        print(f"{name}: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if received else "interrupted"
        detail = f"; {exc.message}" if isinstance(exc, Interrupted) else ""
        print(f"\n{name}: {how}{detail}", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fwlora`: train / compare / sweep / report / demo — a thin shell over fwlora.harness."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from fwlora.harness.config import METHODS, RunConfig

_FLAG_HELP = {
    "method": f"one of {', '.join(METHODS)}",
    "model": "hub name, local directory, or minilm-l6 (offline)",
    "task": "sst2, cola, mrpc, qnli, rte, qqp (GLUE), drugreview (offline) or file",
    "target_modules": "comma-separated module names",
    "budget_percent": "adapter budget in %% of the backbone (overrides --rank)",
    "fisher_warmup": "FW-LoRA warm-up steps K",
    "fisher_warmup_fraction": "K as a fraction of the total steps (overrides --fisher-warmup)",
    "fisher_lam": "FW-LoRA shrinkage λ",
    "fisher_alpha": "FW-LoRA EMA decay α",
}


def _parse_type(annotation: str):
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str, "list[str]": str}[base]


def _add_run_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per RunConfig setting (default None = keep the config file's or the default)."""
    group = parser.add_argument_group("run settings (defaults: the paper's recipe)")
    group.add_argument("--config", help="YAML/TOML/JSON file of settings (flags override it)")
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(RunConfig(), f.name)
        help_text = _FLAG_HELP.get(f.name, "")
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if f.type == "bool":
            group.add_argument(flag, action="store_true", default=None, help="no progress bars")
        else:
            group.add_argument(flag, type=_parse_type(str(f.type)), default=None, help=help_text)


def _add_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("-o", "--output", default=default, help=f"default: {default}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing output")
    mode.add_argument("--resume", action="store_true", help="continue an interrupted output")


def _overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(RunConfig)} - set(skip)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fwlora",
        description="Fisher-Weighted LoRA experiments: runs, artefacts, figures and a report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="one run (one method, one seed)")
    _add_output_options(train, "fwlora-train")
    _add_run_options(train)

    compare = sub.add_parser("compare", help="methods × seeds with identical settings")
    _add_output_options(compare, "fwlora-compare")
    compare.add_argument("--methods", type=_str_list, help="default: lora,fw-lora,adalora")
    compare.add_argument("--seeds", type=_int_list, help="default: 42,43,44")
    _add_run_options(compare, skip=("method", "seed"))

    sweep = sub.add_parser("sweep", help="the paper's ablations: K, λ, no Fisher term")
    _add_output_options(sweep, "fwlora-sweep")
    sweep.add_argument("--seeds", type=_int_list, help="default: 42")
    sweep.add_argument("--ks", type=_int_list, default=[300, 500, 800], help="default: 300,500,800")
    sweep.add_argument(
        "--lams",
        type=_float_list,
        default=[5e-5, 1e-4, 2e-4, 5e-4],
        help="default: 5e-5,1e-4,2e-4,5e-4",
    )
    _add_run_options(sweep, skip=("method", "seed", "variant"))

    report = sub.add_parser("report", help="static results page (index.html + images/)")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="experiment directories")
    report.add_argument("-o", "--output", help="default: RUN_DIR/report (first RUN_DIR)")
    report.add_argument("--title", help="page title (default: from the runs)")

    demo = sub.add_parser("demo", help="offline LoRA vs FW-LoRA on drug reviews (≈ minutes)")
    _add_output_options(demo, "fwlora-demo")
    demo.add_argument("--seeds", type=_int_list, help="default: 42")
    demo.add_argument("--epochs", type=int, help="default: 3")
    demo.add_argument("--max-length", type=int, help="default: 48")
    demo.add_argument("--quiet", action="store_true", default=None, help="no progress bars")
    return parser


def _finish(exp, started: float, write_report: bool = True) -> None:
    from fwlora.harness import build_report, summary_table

    print()
    print(summary_table(exp))
    if write_report:
        index = build_report([exp.out_dir], exp.out_dir / "report")
        print(f"\nreport: {index}")
    print(
        f"artefacts: {exp.out_dir} (metrics.json, aggregated_metrics.json, "
        f"significance_tests.json, figures/)"
    )
    print(f"wall time: {time.perf_counter() - started:.1f} s")


def cmd_train(args) -> None:
    from fwlora.harness.experiment import config_from, run_experiment

    cfg = config_from(args.config, _overrides(args))
    started = time.perf_counter()
    exp = run_experiment([cfg], Path(args.output), args.overwrite, args.resume)
    _finish(exp, started)


def cmd_compare(args) -> None:
    from fwlora.harness.config import read_config_file
    from fwlora.harness.experiment import config_from, plan_compare, run_experiment

    file = read_config_file(args.config) if args.config else {}
    methods = args.methods or file.get("methods") or ["lora", "fw-lora", "adalora"]
    seeds = args.seeds or file.get("seeds") or [42, 43, 44]
    for method in methods:
        if method not in METHODS:
            from fwlora.harness import HarnessError

            raise HarnessError(
                f"methods: unknown method {method!r}; choose from {', '.join(METHODS)}"
            )
    base = config_from(args.config, _overrides(args, skip=("method", "seed")))
    started = time.perf_counter()
    exp = run_experiment(
        plan_compare(base, methods, seeds), Path(args.output), args.overwrite, args.resume
    )
    _finish(exp, started)


def cmd_sweep(args) -> None:
    from fwlora.harness.config import read_config_file
    from fwlora.harness.experiment import config_from, plan_sweep, run_experiment

    file = read_config_file(args.config) if args.config else {}
    seeds = args.seeds or file.get("seeds") or [42]
    base = config_from(args.config, _overrides(args, skip=("method", "seed", "variant")))
    started = time.perf_counter()
    exp = run_experiment(
        plan_sweep(base, seeds, args.ks, args.lams), Path(args.output), args.overwrite, args.resume
    )
    _finish(exp, started)


def cmd_report(args) -> None:
    from fwlora.harness import build_report

    output = Path(args.output) if args.output else Path(args.run_dirs[0]) / "report"
    index = build_report(args.run_dirs, output, title=args.title)
    print(f"report: {index}")


def cmd_demo(args) -> None:
    from fwlora.harness.demo import DEMO_SETTINGS, run_demo

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
    started = time.perf_counter()
    exp = run_demo(Path(args.output), overrides, args.seeds, args.overwrite, args.resume)
    fisher = [r["fisher"] for r in exp.runs if r.get("fisher")]
    if fisher:
        run = next(r for r in exp.runs if r.get("fisher"))
        print(
            f"\nFW-LoRA warm-up: K = {fisher[0]['warmup_steps']} of {run['total_steps']} steps "
            f"({DEMO_SETTINGS['fisher_warmup_fraction']:.0%} of the run: the paper's K = 500 "
            "exceeds this small run); importances frozen after step K "
            f"(phase at end: {fisher[0]['phase']})."
        )
    _finish(exp, started)


COMMANDS = {
    "train": cmd_train,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    from fwlora.harness.errors import HarnessError

    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"fwlora {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nfwlora {args.command}: interrupted; the last finished epoch is checkpointed, "
            "continue with the same command plus --resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

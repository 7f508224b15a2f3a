"""The experiment harness behind the `fwlora` CLI: runs, artefacts, figures, report.

    from fwlora.harness import build_config, plan_compare, run_experiment, build_report
    base = build_config({"model": "minilm-l6", "task": "drugreview"})
    exp = run_experiment(plan_compare(base, ["lora", "fw-lora"], [42, 43]), "out")
    build_report(["out"], "out/site")

Each module has one job; ARCHITECTURE.md (at the repository root) is the map of them. The
tiny offline model and data of the tests live in tests/tiny.py.
"""

from fwlora.harness.config import METHODS, RunConfig, build_config, read_config_file
from fwlora.harness.data import TASKS, load_task
from fwlora.harness.demo import run_demo
from fwlora.harness.errors import HarnessError
from fwlora.harness.experiment import (
    Experiment,
    load_experiment,
    plan_compare,
    plan_sweep,
    run_experiment,
    summary_table,
)
from fwlora.harness.quiet import quiet_import_probes
from fwlora.harness.report import build_report
from fwlora.harness.train import train_run

# Importing the harness imports no peft, so this comes before peft (and bitsandbytes) load.
quiet_import_probes()

__all__ = [
    "METHODS",
    "TASKS",
    "Experiment",
    "HarnessError",
    "RunConfig",
    "build_config",
    "build_report",
    "load_experiment",
    "load_task",
    "plan_compare",
    "plan_sweep",
    "read_config_file",
    "run_demo",
    "run_experiment",
    "summary_table",
    "train_run",
]

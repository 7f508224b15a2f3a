"""A tiny fixed-seed FW-LoRA run, bit for bit: per-step losses, final metrics and the frozen
importances. Refactors of the optimizer or the run loop must leave it unchanged (runs made
before and after belong to one study). Regenerate only for an intended change in results:
`python tests/harness/test_golden_run.py --write` (and say why in the commit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "golden_run.json"
KEYS = ("train_loss_steps", "final_eval_acc", "final_eval_loss", "final_eval_macro_f1")


def golden_run(tmp: Path) -> dict:
    from fwlora.harness.config import build_config
    from fwlora.harness.experiment import run_experiment
    from tiny import tiny_settings

    settings = tiny_settings(tmp)
    cfg = build_config(settings, {"method": "fw-lora", "seed": 7, "epochs": 2, "fisher_lam": 0.5})
    run = run_experiment([cfg], tmp / "out").runs[0]
    out = {k: run[k] for k in KEYS}
    out["importance"] = run["fisher"]["importance"]
    out["fisher"] = run["fisher"]["fisher"]
    out["penalty_grad_ratio"] = run["fisher"]["penalty_grad_ratio"]
    return json.loads(json.dumps(out))  # floats as JSON keeps them (repr round-trips)


def test_the_golden_run_is_bit_identical(tmp_path):
    assert golden_run(tmp_path) == json.loads(GOLDEN.read_text())


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny.py
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(golden_run(Path(tmp)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")

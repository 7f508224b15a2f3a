"""Smoke test of an installed fwlora wheel, run in the venv the wheel was installed into.

    python tests/smoke_wheel.py --lean      # `pip install fwlora-*.whl` (torch, numpy, peft)
    python tests/smoke_wheel.py --harness   # `pip install "fwlora-*.whl[harness]"`
    python tests/smoke_wheel.py --core      # `pip install --no-deps fwlora-*.whl numpy`: for
                                            # platforms torch ships no wheels for (musllinux,
                                            # macOS x86_64), the compiled core alone

Shared by `make test-wheel` (a fresh venv on this machine) and the release workflow (one
job per wheel, .github/workflows/release.yml). It checks what a broken package would break:
the compiled core loads from site-packages, the version is the same everywhere, a FisherAdamW
warm-up step and a penalised step run on a tiny LoRA model, and the `fwlora` command starts
(or, without the harness, names the extra to install). It needs no network and no test
dependency, so it is not a pytest file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import shutil
import subprocess
import sys
from pathlib import Path

# Modules that the `harness` extra brings (tests/test_lean_install.py keeps the same list).
HARNESS_ONLY = ("datasets", "matplotlib", "pandas", "pydantic", "scipy", "sklearn")


def check_install() -> str:
    import fwlora
    from fwlora import _core  # noqa: PLC2701  (the compiled module itself is under test)

    for module in (fwlora, _core):
        where = Path(module.__file__ or "")
        assert "site-packages" in where.parts, f"{module.__name__} imported from {where}"
    metadata = importlib.metadata.version("fwlora")
    assert fwlora.__version__ == metadata, (fwlora.__version__, metadata)
    return metadata


def tiny_lora_net():
    """A two-layer MLP with LoRA (r = 2, random B: the penalty acts at once) on both layers;
    needs only the lean install (torch, peft)."""
    import torch
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(torch.relu(self.up(x)))

    torch.manual_seed(0)
    config = LoraConfig(r=2, target_modules=["up", "down"], init_lora_weights=False)
    return get_peft_model(Net(), config)


def check_optimizer() -> None:
    """One warm-up step (K = 1), then one penalised step on the tiny LoRA model."""
    import torch

    from fwlora import FisherAdamW

    model = tiny_lora_net()
    optimizer = FisherAdamW(model, lr=1e-2, warmup=1, lam=0.5)
    x = torch.randn(6, 8)
    phases = []
    for _ in range(2):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        phases.append(optimizer.phase)
    assert phases == ["frozen", "frozen"], phases
    importance = optimizer.importance
    assert importance is not None and len(importance) == 2, importance
    assert math.isclose(sum(importance.values()), 1.0, rel_tol=1e-9), importance
    ratios = optimizer.penalty_grad_ratios()
    assert len(ratios) == 1 and ratios[0] > 0, ratios  # the second step was penalised
    penalty = float(optimizer.penalty_value())
    assert math.isfinite(penalty) and penalty > 0, penalty


def check_core_alone() -> str:
    """The compiled core loaded straight from the installed file (`import fwlora` needs
    torch), and one warm-up observation that freezes the importances."""
    import numpy as np

    dist = importlib.metadata.distribution("fwlora")
    binary = next(f for f in dist.files or [] if f.name.startswith("_core."))
    where = Path(str(dist.locate_file(binary)))
    assert "site-packages" in where.parts, where
    spec = importlib.util.spec_from_file_location("fwlora._core", where)
    assert spec is not None and spec.loader is not None, where
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    assert core.__version__ == dist.version, (core.__version__, dist.version)
    state = core.FisherCore(2, warmup=1)
    state.observe(np.array([1.0, 3.0]))
    state.advance()
    assert state.phase == "frozen", state.phase
    assert np.allclose(state.importance, [0.25, 0.75]), state.importance
    return dist.version


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = shutil.which("fwlora", path=str(Path(sys.executable).parent))
    assert command, f"no `fwlora` command beside {sys.executable}"
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=300)


def check_cli(version: str, harness: bool) -> None:
    shown = run_cli("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"fwlora {version}", shown
    helped = run_cli("--help")  # the list of commands and their extras, lean install too
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "demo" in helped.stdout and "train" in helped.stdout, helped.stdout
    assert "[harness]" in helped.stdout and "[all]" in helped.stdout, helped.stdout
    if not harness:
        demo = run_cli("demo", "-o", "never-written")
        assert demo.returncode == 2, (demo.returncode, demo.stderr[-2000:])
        assert 'pip install "fwlora[all]"' in demo.stderr, demo.stderr
        assert "Traceback" not in demo.stderr, demo.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--lean", action="store_true", help="installed without extras")
    mode.add_argument("--harness", action="store_true", help="installed with [harness]")
    mode.add_argument("--core", action="store_true", help="installed --no-deps, with numpy")
    args = parser.parse_args()
    if args.core:
        version = check_core_alone()
        print(f"fwlora {version}: wheel smoke test passed (core)")
        return 0
    missing = [m for m in HARNESS_ONLY if importlib.util.find_spec(m) is None]
    # A lean dependency may bring one of them (huggingface_hub's typer brings pydantic).
    if args.lean:
        assert missing, f"not a lean install: every one of {HARNESS_ONLY} is importable"
    else:
        assert missing == [], f"harness extra incomplete: {missing} missing"
    version = check_install()
    check_optimizer()
    check_cli(version, harness=args.harness)
    print(f"fwlora {version}: wheel smoke test passed ({'harness' if args.harness else 'lean'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

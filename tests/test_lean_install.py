"""`pip install fwlora` (no extras) gives a working optimizer; the harness says what it lacks.

The lean install is torch, numpy and peft. peft itself depends on transformers, accelerate,
safetensors, pyyaml and tqdm, so those are present in any install and are not blocked here;
the harness-only packages (datasets, scipy, scikit-learn, matplotlib, pandas, pydantic) are
made unimportable in a subprocess (``sys.modules[name] = None``, which is what an absent
package looks like to ``import`` and to ``importlib.util.find_spec``).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "fwlora"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Top-level modules that only `fwlora[harness]` provides.
HARNESS_ONLY = ("datasets", "matplotlib", "pandas", "pydantic", "scipy", "sklearn")
# The declared distribution that provides a module whose import name differs (pydantic_core is
# pydantic's own, version-locked dependency).
DISTRIBUTION = {"sklearn": "scikit-learn", "yaml": "pyyaml", "pydantic_core": "pydantic"}
# Brought by peft (and its transformers) in every install.
VIA_PEFT = {
    "transformers",
    "accelerate",
    "safetensors",
    "pyyaml",
    "tqdm",
    "huggingface_hub",
    "tokenizers",
}
CORE_RUNTIME = {"torch", "numpy", "peft"}


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    blocker = (
        f"import sys\nBLOCKED = {HARNESS_ONLY!r}\nfor m in BLOCKED:\n    sys.modules[m] = None\n"
        f"TESTS = {str(ROOT / 'tests')!r}\n"
    )
    script = tmp_path / "lean.py"
    script.write_text(blocker + textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def _requirement_name(spec: str) -> str:
    name = spec
    for sep in "<>=!~[; ":
        name = name.split(sep)[0]
    return name.lower().replace("_", "-")


def test_optimizer_works_without_the_harness_dependencies(tmp_path):
    result = _run(
        """
        import json

        import fwlora
        from fwlora import FisherAdamW
        import fwlora.integrations

        # The optimizer layer imports no training stack at import time.
        after_import = sorted(
            m for m in ("peft", "transformers", "accelerate", "fwlora.integrations.trainer")
            if m in sys.modules
        )

        import torch
        sys.path.insert(0, TESTS)
        from smoke_wheel import tiny_lora_net  # the wheel smoke test's model

        model = tiny_lora_net()
        opt = FisherAdamW(model, lr=1e-2, warmup=2, lam=0.5)
        x = torch.randn(6, 8)
        for _ in range(4):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        print(json.dumps({
            "after_import": after_import,
            "phase": opt.phase,
            "step": opt.fisher_weighting.step,
            "importance": opt.importance,
            "ratios": opt.penalty_grad_ratios(),
            "blocked_loaded": [m for m in BLOCKED if sys.modules.get(m) is not None],
        }))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["after_import"] == []
    assert out["blocked_loaded"] == []
    assert out["phase"] == "frozen" and out["step"] == 4
    assert set(out["importance"]) == {"base_model.model.up", "base_model.model.down"}
    assert abs(sum(out["importance"].values()) - 1) < 1e-12
    assert len(out["ratios"]) == 2 and all(r > 0 for r in out["ratios"])


def test_cli_names_the_missing_extra(tmp_path):
    result = _run(
        f"""
        from fwlora.cli import main

        sys.exit(main(["demo", "-o", {str(tmp_path / "out")!r}]))
        """,
        tmp_path,
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    assert 'fwlora demo needs `pip install "fwlora[all]"`' in result.stderr
    assert any(f"missing: {m}" in result.stderr for m in HARNESS_ONLY), result.stderr
    assert not (tmp_path / "out").exists()


def test_help_and_version_need_neither_the_harness_nor_torch(tmp_path):
    result = _run(
        """
        from fwlora.cli import main

        codes = [main(["--help"]), main(["--version"])]
        print("torch loaded:", "torch" in sys.modules)
        print("blocked loaded:", [m for m in BLOCKED if sys.modules.get(m) is not None])
        sys.exit(max(codes))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch loaded: False" in result.stdout and "blocked loaded: []" in result.stdout
    assert "targeting" in result.stdout and "[all]" in result.stdout


def test_version_needs_no_harness(tmp_path):
    result = _run(
        """
        import fwlora
        from fwlora.cli import main

        code = main(["--version"])
        print("blocked loaded:", [m for m in BLOCKED if sys.modules.get(m) is not None])
        sys.exit(code)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("fwlora ") and lines[1] == "blocked loaded: []"


def test_runtime_dependencies_are_the_optimizers_only():
    runtime = {_requirement_name(d) for d in PYPROJECT["project"]["dependencies"]}
    assert runtime == CORE_RUNTIME
    extras = PYPROJECT["project"]["optional-dependencies"]
    harness = {_requirement_name(d) for d in extras["harness"]}
    assert harness >= {DISTRIBUTION.get(m, m) for m in HARNESS_ONLY}
    # The README's commands (make demo / make test) install every extra.
    installs = re.findall(
        r'pip install --quiet -e "\.\[([a-z,]+)\]"', (ROOT / "Makefile").read_text()
    )
    assert [set(line.split(",")) for line in installs] == [set(extras)]


def _third_party_imports(path: Path) -> dict[str, int]:
    """Top-level third-party module → first line importing it (any depth, lazy included)."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top != "fwlora" and top not in sys.stdlib_module_names:
                found.setdefault(top, node.lineno)
    return found


def test_every_import_is_declared_where_it_is_used():
    """The optimizer (fwlora, fwlora.optim) imports only the lean install's packages, the
    integrations only those and what peft brings, the harness and CLI only declared ones."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    harness = {_requirement_name(d) for d in extras["harness"]}
    allowed_for = {
        "optim": CORE_RUNTIME,
        "integrations": CORE_RUNTIME | VIA_PEFT,
        "harness": CORE_RUNTIME | VIA_PEFT | harness,
    }
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        part = (
            rel.parts[0] if len(rel.parts) > 1 else ("harness" if rel.name == "cli.py" else "optim")
        )
        allowed = allowed_for[part]
        for module, line in _third_party_imports(path).items():
            if DISTRIBUTION.get(module, module).replace("_", "-") not in {
                a.replace("_", "-") for a in allowed
            }:
                wrong.append(f"{rel}:{line} imports {module}")
    assert wrong == []


def test_packaging_metadata():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    assert "Typing :: Typed" in project["classifiers"]
    assert (PACKAGE / "py.typed").exists()
    assert set(project["urls"]) >= {"Homepage", "Repository", "Issues", "Documentation"}
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639

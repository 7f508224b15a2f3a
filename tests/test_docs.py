"""The docs say what the code does: option tables and lists against FisherOptions, the
logged keys against the callback, FisherAdamW's signature against the options."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

from fwlora import FisherAdamW
from fwlora.optim.options import DEFAULTS, FisherOptions

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = [f.name for f in dataclasses.fields(FisherOptions)]


def _table(text: str, header: str) -> dict[str, list[str]]:
    """{first cell's `name`: the other cells} of the markdown table under `header`."""
    lines = text[text.index(header) :].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_readme_option_table_lists_every_option_with_its_default():
    rows = _table((ROOT / "README.md").read_text(), "| option | default | meaning |")
    assert sorted(rows) == sorted(OPTIONS) and len(rows) == len(OPTIONS)
    for name, (default, _) in rows.items():
        value = getattr(DEFAULTS, name)
        if isinstance(value, bool) or value is None or name in ("target_ratio", "exclude"):
            continue
        if isinstance(value, str):
            assert default == f'`"{value}"`', name
        else:
            assert float(default) == float(value), name


def test_core_api_names_every_option():
    text = (ROOT / "docs" / "core-api.md").read_text()
    listed = text[text.index("are the FW-LoRA keywords") : text.index("[options table]")]
    names = re.findall(r"`(\w+)`", listed)
    assert sorted(names) == sorted(OPTIONS) and len(names) == len(OPTIONS)


def test_fisher_adamw_signature_takes_exactly_the_options():
    keyword_only = [
        n
        for n, p in inspect.signature(FisherAdamW.__init__).parameters.items()
        if p.kind == p.KEYWORD_ONLY
    ]
    adamw = {"params", "amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"}
    assert [n for n in keyword_only if n not in adamw] == OPTIONS


def test_integrations_table_lists_every_logged_key():
    source = (ROOT / "python" / "fwlora" / "integrations" / "trainer.py").read_text()
    logged = set(re.findall(r'"(fwlora/[a-z_]+)"', source))
    logged |= {"fwlora/importance/<module>"}
    rows = _table((ROOT / "docs" / "integrations.md").read_text(), "| key | value |")
    assert logged == set(rows)


def test_architecture_names_every_module():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    package = ROOT / "python" / "fwlora"
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if f"`{path.name}`" not in text and path.name != "__init__.py"
    ]
    assert missing == []
    rust = [p.name for p in (ROOT / "rust").rglob("*.rs") if p.name not in ("mod.rs",)]
    assert [n for n in rust if n not in text] == []


def test_no_module_imports_another_modules_private_names():
    """Inside the package (ruff's PLC2701 checks the imports from outside it): a name with a
    leading underscore stays in its module; fwlora._core, the compiled module, is the one
    private module the package itself re-exports."""
    import ast

    package = ROOT / "python" / "fwlora"
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fwlora"):
                if node.module == "fwlora._core":
                    continue
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and private != ["__version__"]:
                    found.append(f"{path.relative_to(package)}: {node.module}.{private}")
    assert found == []

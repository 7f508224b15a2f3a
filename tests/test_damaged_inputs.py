"""Every file `report`, `merge` and `--resume` read, damaged: truncated, of the wrong shape,
of the wrong types. Each command answers with exit 2 and one line naming the problem (or
succeeds, where the damage does not matter), never a traceback, and changes nothing it was
given."""

from __future__ import annotations

import json
import shutil

import pytest

from fwlora.cli import main
from tiny import settings_flags, tiny_settings

DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "list": lambda text: "[]\n",
    "number": lambda text: "3\n",
    "strings": lambda text: _strings(text),
}


def _strings(text: str) -> str:
    """The same keys, every value replaced by a string (wrong types everywhere)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return "runs: wrong\nformat: 3\n"
    if isinstance(doc, dict):
        return json.dumps({k: "wrong" for k in doc})
    return json.dumps("wrong")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    settings = tiny_settings(root)
    out = root / "sweep"
    flags = settings_flags({**settings, "epochs": 1})
    argv = ["sweep", "-o", str(out), "--lams", "0.01", "--seeds", "1,2", *flags]
    assert main(argv) == 0
    return out, flags


def _files(out):
    names = ["metrics.json", "aggregated_metrics.json", "significance_tests.json"]
    names += ["sweep_tests.json", "experiment.yaml", "fwlora-output.json"]
    run = sorted((out / "runs").iterdir())[0].relative_to(out)
    names += [str(run / "metrics.json"), str(run / "predictions.json")]
    return names


def _one_line_or_ok(code, err):
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_report_and_merge_read_damaged_files_as_one_line(sweep, tmp_path, capsys, damage):
    out, _ = sweep
    for name in _files(out):
        copy = tmp_path / f"{name.replace('/', '_')}-{damage}"
        shutil.copytree(out, copy)
        path = copy / name
        path.write_text(DAMAGE[damage](path.read_text()))
        before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        code = main(["report", str(copy), "-o", str(tmp_path / "site" / copy.name)])
        _one_line_or_ok(code, capsys.readouterr().err)
        code = main(["merge", str(copy), str(out), "-o", str(tmp_path / "merged" / copy.name)])
        _one_line_or_ok(code, capsys.readouterr().err)
        after = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p in before}
        assert after == before, name


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_reads_damaged_files_as_one_line(sweep, tmp_path, capsys, damage):
    out, flags = sweep
    for name in ("experiment.yaml", "fwlora-output.json", _files(out)[-2]):
        copy = tmp_path / f"{name.replace('/', '_')}-{damage}"
        shutil.copytree(out, copy)
        path = copy / name
        path.write_text(DAMAGE[damage](path.read_text()))
        argv = ["sweep", "-o", str(copy), "--resume", "--lams", "0.01", "--seeds", "1,2", *flags]
        _one_line_or_ok(main(argv), capsys.readouterr().err)

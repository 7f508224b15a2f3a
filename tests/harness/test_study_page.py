"""docs/study: every number on the page equals a fresh recomputation from the committed data
(docs/study/data), and the page states the answer paragraphs computed from them."""

from __future__ import annotations

import json
import math
import sys
from html import unescape
from pathlib import Path

import pytest

SITE = Path(__file__).resolve().parents[2] / "docs" / "study"
sys.path.insert(0, str(SITE))

import build_page  # noqa: E402
import study  # noqa: E402


def _same(a, b, path="numbers"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(map(str, b)), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is b, path
        else:
            assert math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def fresh():
    return json.loads(json.dumps(study.numbers(SITE / "data"), default=float))


def test_the_page_numbers_are_a_fresh_recomputation_of_the_data(fresh):
    saved = json.loads((SITE / "data" / "page_numbers.json").read_text())
    _same(fresh, saved)


def test_the_page_states_the_answer_computed_from_the_data(fresh):
    page = unescape((SITE / "index.html").read_text(encoding="utf-8"))
    for paragraph in build_page.answer(fresh):
        assert unescape(paragraph) in page
    # The first paragraph is the answer (the analytic fact about sum normalisation).
    first = page.index("<p>") + 3
    assert page[first:].startswith("<b>Sum normalisation is the uniform control")


def test_round_one_reads_as_the_harness_classifies_it(fresh):
    r1 = fresh["round1"]
    assert sum(r1["verdicts"]["acc"].values()) == len(r1["fw_vs_l2"]) == r1["family_size"]["acc"]
    for t in r1["fw_vs_l2"]:
        c = t["acc"]
        if c["verdict"] == "equivalent":  # the 90 % interval lies inside ±margin
            assert abs(c["mean_difference"]) < c["margin"]

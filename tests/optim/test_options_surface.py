"""FisherAdamW's surface is FisherOptions': its FW-LoRA keywords, their defaults and the
documentation of both name exactly FisherOptions' fields (defined once, in options.py), so a
new option cannot be added to one and forgotten in the others."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import torch

from fwlora import FisherAdamW, FisherOptions
from fwlora.optim.options import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
FIELDS = [f.name for f in dataclasses.fields(FisherOptions)]
# FisherAdamW's keyword-only parameters that are AdamW's, not FW-LoRA's.
ADAMW_ONLY = {"params", "amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"}


def _fw_keywords() -> dict[str, inspect.Parameter]:
    params = inspect.signature(FisherAdamW.__init__).parameters.values()
    return {p.name: p for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ADAMW_ONLY}


def test_fisher_adamw_takes_exactly_the_options_with_their_defaults():
    keywords = _fw_keywords()
    assert list(keywords) == FIELDS
    assert {n: p.default for n, p in keywords.items()} == {n: getattr(DEFAULTS, n) for n in FIELDS}
    adamw = inspect.signature(torch.optim.AdamW.__init__).parameters
    assert ADAMW_ONLY - {"params"} <= set(adamw)  # the rest really is AdamW's


def test_the_api_reference_lists_exactly_the_options():
    text = (ROOT / "docs" / "core-api.md").read_text()
    section = text[text.index("## `FisherAdamW(") : text.index("Read-outs (")]
    listed = section[section.index("are the FW-LoRA keywords") : section.index("the\n[options")]
    assert re.findall(r"`(\w+)`", listed) == FIELDS


def test_the_readme_options_table_lists_exactly_the_options():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| option | default | meaning |") : text.index("## Read-outs")]
    names = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
    assert sorted(names) == sorted(FIELDS) and len(names) == len(FIELDS)

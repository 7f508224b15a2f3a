"""Every Python example in README.md and docs/*.md runs as written, on a tiny model.

The examples of one page run in order in one namespace (a page's later example uses the
objects of its earlier ones), after a prelude that supplies what the page leaves to the
reader: `model` (a tiny peft LoRA model), `train_ds`, `args`, `loader`, `path`. The only edits
are listed in SUBSTITUTIONS, each with its reason; the examples that need several processes
are in NEEDS_RANKS and are compiled only (tests/distributed/test_fsdp2.py runs the same calls under
torchrun)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
# (page, text in the example, replacement, why)
SUBSTITUTIONS = [
    ("docs/integrations.md", 'report_to=["tensorboard"]', "report_to=[]", "no tensorboard here"),
    (
        "docs/integrations.md",
        'TrainingArguments("out",',
        'TrainingArguments("out", max_steps=3, dataloader_pin_memory=False,',
        "a short run; no accelerator here (torch warns about pinned memory)",
    ),
]
# Examples (page, first line) that need torch.distributed ranks or elide arguments (`...`).
NEEDS_RANKS = {
    ("docs/distributed.md", "from torch.distributed.fsdp import fully_shard"),
    ("docs/distributed.md", "import torch.distributed.checkpoint as dcp"),
    ("docs/distributed.md", "from fwlora.integrations import FisherCallback"),
}


def examples(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


def _prelude(tmp_path) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from transformers import Trainer, TrainingArguments

    from fwlora import FisherAdamW
    from tiny import TinyDataset, tiny_lora_model

    model = tiny_lora_model()
    train_ds = TinyDataset(8)
    args = TrainingArguments(
        str(tmp_path / "trainer"),
        max_steps=3,
        per_device_train_batch_size=4,
        report_to=[],
        dataloader_pin_memory=False,
    )
    return {
        "torch": torch,
        "model": model,
        "train_ds": train_ds,
        "train": train_ds,
        "args": args,
        "loader": DataLoader(train_ds, batch_size=2),
        "path": str(tmp_path / "checkpoint"),
        "Trainer": Trainer,
        "TrainingArguments": TrainingArguments,
        "FisherAdamW": FisherAdamW,
    }


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)])
def test_the_examples_of_a_page_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _prelude(tmp_path)
    ran = 0
    for code in examples(page):
        first = code.strip().splitlines()[0]
        compiled = compile(code, f"{page} example", "exec")
        if (page, first) in NEEDS_RANKS:
            continue
        for where, old, new, _ in SUBSTITUTIONS:
            if where == page and old in code:
                code = code.replace(old, new)
                compiled = compile(code, f"{page} example", "exec")
        # Each example starts as a fresh program would: accelerate keeps one global state
        # (the Trainer of an earlier example fixed its precision).
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        exec(compiled, namespace)
        ran += 1
    assert ran or all((page, c.strip().splitlines()[0]) in NEEDS_RANKS for c in examples(page))


def test_every_substitution_and_exception_still_matches_an_example():
    for page, old, _, _ in SUBSTITUTIONS:
        assert any(old in code for code in examples(page)), (page, old)
    for page, first in NEEDS_RANKS:
        assert any(code.strip().startswith(first) for code in examples(page)), (page, first)

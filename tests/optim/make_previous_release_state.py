"""Writes tests/optim/data/previous_release_state.pt: optimizer state dicts saved by the
previous release's layout (format 2: a top-level "fwlora" entry plus its JSON mirror in the
first param group), for the one-version compatibility test (test_state_compat.py).

Run with the previous release's package first on the path (its python/ folder and compiled
core), e.g. from a worktree of the last commit before the layout changed:
    PYTHONPATH=/tmp/oldrel/python:tests python tests/optim/make_previous_release_state.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import fwlora
from fwlora import FisherAdamW, attach_fisher
from tiny import batches, loss_of, tiny_lora_model

OUT = Path(__file__).resolve().parent / "data" / "previous_release_state.pt"


def _step(model, opt, batch):
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()


def saved(attached: bool, steps: int, lam: object) -> dict:
    torch.manual_seed(0)
    model = tiny_lora_model(seed=7)
    if attached:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        attach_fisher(opt, model, warmup=4, lam=lam)
    else:
        opt = FisherAdamW(model, lr=1e-2, warmup=4, lam=lam)
    for batch in batches(steps):
        _step(model, opt, batch)
    return opt.state_dict()


if __name__ == "__main__":
    assert "fwlora" in saved(False, 1, 0.3), f"not the previous layout: {fwlora.__file__}"
    states = {
        f"{kind}-{steps}-{lam}": saved(kind == "attached", steps, lam)
        for kind in ("adamw", "attached")
        for steps in (2, 5)  # mid-warm-up (K = 4), after it
        for lam in (0.3, "auto")
    }
    torch.save(states, OUT)
    print(f"wrote {OUT} ({len(states)} state dicts) with {fwlora.__file__}", file=sys.stderr)

"""One-version compatibility of the optimizer state dict: state dicts written by the previous
release (format 2: a top-level "fwlora" entry plus its JSON mirror in the first param group,
data/previous_release_state.pt, made by make_previous_release_state.py) still load, and the
run continues exactly as the uninterrupted one. This release writes one entry, in the first
param group."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from fwlora import FisherAdamW, attach_fisher
from fwlora.optim import dcp
from tiny import batches, loss_of, tiny_lora_model

SAVED = torch.load(Path(__file__).parent / "data" / "previous_release_state.pt", weights_only=False)


def _step(model, opt, batch):
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()


def _build(model, attached, lam):
    if attached:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        return opt, attach_fisher(opt, model, warmup=4, lam=lam)
    opt = FisherAdamW(model, lr=1e-2, warmup=4, lam=lam)
    return opt, opt.fisher_weighting


@pytest.mark.parametrize("key", sorted(SAVED))
def test_previous_release_state_loads_and_the_run_continues_exactly(key):
    kind, steps, lam = key.split("-")
    steps, lam = int(steps), (lam if lam == "auto" else float(lam))
    old = SAVED[key]
    assert json.loads(old["param_groups"][0]["fwlora"]) == old["fwlora"]  # the old layout
    torch.manual_seed(0)
    model = tiny_lora_model(seed=7)
    opt, fw = _build(model, kind == "attached", lam)
    data = batches(steps + 3)
    for batch in data[:steps]:
        _step(model, opt, batch)
    clone = copy.deepcopy(model)
    resumed, fw2 = _build(clone, kind == "attached", lam)
    resumed.load_state_dict(old)  # filterwarnings=error: no warning either
    assert fw2.step == steps
    assert all("fwlora" not in g for g in resumed.param_groups)
    now = resumed.state_dict()  # written in this release's layout
    assert "fwlora" not in now and now["param_groups"][0]["fwlora"]["format"] == 3
    for batch in data[steps:]:
        _step(model, opt, batch)
        _step(clone, resumed, batch)
    assert fw2.fisher == fw.fisher and fw2.importance == fw.importance and fw2.lam == fw.lam
    for (name, p), q in zip(model.named_parameters(), clone.parameters()):
        assert torch.equal(p, q), name


def test_the_deprecated_dcp_wrappers_warn_and_still_read_the_old_layout():
    model = tiny_lora_model(seed=7)
    opt = FisherAdamW(model, lr=1e-2, warmup=4, lam=0.3)
    for batch in batches(2):
        _step(model, opt, batch)
    with pytest.warns(DeprecationWarning, match="torch.distributed.checkpoint"):
        saved = dcp.get_optimizer_state_dict(model, opt)
    # What the previous release's wrapper wrote: the entry as a top-level JSON string only.
    entry = saved["param_groups"][0]["fwlora"]
    old = {**saved, "fwlora": json.dumps(entry)}
    old["param_groups"] = [
        {k: v for k, v in g.items() if k != "fwlora"} for g in saved["param_groups"]
    ]
    clone = copy.deepcopy(model)
    resumed = FisherAdamW(clone, lr=1e-2, warmup=4, lam=0.3)
    with pytest.warns(DeprecationWarning, match="set_optimizer_state_dict"):
        dcp.set_optimizer_state_dict(clone, resumed, old)
    assert resumed.fisher_weighting.step == 2
    assert resumed.state_dict()["param_groups"][0]["fwlora"] == entry

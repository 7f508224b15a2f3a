"""DDP under torchrun (2 processes, gloo on CPU, loopback): every rank freezes the same
importances — the mean of the per-rank statistics — and the replicas stay identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
from two_ranks import run_two_ranks

from fwlora import FisherCore


@pytest.mark.slow
def test_torchrun_two_ranks_freeze_the_same_importances(tmp_path):
    result_path, output_dir = tmp_path / "result.json", tmp_path / "run"
    run_two_ranks("ddp_worker.py", result_path, output_dir, timeout=240)
    result = json.loads(result_path.read_text())
    r0, r1 = result["ranks"]

    # Both ranks took every optimizer step and froze identical importances ...
    assert r0["step"] == r1["step"] == 6
    assert r0["importance"] is not None
    assert r0["importance"] == r1["importance"]
    assert r0["fisher"] == r1["fisher"]
    # ... although each saw other data, so their own statistics differed (the test bites) ...
    rows0, rows1 = np.array(r0["local_rows"]), np.array(r1["local_rows"])
    assert rows0.shape == rows1.shape == (result["warmup"], len(r0["importance"]))
    assert not np.allclose(rows0, rows1, rtol=1e-3)
    # ... and the importances are those of the rank-mean statistic, g = (g_rank0 + g_rank1) / 2.
    core = FisherCore(rows0.shape[1], alpha=result["alpha"], warmup=result["warmup"])
    core.observe_batch((rows0 + rows1) / 2.0)
    np.testing.assert_allclose(list(r0["importance"].values()), core.importance, rtol=1e-6)
    # lam="auto": every rank calibrated the same λ from the all-reduced gradients (and the
    # same warm-up average of them); the callback logged it.
    assert r0["lam"] == r1["lam"] and r0["lam"] > 0
    assert r0["ratios"] == r1["ratios"] and len(r0["ratios"]) == 2
    assert r0["logged_lams"] and set(r0["logged_lams"]) == {r0["lam"]}
    # DDP kept the replicas identical, penalty included.
    assert result["max_param_diff"] == 0.0
    # The callback wrote the importances beside the checkpoints (rank 0) without a deadlock,
    # the mid-warm-up one included.
    mid = json.loads((output_dir / "checkpoint-2" / "fwlora_importance.json").read_text())
    assert mid["phase"] == "warmup" and mid["step"] == 2 and mid["importance"] is None
    final = json.loads((output_dir / "fwlora_importance.json").read_text())
    assert final["importance"] == r0["importance"]
    assert (final["lam"], final["target_ratio"]) == (r0["lam"], 0.5)

"""DDP under torchrun (2 processes, gloo on CPU, loopback): every rank freezes the same
importances — the mean of the per-rank statistics — and the replicas stay identical."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fwlora import FisherCore

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_freeze_the_same_importances(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun not found beside the interpreter"
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    result_path, output_dir = tmp_path / "result.json", tmp_path / "run"
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(HERE / "ddp_worker.py"),
        str(result_path),
        str(output_dir),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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

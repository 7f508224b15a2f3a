"""What a run runs on: device and precision, CPU threads, seeds, and its peak memory."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fwlora.harness.config import RunConfig
from fwlora.harness.errors import HarnessError

_STATM = Path("/proc/self/statm")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg: RunConfig) -> tuple[torch.device, bool]:
    """(device, use bf16): bf16 on a GPU that supports it unless fp32 is asked for."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("device cuda: no CUDA device is available; use --device cpu")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if cfg.precision == "bf16":
        if use_cuda and not torch.cuda.is_bf16_supported():
            raise HarnessError("precision bf16: this GPU does not support bfloat16")
        return device, True
    bf16 = cfg.precision == "auto" and use_cuda and torch.cuda.is_bf16_supported()
    return device, bf16


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """torch's CPU thread count set to `count` (None: unchanged) for the block."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rss_mb() -> float | None:
    """The process's current resident set size in MiB (None where /proc is unavailable)."""
    try:
        pages = int(_STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """The peak memory of one run, measured from `start()` to `stop()`.

    * CUDA (`cuda_max_allocated`): torch's peak of allocated device memory, reset at start —
      tensors of this process on the device during the run only.
    * CPU on Linux (`cpu_rss_sampled_peak`): the highest resident set size of the whole process
      seen by a background thread sampling /proc/self/statm every `interval` seconds during the
      run. It includes what the process held before the run (libraries, loaded data), so compare
      runs of one experiment with each other, not with other programs; a spike shorter than the
      interval can be missed.
    * Elsewhere (`process_peak_rss`): the process's peak RSS since it started (getrusage), which
      is not per run; the kind says so.
    """

    # 50 ms: a training step of this harness lasts longer, and the sampling thread costs
    # 0.5 % of a core (2 % at 10 ms, measured), CPU time the run would be charged for.
    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        self.device = device
        self.interval = interval
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            self.kind = "cuda_max_allocated"
        elif rss_mb() is not None:
            self.kind = "cpu_rss_sampled_peak"
        else:
            self.kind = "process_peak_rss"

    def start(self) -> PeakMemory:
        if self.kind == "cuda_max_allocated":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "cpu_rss_sampled_peak":
            self._sample()
            self._thread = threading.Thread(target=self._run, name="fwlora-rss", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        value = rss_mb()
        if value is not None and value > self._peak:
            self._peak = value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def peak_mb(self) -> float:
        """The peak so far (MiB)."""
        if self.kind == "cuda_max_allocated":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "cpu_rss_sampled_peak":
            self._sample()
            return self._peak
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if platform.system() == "Darwin" else 2**10)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Shared benchmark plumbing: interleaved timing, peak memory, targets, result files."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

# gpu.sh --dry-run (the GPU run's code path on this CPU, tiny config) sets these: BENCH_DEVICE
# forces the device, BENCH_RESULTS and BENCH_SUFFIX keep its files apart from the real ones,
# BENCH_TINY shrinks the models (models.py).
RESULTS = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def device() -> torch.device:
    forced = os.environ.get("BENCH_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def suffix(dev: torch.device, full: bool = False) -> str:
    """Result-file suffix: "" for the CPU default, "_gpu" on CUDA, "_full" for the real
    roberta-base config on CPU (so a GPU run never overwrites the CPU figures); BENCH_SUFFIX
    overrides it (gpu.sh sets "_gpu")."""
    if os.environ.get("BENCH_SUFFIX"):
        return os.environ["BENCH_SUFFIX"]
    if dev.type == "cuda":
        return "_gpu"
    return "_full" if full else ""


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], None]], rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each case, measured in interleaved rounds.

    Interleaving (A B C, A B C, ...) spreads machine noise over every case alike, so the
    ratios between cases measured in one run are meaningful even on a shared machine.
    """
    return measure(cases, rounds, inner, baseline=next(iter(cases)))["seconds"]


def measure(
    cases: dict[str, Callable[[], None]],
    rounds: int,
    inner: int,
    baseline: str,
    warmup: int = 1,
    between: Callable[[], None] | None = None,
) -> dict:
    """Interleaved timing with per-round ratios against `baseline`.

    Each round runs every case `inner` times back to back (the order rotates from round to
    round, so no case always follows the same neighbour); a sample is the mean seconds per
    call in that block. Returns the median seconds per call, and for each case the median
    and the quartiles of its per-round ratio to the baseline's sample of the same round:
    paired ratios cancel the slow drifts of a shared machine that separate medians keep.
    `between`, if given, runs untimed before every call (e.g. a `CacheEvictor`): each call
    is then timed alone.
    """
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):  # allocator, kernels, lazy optimizer state
        for fn in cases.values():
            fn()
    sync()
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = cases[name]
            if between is None:
                sync()
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                sync()
                spent = time.perf_counter() - start
            else:
                spent = 0.0
                for _ in range(inner):
                    between()
                    sync()
                    start = time.perf_counter()
                    fn()
                    sync()
                    spent += time.perf_counter() - start
            samples[name].append(spent / inner)
    base = samples[baseline]
    ratios = {n: [s / b for s, b in zip(samples[n], base)] for n in names}
    return {
        "seconds": {n: statistics.median(v) for n, v in samples.items()},
        "ratio": {n: statistics.median(v) for n, v in ratios.items()},
        "ratio_q1_q3": {n: _quartiles(v) for n, v in ratios.items()},
        "samples": samples,
        "rounds": rounds,
        "inner": inner,
        "baseline": baseline,
    }


class CacheEvictor:
    """Writes a buffer larger than the last-level cache, so the next timed call starts with
    its tensors in memory, as an optimizer step does in training (forward and backward have
    just streamed the activations through every cache level). Timing a step in a tight loop
    instead keeps its state cache-resident and favours the method with the smaller working
    set."""

    def __init__(self, dev: torch.device, nbytes: int | None = None) -> None:
        if nbytes is None:
            nbytes = 2 * _last_level_cache_bytes(dev)
        self.buffer = torch.empty(max(nbytes // 4, 1), dtype=torch.float32, device=dev)
        self.nbytes = self.buffer.numel() * 4

    def __call__(self) -> None:
        self.buffer.fill_(1.0)


def _last_level_cache_bytes(dev: torch.device) -> int:
    """The largest cache: L2 of the GPU (CUDA), else the CPU's largest cache level (Linux
    sysfs; 256 MiB when it cannot be read)."""
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).L2_cache_size)
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=256 * 2**20)


def fill_grads(model: torch.nn.Module, like: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Gives every trainable parameter a gradient `like(p)`, as after a backward pass (for
    timing the optimizer-side parts of a step apart)."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = like(p)


def paired(m: dict, case: str, other: str) -> tuple[float, list[float]]:
    """Median and quartiles of the per-round ratio case / other (two cases of one measure())."""
    ratios = [a / b for a, b in zip(m["samples"][case], m["samples"][other])]
    return statistics.median(ratios), _quartiles(ratios)


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def time_alone(fn: Callable[[], None], repeat: int, inner: int) -> float:
    """Median seconds per call of `fn` alone (for decomposing a step into its parts)."""
    fn()
    sync()
    out = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        out.append((time.perf_counter() - start) / inner)
    return statistics.median(out)


def unmeasured(fw) -> None:
    """before_step() on a penalised step whose ratio read-out is not measured (15 in 16)."""
    is_measured = getattr(fw.strength, "is_measured", None)
    if is_measured is None:  # fwlora before issue 17 (before/after runs): every step measured
        fw.before_step()
        return
    fw.strength.is_measured = lambda step: False
    try:
        fw.before_step()
    finally:
        fw.strength.is_measured = is_measured


# ------------------------------------------------------------------------------- memory
def peak_step_bytes(step: Callable[[], None], dev: torch.device) -> tuple[int | None, str]:
    """Peak bytes of tensors allocated during one `step()` above those live before it.

    CUDA: the caching allocator's counters (max_memory_allocated - memory_allocated before).
    CPU: the profiler's memory timeline (every tensor allocation and free of torch's CPU
    allocator, autograd's saved activations and gradients included; the peak of the running
    sum). Neither counts Python objects, allocator caches or fragmentation. Returns
    (bytes, method); bytes is None where the CPU profiler cannot give a timeline.
    """
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated"
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action

        with profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof:
            step()
        current = peak = 0
        for t, action, _key, size in prof._memory_profile().timeline:
            if t < 0:  # tensors that existed before the step
                continue
            if action == Action.CREATE:
                current += size
            elif action == Action.DESTROY:
                current -= size
            peak = max(peak, current)
        return peak, "torch.profiler memory timeline (CPU allocator)"
    except Exception as exc:  # private API: report, do not fail the run
        return None, f"unavailable ({type(exc).__name__}: {exc})"


def tensor_bytes(tensors) -> int:
    """Bytes of distinct tensor storages among `tensors` (shared storages counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        storage = t.untyped_storage()
        key = (storage.data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


# ------------------------------------------------------------------------------ targets
def target(
    name: str,
    value: float | None,
    limit: float,
    *,
    at_least: bool = False,
    unit: str = "×",
    spread: list[float] | None = None,
) -> dict:
    """A target check: value ≤ limit (or ≥ with `at_least`), and by how much.

    `spread`: the quartiles of the per-round ratios; a limit inside them is flagged as not
    resolved at this run's noise (the verdict still follows the median)."""
    if value is None:
        return {"name": name, "value": None, "limit": limit, "met": None, "unit": unit}
    met = value >= limit if at_least else value <= limit
    resolved = spread is None or not (spread[0] <= limit <= spread[1])
    return {
        "resolved": resolved,
        "spread": spread,
        "name": name,
        "value": value,
        "limit": limit,
        "op": "≥" if at_least else "≤",
        "met": met,
        "by": abs(value - limit),
        "by_percent": abs(value - limit) / limit * 100.0,
        "unit": unit,
    }


def target_line(t: dict) -> str:
    if t.get("met") is None:
        return f"- n/a {t['name']}: not measured here"
    u = t["unit"]
    fmt = (lambda v: f"{v:.1f}") if u == " MiB" else (lambda v: f"{v:.3f}")
    verdict = "PASS" if t["met"] else "MISS"
    how = "headroom" if t["met"] else "missed by"
    note = f" — {t['note']}" if t.get("note") else ""
    if not t.get("resolved", True):
        q1, q3 = t["spread"]
        note += (
            f" — limit inside the per-round quartiles [{fmt(q1)}–{fmt(q3)}]: not resolved "
            "at this run's noise"
        )
    return (
        f"- **{verdict}** {t['name']}: {fmt(t['value'])}{u} (target {t['op']} "
        f"{fmt(t['limit'])}{u}; {how} {fmt(t['by'])}{u}, {t['by_percent']:.1f} %){note}"
    )


# -------------------------------------------------------------------------------- files
def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }
    try:
        import peft
        import transformers

        env["transformers"] = transformers.__version__
        env["peft"] = peft.__version__
    except ImportError:  # bench_core needs neither
        pass
    return env


def write(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio_cell(m: dict, name: str) -> str:
    """ "1.023 [1.010–1.041]": median per-round ratio and its quartiles."""
    q1, q3 = m["ratio_q1_q3"][name]
    return f"{m['ratio'][name]:.3f} [{q1:.3f}–{q3:.3f}]"


def bytes_alive_after(fn: Callable[[], object]) -> tuple[int, object]:
    """Bytes of the tensor storages created during `fn()` still alive after it returns.

    Every aten op's outputs are recorded (a TorchDispatchMode) by a weak reference to their
    storage; after `fn` (and a gc pass) the storages not yet freed are summed, each once:
    what autograd keeps for backward, and anything a hook holds. Device-independent; returns
    (bytes, fn's result, which the caller keeps alive).
    """
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[StorageWeakRef, int]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    storage = t.untyped_storage()
                    seen.append((StorageWeakRef(storage), storage.nbytes()))
            return out

    with Record():
        result = fn()
    gc.collect()
    # A storage seen twice (an op returning a view) has one weak reference per sighting,
    # all with the same cdata; a freed address reused later is a new storage.
    alive = {ref.cdata: size for ref, size in seen if not ref.expired()}
    return sum(alive.values()), result

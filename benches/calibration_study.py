"""Issue 15: lam="auto" on the offline MiniLM-L6 task (3-class drug reviews).

Two measurements, each resumable (finished entries are kept in the JSON and skipped):

* spread: which task-gradient scale gives the stabler λ. Each seed trains to the first
  penalised step K + 1 (calibration needs nothing later) with lam="auto"; a step pre-hook
  records ‖∇L_task‖² over the LoRA factors at every step. Since λ ∝ sqrt(task scale) for the
  same ∇P_{λ=1}, one run gives both: λ_ema, with the EMA (the Fisher α, bias-corrected) of
  ‖∇L_task‖² over steps 1..K, and λ_step, with step K + 1's own ‖∇L_task‖², exactly
  (λ_step = λ_ema·‖∇L_task,K+1‖/sqrt(EMA)). Spread over seeds: coefficient of variation and
  max/min of λ. (Measured when the library calibrated with the step's own norm; it now uses
  the EMA, the stabler one, and the two are converted into each other the other way round.)
* transfer: the harness's training loop without its evaluation passes (3 epochs, 64
  tokens, left truncation, K = 30, lr 1e-3, batch 16) for target ratios {0.03, 0.1, 0.3} ×
  ranks {2, 8} × normalisations {sum, max}: the calibrated λ, ‖∇P‖/‖∇L_task‖ at every
  penalised step, its median and whether that is within a factor 3 of the target.

    python benches/calibration_study.py pending | \
        xargs -P 4 -n 1 nice -n 19 python benches/calibration_study.py unit
    python benches/calibration_study.py report

Each unit (6 spread seeds, ~30 s CPU each; 12 transfer runs, ~3 min CPU each) writes
benches/results/calibration/<unit>.json; `report` joins them into
benches/results/calibration.{json,md}. Runs go under runs/calibration_study/.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fwlora.harness.config import build_config
from fwlora.harness.train import batch_order, setup_run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benches" / "results"
RUNS = ROOT / "runs" / "calibration_study"
K, ALPHA = 30, 0.98
SPREAD_SEEDS = range(1, 7)
SPREAD_RANK = 8
TARGETS = (0.03, 0.1, 0.3)
RANKS = (2, 8)
NORMALIZATIONS = ("sum", "max")


def settings(**changes: Any) -> dict[str, Any]:
    """The offline task of the issue, as harness settings."""
    base = {
        "method": "fw-lora",
        "model": "minilm-l6",
        "task": "drugreview3",
        "epochs": 3,
        "max_length": 64,
        "truncation_side": "left",
        "fisher_warmup": K,
        "fisher_alpha": ALPHA,
        "lr": 1e-3,
        "batch_size": 16,
        "modules_to_save": ["classifier", "pooler"],
        "fisher_lam": "auto",
        "fisher_target_ratio": 0.1,
        "num_threads": 1,
        "device": "cpu",
        "quiet": True,
    }
    return {**base, **changes}


UNITS = RESULTS / "calibration"  # one JSON per finished unit: parallel workers never clash


def load() -> dict[str, Any]:
    doc: dict[str, Any] = {"spread": {}, "transfer": {}}
    for path in sorted(UNITS.glob("*.json")):
        kind, key = path.stem.split("-", 1)
        doc[kind][key] = json.loads(path.read_text())
    return doc


def save_unit(unit: str, result: dict[str, Any]) -> None:
    UNITS.mkdir(parents=True, exist_ok=True)
    (UNITS / f"{unit}.json").write_text(json.dumps(result, indent=2))


def save(doc: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        "spread": doc["spread"],
        "transfer": {k: {**v, "ratios": None} for k, v in doc["transfer"].items()},
    }
    (RESULTS / "calibration.json").write_text(json.dumps(summary, indent=2))
    (RESULTS / "calibration.md").write_text(markdown(doc))


# ---------------------------------------------------------------------------- spread
def calibrate_once(seed: int, rank: int) -> dict[str, float]:
    """Trains to step K + 1 exactly as the harness does; the λ of both task scales."""
    cfg = build_config(settings(seed=seed, rank=rank))
    torch.set_num_threads(1)
    run = setup_run(cfg, RUNS / f"spread-r{rank}-s{seed}", None)
    opt = run.optimizer
    factors = opt.fisher_weighting._factors
    task_sq: list[float] = []

    def record(optimizer: Any, args: Any, kwargs: Any) -> None:
        task_sq.append(sum(float(p.grad.double().square().sum()) for p in factors))

    opt.register_step_pre_hook(record)
    order = batch_order(cfg.seed, 1, len(run.train_data))
    run.model.train()
    for i in range(K + 1):
        index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        batch = run.train_data.batch(index, run.device)
        run.model(**batch).loss.backward()
        opt.step()
        run.scheduler.step()
        opt.zero_grad(set_to_none=True)
    assert opt.lam is not None, "not calibrated at K + 1"
    ema, weight = 0.0, 0.0
    for g in task_sq[:K]:
        ema, weight = ALPHA * ema + (1 - ALPHA) * g, ALPHA * weight + (1 - ALPHA)
    # The library calibrates with the warm-up average (λ_ema); the step's own norm would give
    # λ_step = λ_ema · ‖∇L_task,K+1‖ / sqrt(average), the same ∇P_{λ=1} in both.
    return {
        "lam_step": opt.lam * math.sqrt(task_sq[K] / (ema / weight)),
        "lam_ema": opt.lam,
        "task_norm_step": math.sqrt(task_sq[K]),
        "task_norm_ema": math.sqrt(ema / weight),
        "ratio_at_calibration": opt.penalty_grad_ratio,
    }


def spread_summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {
        "mean": float(v.mean()),
        "cv": float(v.std(ddof=1) / v.mean()),
        "max_over_min": float(v.max() / v.min()),
    }


def spread_unit(seed: int) -> dict[str, Any]:
    return {"rank": SPREAD_RANK, "seed": seed, **calibrate_once(seed, SPREAD_RANK)}


# -------------------------------------------------------------------------- transfer
def train_ratios(cfg: Any, run_dir: Path) -> tuple[float | None, list[float]]:
    """The harness's training loop (same data order, LR schedule, adapters) without its
    evaluation passes: (calibrated λ, ‖∇P‖/‖∇L_task‖ of every penalised step). Resumable:
    a checkpoint after each epoch (trainable weights, optimizer, schedule, ratios so far)."""
    torch.set_num_threads(1)
    run = setup_run(cfg, run_dir, None)
    checkpoint = run_dir / "epoch.pt"
    done, ratios = 0, []
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        run.model.load_state_dict(state["model"], strict=False)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        done, ratios = state["epoch"], state["ratios"]
    run.model.train()
    for epoch in range(done + 1, cfg.epochs + 1):
        order = np.random.default_rng(cfg.seed * 1009 + epoch).permutation(len(run.train_data))
        for i in range(run.steps_per_epoch):
            index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            run.model(**run.train_data.batch(index, run.device)).loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        trainable = {n: p.detach() for n, p in run.model.named_parameters() if p.requires_grad}
        state = {
            "model": trainable,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "epoch": epoch,
            # the optimizer's read-out starts afresh with the process: keep the earlier ones
            "ratios": ratios + run.optimizer.penalty_grad_ratios(),
        }
        torch.save(state, checkpoint)
    if checkpoint.exists():
        ratios = torch.load(checkpoint, weights_only=False)["ratios"]
    return run.optimizer.lam, ratios


def transfer_cells() -> list[tuple[float, int, str]]:
    """Most informative first: r = 8 and sum, the default target first; then rank 2; max."""
    return sorted(
        ((t, r, n) for t in TARGETS for r in RANKS for n in NORMALIZATIONS),
        key=lambda c: (c[2] != "sum", c[1] != 8, c[0] != 0.1),
    )


def transfer_unit(target: float, rank: int, norm: str) -> dict[str, Any]:
    key = f"t{target:g}-r{rank}-{norm}"
    cfg = build_config(
        settings(seed=1, rank=rank, fisher_target_ratio=target, fisher_normalization=norm)
    )
    lam, ratios = train_ratios(cfg, RUNS / key)
    return {
        "target_ratio": target,
        "rank": rank,
        "normalization": norm,
        "lam": lam,
        "first_ratio": ratios[0],
        "median_ratio": float(np.median(ratios)),
        "last_ratio": ratios[-1],
        "penalised_steps": len(ratios),
        "ratios": ratios,
    }


def units() -> dict[str, Any]:
    """Every unit of work by name, in the order to run them."""
    out: dict[str, Any] = {}
    for seed in SPREAD_SEEDS:
        out[f"spread-r{SPREAD_RANK}-s{seed}"] = lambda seed=seed: spread_unit(seed)
    for t, r, n in transfer_cells():
        out[f"transfer-t{t:g}-r{r}-{n}"] = lambda t=t, r=r, n=n: transfer_unit(t, r, n)
    return out


# -------------------------------------------------------------------------- report
def markdown(doc: dict[str, Any]) -> str:
    lines = ['# lam="auto" on MiniLM-L6 + 3-class drug reviews (benches/calibration_study.py)', ""]
    if doc["spread"]:
        lines += [
            "## Spread of the calibrated λ over seeds (target 0.1, K = 30)",
            "",
            "| rank | seeds | task scale | mean λ | CV | max/min |",
            "|---|---|---|---|---|---|",
        ]
        for rank in sorted({r["rank"] for r in doc["spread"].values()}):
            rows = [r for r in doc["spread"].values() if r["rank"] == rank]
            if not rows:
                continue
            for scale in ("step", "ema"):
                s = spread_summary([r[f"lam_{scale}"] for r in rows])
                lines.append(
                    f"| {rank} | {len(rows)} | {scale} | {s['mean']:.3g} | {s['cv']:.3f} | "
                    f"{s['max_over_min']:.2f} |"
                )
        lines.append("")
    if doc["transfer"]:
        lines += [
            "## Transfer: ‖∇P‖/‖∇L_task‖ over the penalised steps (seed 1, 3 epochs, 84 steps)",
            "",
            "| target | rank | normalization | calibrated λ | ratio at K+1 | median ratio | "
            "last ratio | median/target | within ×3 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in doc["transfer"].values():
            q = r["median_ratio"] / r["target_ratio"] if r["median_ratio"] else float("nan")
            ok = "yes" if 1 / 3 <= q <= 3 else "no"
            lines.append(
                f"| {r['target_ratio']:g} | {r['rank']} | {r['normalization']} | "
                f"{r['lam']:.3g} | {r['first_ratio']:.3g} | {r['median_ratio']:.3g} | "
                f"{r['last_ratio']:.3g} | {q:.2f} | {ok} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """`pending`: the units not yet done; `unit NAME`: run one; `report`: the tables."""
    command, *rest = argv or ["report"]
    if command == "pending":
        done = {p.stem for p in UNITS.glob("*.json")}
        print("\n".join(name for name in units() if name not in done))
    elif command == "unit":
        (name,) = rest
        result = units()[name]()
        save_unit(name, result)
        print(name, {k: v for k, v in result.items() if k != "ratios"}, flush=True)
    elif command == "report":
        save(load())
    else:
        raise SystemExit(f"unknown command {command!r}: pending, unit NAME or report")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Issue 9 item 8: can the LoRA factors' own gradients replace the warm-up statistic?

∂L/∂B_m = s·(GᵀX)·A_mᵀ is a rank-r sketch of the frozen weight's gradient that backward
computes anyway, so ĝ_B = ‖∇B_m‖²·in/(s²‖A_m‖²_F) estimates g_m = ‖GᵀX‖² with no hooks; once
B ≠ 0, ∂L/∂A_m = s·B_mᵀ(GᵀX) gives a second one, ĝ_A = ‖∇A_m‖²·out/(s²‖B_m‖²_F). Both are
fed to the same EMA as the exact statistic, on the real MiniLM-L6 + 3-class drug reviews, and
the frozen importances are compared with the exact ones (Spearman ρ, top-5 overlap, max |ΔI|).

    python benches/bench_adapter_estimator.py            # 3 seeds, K = 30 (a few minutes on CPU)

Writes benches/results/adapter_estimator.{json,md}. Not shipped as an estimator unless the
mean ρ reaches 0.95.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import spearmanr
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fwlora import FisherAdamW
from fwlora.harness.data import load_drugreview
from fwlora.harness.models import minilm_path

RESULTS = Path(__file__).parent / "results"
K, BATCH, TOKENS, ALPHA = 30, 16, 48, 0.98


def importances(f: np.ndarray) -> np.ndarray:
    return f / f.sum()


def run(seed: int) -> dict:
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    targets = ["query", "key", "value", "intermediate.dense", "output.dense"]
    model = get_peft_model(
        base, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=targets)
    )
    opt = FisherAdamW(model, lr=1e-3, warmup=K, lam=1e-4)
    fw = opt.fisher_weighting
    data = load_drugreview(three_class=True).train
    order = np.random.default_rng(seed).permutation(len(data))
    est = {"B": np.zeros(len(fw.matrices)), "AB": np.zeros(len(fw.matrices))}
    for step in range(K):
        idx = order[step * BATCH : (step + 1) * BATCH]
        enc = tok(
            [data.texts[i] for i in idx],
            truncation=True,
            max_length=TOKENS,
            padding=True,
            return_tensors="pt",
        )
        out = model(**enc, labels=torch.tensor([data.labels[i] for i in idx]))
        opt.zero_grad()
        out.loss.backward()
        g_b, g_ab = [], []
        for m in fw.matrices:
            a, b, s = m.lora_A, m.lora_B, m.scaling
            gb = (
                float(b.grad.double().square().sum())
                * m.in_features
                / (s**2 * float(a.double().square().sum()))
            )
            nb = float(b.double().square().sum())
            if nb > 0 and a.grad is not None:
                ga = float(a.grad.double().square().sum()) * m.out_features / (s**2 * nb)
                g_ab.append(0.5 * (gb + ga))
            else:
                g_ab.append(gb)
            g_b.append(gb)
        for key, g in (("B", g_b), ("AB", g_ab)):
            est[key] = ALPHA * est[key] + (1 - ALPHA) * np.asarray(g)
        opt.step()
    exact = np.asarray(list(opt.importance.values()))
    row = {"seed": seed}
    top = set(np.argsort(-exact)[:5])
    for key, f in est.items():
        imp = importances(f)
        row[key] = {
            "spearman": float(spearmanr(exact, imp).statistic),
            "top5_overlap": len(top & set(np.argsort(-imp)[:5])) / 5,
            "max_abs_dI": float(np.abs(imp - exact).max()),
        }
    return row


def main() -> None:
    seeds = [int(s) for s in (sys.argv[1:] or ["1", "2", "3"])]
    rows = [run(s) for s in seeds]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "adapter_estimator.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| seed | estimator | Spearman ρ vs exact | top-5 overlap | max abs ΔI |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        for key, name in (("B", "‖∇B‖² (issue's ĝ)"), ("AB", "mean of ĝ_B, ĝ_A")):
            m = r[key]
            cells = (r["seed"], name, f"{m['spearman']:.3f}", f"{m['top5_overlap']:.2f}")
            lines.append("| " + " | ".join(map(str, cells)) + f" | {m['max_abs_dI']:.3f} |")
    for key in ("B", "AB"):
        mean = np.mean([r[key]["spearman"] for r in rows])
        lines.append(f"\nmean ρ ({key}): {mean:.3f} — {'≥' if mean >= 0.95 else '<'} 0.95")
    (RESULTS / "adapter_estimator.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

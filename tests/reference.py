"""A slow reference of FW-LoRA that follows the method's formulas literally.

W_m gets `requires_grad=True`, ‖∂L/∂W_m‖²_F is read from W_m.grad, the penalty is put in the
loss and differentiated by autograd, and the update is torch.optim.AdamW (single-tensor).
Nothing here is shared with the package's implementation.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer


class ReferenceFWLoRA:
    def __init__(
        self,
        model,
        *,
        lr,
        warmup,
        lam,
        alpha=0.98,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        decoupled=False,
        normalization="sum",
    ):
        self.model = model
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
        self.weights = [m.base_layer.weight for _, m in self.layers]
        for w in self.weights:
            w.requires_grad_(True)
        frozen = {id(w) for w in self.weights}
        self.adapters = [
            (m.lora_A["default"].weight, m.lora_B["default"].weight, m.scaling["default"])
            for _, m in self.layers
        ]
        adapter_params = {id(p) for a, b, _ in self.adapters for p in (a, b)}
        trainable = [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]
        # One group per adapter (so the decoupled reading can scale its weight decay), then
        # the other trainable parameters, decay only where ndim >= 2.
        groups = [{"params": [a, b], "weight_decay": weight_decay} for a, b, _ in self.adapters]
        rest = [p for p in trainable if id(p) not in adapter_params]
        groups.append({"params": [p for p in rest if p.ndim >= 2], "weight_decay": weight_decay})
        groups.append({"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)
        self.weight_decay = weight_decay
        self.warmup, self.lam, self.alpha, self.decoupled = warmup, lam, alpha, decoupled
        self.normalization = normalization
        self.ratios: list[float] = []  # ‖∇P‖ / ‖∇L_task‖ over the LoRA factors, per penalised step
        self.F = [0.0] * len(self.layers)
        self.I: list[float] | None = None
        self.t = 0

    def step(self, batch) -> None:
        self.t += 1
        self.opt.zero_grad(set_to_none=True)
        for w in self.weights:
            w.grad = None
        loss = self.model(**batch).loss
        if self.I is not None and not self.decoupled:
            penalty = self.lam * sum(
                (1.0 - i) * (s * b @ a).pow(2).sum() for i, (a, b, s) in zip(self.I, self.adapters)
            )
            factors = [p for a, b, _ in self.adapters for p in (a, b)]
            g_task = torch.autograd.grad(loss, factors, retain_graph=True)
            g_pen = torch.autograd.grad(penalty, factors, retain_graph=True)
            norm = lambda gs: torch.sqrt(sum(g.double().pow(2).sum() for g in gs))  # noqa: E731
            self.ratios.append((norm(g_pen) / norm(g_task)).item())
            loss = loss + penalty
        loss.backward()
        if self.t <= self.warmup:
            g = [w.grad.double().pow(2).sum().item() for w in self.weights]
            self.F = [self.alpha * f + (1 - self.alpha) * gi for f, gi in zip(self.F, g)]
            if self.t == self.warmup:
                total, top, m = sum(self.F), max(self.F), len(self.F)
                if self.normalization == "uniform":
                    self.I = [1.0 / m] * m
                elif self.normalization == "max":
                    self.I = [f / top for f in self.F] if top > 0 else [1.0] * m
                else:
                    self.I = [f / total for f in self.F] if total > 0 else [1.0 / m] * m
        for w in self.weights:
            w.grad = None
        self.opt.step()
        if self.decoupled and self.t == self.warmup:
            # From step K + 1 on, each adapter's decoupled weight decay is wd·(1 - I_m).
            for group, i in zip(self.opt.param_groups, self.I):
                group["weight_decay"] = self.weight_decay * (1.0 - i)

    def importance(self) -> dict[str, float] | None:
        if self.I is None:
            return None
        return {n: i for (n, _), i in zip(self.layers, self.I)}

    def fisher(self) -> dict[str, float]:
        return {n: f for (n, _), f in zip(self.layers, self.F)}

"""Adapter budgets: which linears the targets select, and a budget percentage as a LoRA rank."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fwlora.harness.errors import HarnessError


@dataclass(frozen=True)
class TargetLinear:
    name: str
    in_features: int
    out_features: int


def matches(name: str, target: str) -> bool:
    """peft's rule for a plain module-name target: the full name or a dotted suffix."""
    return name == target or name.endswith("." + target)


def target_linears(model: nn.Module, targets: list[str]) -> list[TargetLinear]:
    """The nn.Linear layers of `model` selected by `targets`; error if a target selects none."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = [
        TargetLinear(n, m.in_features, m.out_features)
        for n, m in linears
        if any(matches(n, t) for t in targets)
    ]
    unused = [t for t in targets if not any(matches(n, t) for n, _ in linears)]
    if unused or not found:
        suffixes = sorted(
            {".".join(n.split(".")[-2:]) for n, _ in linears}
            | {n.split(".")[-1] for n, _ in linears}
        )
        raise HarnessError(
            f"target_modules: {unused or targets} match no Linear layer of this model; "
            f"choose from: {', '.join(suffixes)}"
        )
    return found


def backbone_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lora_params(linears: list[TargetLinear], rank: int) -> int:
    """Trainable LoRA parameters (A and B) at a uniform `rank`."""
    return rank * sum(t.in_features + t.out_features for t in linears)


def rank_for_budget(percent: float, backbone: int, linears: list[TargetLinear]) -> int:
    """The uniform rank whose LoRA parameters come closest to `percent` % of the backbone."""
    per_rank = sum(t.in_features + t.out_features for t in linears)
    return max(1, round(percent / 100.0 * backbone / per_rank))


def adalora_params(linears: list[TargetLinear], ranks: dict[str, int] | int) -> int:
    """AdaLoRA's SVD-form parameters (P, Λ, Q) for the given per-module (or uniform) ranks."""
    total = 0
    for t in linears:
        r = ranks if isinstance(ranks, int) else ranks.get(t.name, 0)
        total += r * (t.in_features + t.out_features + 1)
    return total

"""Which matrices FW-LoRA weighs: the LoRA-adapted layers of a peft model.

Accepted: LoRA layers whose update is exactly ΔW = scaling·B·A on a frozen weight W that enters
the layer linearly — peft's ``lora.Linear`` (including GPT-2's Conv1D via ``fan_in_fan_out``,
rsLoRA, per-module rank/alpha patterns, ``lora_bias``), its quantized counterparts
(bitsandbytes 4-bit and 8-bit, GPTQ, HQQ, AWQ, EETQ, AQLM, torchao, INC: the statistic GᵀX
never reads W, so it is ‖∂L/∂W‖² for the dequantized W) and ``lora.Embedding``.

Refused, naming the module and the way out (``exclude=``): any LoRA variant registered for the
active adapter (DoRA, KaSA, MiCA, aLoRA, Arrow, BD-LoRA, VeLoRA, MonteCLoRA, ... — their ΔW is
not s·B·A), AdaLoRA, convolution, MultiheadAttention and ``target_parameters`` LoRA, and
tensor-parallel layers.
"""

from __future__ import annotations

import fnmatch
import operator
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn


@dataclass(frozen=True)
class AdapterMatrix:
    """One adapted weight W_m with its LoRA factors: ΔW_m = scaling · B @ A."""

    name: str  # qualified name in model.named_modules()
    module: nn.Module  # peft's LoRA layer (lora.Linear, a quantized Linear, lora.Embedding)
    lora_A: torch.nn.Parameter  # (r, in_features)
    lora_B: torch.nn.Parameter  # (out_features, r)
    scaling: float
    in_features: int
    out_features: int
    adapter: str = "default"  # the peft adapter these factors belong to
    kind: str = "linear"  # "linear" (y = x Wᵀ) or "embedding" (rows of W picked by token id)
    # The base layer is also held outside this LoRA layer (another attribute points at it), so
    # calls through that path bypass LoRA: the statistic then observes the base layer itself.
    base_reachable_outside: bool = False

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def current_factors(self) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """The LoRA factors `module` holds now: FSDP2 replaces them when it shards, and swaps
        in unsharded ones for the duration of forward and backward."""
        return lora_factors(self.module, self.adapter, self.kind)


def lora_factors(
    module: nn.Module, adapter: str, kind: str
) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """(A, B) of `adapter` in a peft LoRA layer: the one place that knows where a Linear's
    and an Embedding's factors live."""
    layer: Any = module  # peft's LoRA layers set these attributes dynamically
    if kind == "embedding":
        return layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    return layer.lora_A[adapter].weight, layer.lora_B[adapter].weight


# peft LoRA layer classes (by module and class name, so no optional library is imported) whose
# forward is base(x) + scaling·B(A(dropout(x))) with base a linear map x ↦ x Wᵀ of known shape.
_QUANTIZED_LINEAR = {
    ("peft.tuners.lora.bnb", "Linear8bitLt"),
    ("peft.tuners.lora.bnb", "Linear4bit"),
    ("peft.tuners.lora.gptq", "GPTQLoraLinear"),
    ("peft.tuners.lora.hqq", "HqqLoraLinear"),
    ("peft.tuners.lora.awq", "AwqLoraLinear"),
    ("peft.tuners.lora.eetq", "EetqLoraLinear"),
    ("peft.tuners.lora.aqlm", "AqlmLoraLinear"),
}

_EXCLUDE_HINT = (
    "pass exclude=[{name!r}] (module names, dotted suffixes, fnmatch globs, or 're:<regex>') "
    "to train it as plain LoRA, unweighted, or remove it from LoraConfig.target_modules"
)


def _active_adapter(name: str, module: Any) -> str:
    active = module.active_adapters
    if len(active) != 1:
        raise ValueError(
            f"model: FW-LoRA needs exactly one active adapter, {name} has {list(active)}; "
            "call model.set_adapter(<name>) before building the optimizer"
        )
    return active[0]


def _variant_of(module: Any, adapter: str) -> str | None:
    """The name of a registered LoRA variant for `adapter`, or None for vanilla LoRA."""
    variant = getattr(module, "lora_variant", {}).get(adapter)
    if variant is not None:
        return type(variant).__name__
    if getattr(module, "use_dora", {}).get(adapter, False):
        return "DoRA"
    magnitude = getattr(module, "lora_magnitude_vector", None)
    if magnitude is not None and adapter in magnitude:
        return "DoRA (lora_magnitude_vector)"
    return None


def _layer_kind(module: Any) -> str | None:
    """ "linear", "embedding", or None when FW-LoRA cannot weigh this LoRA layer exactly."""
    from peft.tuners.lora import Embedding as LoraEmbedding
    from peft.tuners.lora import Linear as LoraLinear

    if isinstance(module, LoraLinear):
        return "linear"
    if isinstance(module, LoraEmbedding):
        return "embedding"
    if (type(module).__module__, type(module).__name__) in _QUANTIZED_LINEAR:
        return "linear"
    return None


def _compile_patterns(exclude: str | Iterable[str] | None) -> list[str]:
    if exclude is None:
        return []
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(
                f"exclude: expected module names or patterns (non-empty strings), got {exclude!r}"
            )
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as err:
                raise ValueError(
                    f"exclude: {p!r} is not a valid regular expression ({err})"
                ) from None
    return patterns


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def find_adapter_matrices(
    model: nn.Module, exclude: str | Iterable[str] | None = None
) -> list[AdapterMatrix]:
    """The LoRA-adapted layers of the active adapter, in `named_modules()` order.

    `exclude`: module names (``"model.embed_tokens"``), dotted suffixes (``"lm_head"``),
    fnmatch globs (``"*.conv*"``) or regular expressions prefixed ``"re:"``; matching LoRA
    layers are left out: the optimizer still trains their factors, as plain LoRA (no
    statistic, no importance, no penalty). A pattern that matches no LoRA layer is an error.

    Raises ValueError when `model` is not a module, holds no LoRA layer, or holds a LoRA
    layer FW-LoRA cannot weigh exactly (a variant whose ΔW is not s·B·A, AdaLoRA, or a layer
    type other than Linear / quantized Linear / Embedding) that `exclude` does not name.
    Warns when an adapted frozen weight is shared with another module (tied embeddings).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(
            "model: expected a torch.nn.Module holding peft LoRA layers, "
            f"got {type(model).__name__}"
        )
    patterns = _compile_patterns(exclude)
    from peft.tuners.lora import LoraLayer

    matrices: list[AdapterMatrix] = []
    used: set[str] = set()
    paths = _module_paths(model)
    for name, found in model.named_modules():
        if not isinstance(found, LoraLayer):
            continue
        module: Any = found  # a peft LoRA layer: attributes are per-adapter dicts
        hits = [p for p in patterns if _matches(name, p)]
        if hits:
            used.update(hits)
            continue
        matrix = _adapter_matrix(name, module, paths)
        if matrix is not None:
            matrices.append(matrix)
    unused = [p for p in patterns if p not in used]
    if unused:
        raise ValueError(f"exclude: {unused} match no LoRA layer of the model")
    if not matrices:
        raise ValueError(
            "model: no LoRA layers found"
            + (" outside `exclude`" if patterns else "")
            + "; wrap the model with peft.get_peft_model(model, LoraConfig(...)) first"
        )
    _warn_shared_weights(model, matrices)
    return matrices


def _adapter_matrix(name: str, module: Any, paths: dict[int, list[str]]) -> AdapterMatrix | None:
    """The AdapterMatrix of LoRA layer `name` for its active adapter (None when that adapter
    does not adapt it); ValueError for a layer FW-LoRA cannot weigh exactly."""
    hint = _EXCLUDE_HINT.format(name=name)
    if type(module).__name__ in {"SVDLinear", "RankAllocator"} or hasattr(module, "lora_E"):
        raise ValueError(f"model: {name} is an AdaLoRA layer; FW-LoRA weighs plain LoRA adapters")
    kind = _layer_kind(module)
    if kind is None:
        raise ValueError(
            f"model: FW-LoRA weighs LoRA on Linear, quantized Linear and Embedding layers; "
            f"{name} is {type(module).__module__}.{type(module).__name__}; {hint}"
        )
    adapter = _active_adapter(name, module)
    factors_a = module.lora_A if kind == "linear" else module.lora_embedding_A
    if adapter not in factors_a:
        return None  # the active adapter does not adapt this layer
    variant = _variant_of(module, adapter)
    if variant is not None:
        raise ValueError(
            f"model: {name} uses the LoRA variant {variant} (adapter {adapter!r}), which "
            "FW-LoRA does not implement (its update is not plain scaling·B·A on every "
            f"token); use plain LoRA or rsLoRA there, or {hint}"
        )
    if kind == "embedding":
        _check_embedding(name, module, adapter, hint)
    lora_A, lora_B = lora_factors(module, adapter, kind)
    if getattr(module, "tp_layer", None) is not None:
        raise ValueError(f"model: {name} is tensor-parallel; {hint}")
    return AdapterMatrix(
        name=name,
        module=module,
        lora_A=lora_A,
        lora_B=lora_B,
        scaling=float(module.scaling[adapter]),
        in_features=lora_A.shape[1],
        out_features=lora_B.shape[0],
        adapter=adapter,
        kind=kind,
        base_reachable_outside=_reachable_outside(module, paths),
    )


def _module_paths(model: nn.Module) -> dict[int, list[str]]:
    """Every path under which each module is reachable (a module held by two attributes has
    two)."""
    paths: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    return paths


def _reachable_outside(layer: Any, paths: dict[int, list[str]]) -> bool:
    """Whether `layer`'s base layer is reachable by a path that does not pass through `layer`
    (e.g. ``model.alias = model.proj`` before peft wrapped ``proj``; T5's shared embedding)."""
    inside = tuple(f"{p}." for p in paths.get(id(layer), []))
    return any(not p.startswith(inside) for p in paths.get(id(layer.base_layer), []))


def _check_embedding(name: str, module: Any, adapter: str, hint: str) -> None:
    base = module.get_base_layer()
    if not isinstance(base, nn.Embedding):
        raise ValueError(f"model: {name} wraps {type(base).__name__}, not nn.Embedding; {hint}")
    if base.scale_grad_by_freq or base.sparse:
        raise ValueError(
            f"model: {name} uses scale_grad_by_freq or sparse gradients, whose weight "
            f"gradient FW-LoRA does not reproduce; {hint}"
        )
    if module.input_fns.get(adapter) is not None or module.output_fns.get(adapter) is not None:
        raise ValueError(f"model: {name} has tensor-parallel input/output functions; {hint}")


def base_weight(matrix: AdapterMatrix) -> torch.Tensor | None:
    """The frozen weight W_m of `matrix` (None when the base layer has no `weight`)."""
    layer: Any = matrix.module
    return getattr(layer.get_base_layer(), "weight", None)


def _warn_shared_weights(model: nn.Module, matrices: list[AdapterMatrix]) -> None:
    # Every module holding each parameter directly; a module reached by several paths (a
    # layer listed twice, ALBERT-style) is one holder, not a tie.
    holders: dict[int, dict[int, str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, param in mod.named_parameters(recurse=False):
            holders.setdefault(id(param), {}).setdefault(id(mod), f"{mname}.{pname}".lstrip("."))
    for m in matrices:
        weight = base_weight(m)
        if weight is None:
            continue
        base = cast(Any, m.module).get_base_layer()
        others = [n for key, n in holders.get(id(weight), {}).items() if key != id(base)]
        if others:
            warnings.warn(
                f"FW-LoRA: the frozen weight of {m.name} is shared with {others[:2]} (tied "
                "weights); its statistic g_m measures only the gradient through this LoRA layer, "
                "not the tied weight's total gradient. Untie the weights, or pass "
                f"exclude=[{m.name!r}] to leave this layer out of the weighting",
                UserWarning,
                stacklevel=3,
            )


class ActiveAdapterGuard:
    """`check_active_adapters` at every optimizer step, at the cost of one identity test per
    module while nothing changed.

    peft's ``set_adapter`` (on the model or on one layer) and ``delete_adapter`` assign a new
    object to the layer's ``_active_adapter``; while every layer still holds the object seen at
    the last full check, the active adapters are the ones that check accepted. A layer without
    ``_active_adapter`` is checked in full at every step.
    """

    def __init__(self) -> None:
        self._seen: list[Any] | None = None

    def check(self, matrices: list[AdapterMatrix]) -> None:
        current = [getattr(m.module, "_active_adapter", _UNKNOWN) for m in matrices]
        seen = self._seen
        if seen is not None and len(seen) == len(current) and all(map(operator.is_, current, seen)):
            return
        self._seen = None
        check_active_adapters(matrices)
        if all(c is not _UNKNOWN for c in current):
            self._seen = current  # holds the objects, so their identities stay unique


_UNKNOWN = object()


def check_active_adapters(matrices: list[AdapterMatrix]) -> None:
    """ValueError if any module's active adapter is no longer the one FW-LoRA was built for.

    Called at every optimizer step (through `ActiveAdapterGuard`): after
    ``model.set_adapter("b")`` the factors FW-LoRA observes and penalises would belong to an
    adapter that no longer trains.
    """
    for m in matrices:
        active = list(getattr(m.module, "active_adapters", [m.adapter]))
        if active != [m.adapter]:
            raise ValueError(
                f"model: the active adapter of {m.name} changed from {m.adapter!r} (when the "
                f"optimizer was built) to {active}; FW-LoRA would weigh the inactive adapter's "
                f"factors. Switch back with model.set_adapter({m.adapter!r}), or build a new "
                "optimizer for the new adapter"
            )


def check_trainable(matrices: list[AdapterMatrix]) -> None:
    """ValueError naming the modules whose LoRA factors do not require grad.

    No optimizer can train a frozen factor, and no gradient statistic reaches its layer, so
    FW-LoRA would weigh adapters that never move; the cause is usually the adapter's loading.
    """
    frozen = [m.name for m in matrices if not (m.lora_A.requires_grad and m.lora_B.requires_grad)]
    if frozen:
        raise ValueError(
            f"model: the LoRA factors of {len(frozen)} of {len(matrices)} modules have "
            f"requires_grad=False ({', '.join(frozen[:3])}{', ...' if len(frozen) > 3 else ''}), "
            "so they cannot be trained. A peft adapter loaded for inference is frozen: load it "
            "with PeftModel.from_pretrained(..., is_trainable=True) (or LoraConfig("
            "inference_mode=False)), or call requires_grad_(True) on the factors; leave "
            "modules meant to stay frozen out with exclude=[...]"
        )
    complex_ = [m.name for m in matrices if m.lora_A.is_complex() or m.lora_B.is_complex()]
    if complex_:
        raise ValueError(
            f"model: the LoRA factors of {', '.join(complex_[:3])} are complex; FW-LoRA's "
            "penalty ‖ΔW‖² and statistic ‖∂L/∂W‖² are defined for real weights. Leave these "
            "modules out with exclude=[...]"
        )

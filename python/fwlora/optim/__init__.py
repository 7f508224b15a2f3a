"""FW-LoRA optimizers: FisherAdamW, and FisherWeighting for any other torch optimizer."""

from fwlora.optim.adamw import FisherAdamW, adamw_param_groups
from fwlora.optim.statistics import ESTIMATORS
from fwlora.optim.targets import AdapterMatrix, find_adapter_matrices
from fwlora.optim.weighting import PENALTY_MODES, FisherWeighting

__all__ = [
    "ESTIMATORS",
    "PENALTY_MODES",
    "AdapterMatrix",
    "FisherAdamW",
    "FisherWeighting",
    "adamw_param_groups",
    "find_adapter_matrices",
]

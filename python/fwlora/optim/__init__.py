"""FW-LoRA optimizers: FisherAdamW, and FisherWeighting for any other torch optimizer.

Each module has one job; ARCHITECTURE.md (at the repository root) is the map of them.
"""

from fwlora.optim.adamw import FisherAdamW, adamw_param_groups
from fwlora.optim.options import ESTIMATORS, PENALTY_MODES, FisherOptions
from fwlora.optim.targets import AdapterMatrix, find_adapter_matrices
from fwlora.optim.weighting import FisherWeighting

__all__ = [
    "ESTIMATORS",
    "PENALTY_MODES",
    "AdapterMatrix",
    "FisherAdamW",
    "FisherOptions",
    "FisherWeighting",
    "adamw_param_groups",
    "find_adapter_matrices",
]

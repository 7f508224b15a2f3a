"""FW-LoRA optimizers: FisherAdamW, and FisherWeighting for any other torch optimizer.

Modules, one job each: options (every option, defined and validated once), targets (which
LoRA matrices), statistics (warm-up gradient statistics from hooks), adapter_estimate (the
hook-free estimate from the LoRA gradients), penalty (the weighted
penalty's gradient), strength (how strongly it acts), decoupled (the decoupled-decay
reading), distributed (ranks), checkpoint (the state_dict entry), weighting (the mechanism),
adamw (FisherAdamW).
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

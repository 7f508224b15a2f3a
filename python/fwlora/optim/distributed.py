"""torch.distributed and FW-LoRA: the public names, gathered from the modules that hold them.

* :mod:`fwlora.optim.collectives` — averaging the warm-up statistic over ranks; norms of
  FSDP2-sharded tensors.
* :mod:`fwlora.optim.sharding` — the layouts FW-LoRA supports (single device, DDP, FSDP2/HSDP),
  the refusals (FSDP1, DeepSpeed, tensor parallelism) and re-adopting the factors FSDP2
  replaced.
* :mod:`fwlora.optim.launcher` — what accelerate's launcher announced (read before the model
  is wrapped), and the one refusal message of FSDP1/DeepSpeed set-ups.
* :mod:`fwlora.optim.dcp` — torch.distributed.checkpoint: torch's own functions carry FW-LoRA's
  state; the previous release's wrappers, deprecated.

See docs/distributed.md.
"""

from fwlora.optim.collectives import is_dtensor, mean_over_ranks, sharded_sum, sq_norm_sum
from fwlora.optim.dcp import get_optimizer_state_dict, set_optimizer_state_dict
from fwlora.optim.launcher import sharding_refusal
from fwlora.optim.sharding import SHARDING_HINT, check_model, check_sharding, current_matrices

__all__ = [
    "SHARDING_HINT",
    "check_model",
    "check_sharding",
    "current_matrices",
    "get_optimizer_state_dict",
    "is_dtensor",
    "mean_over_ranks",
    "set_optimizer_state_dict",
    "sharded_sum",
    "sharding_refusal",
    "sq_norm_sum",
]

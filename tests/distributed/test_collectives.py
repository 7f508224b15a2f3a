"""Unit tests of optim/collectives.py in a single process (no process group): the collectives
are no-ops there; their 2-rank behaviour is checked by test_fsdp2.py and test_integration_ddp.py."""

from __future__ import annotations

import pytest
import torch

from fwlora.optim import collectives
from fwlora.optim import distributed as fw_dist


def test_sq_norm_sum_of_plain_tensors():
    tensors = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0], [2.0]])]
    total = fw_dist.sq_norm_sum(tensors)
    assert total is not None and total.dtype == torch.float64
    assert float(total) == pytest.approx(30.0, rel=1e-6)  # norms in float32, as before
    assert fw_dist.sq_norm_sum([]) is None


def test_without_a_process_group_the_row_is_returned_as_it_is():
    row = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert collectives.mean_over_ranks(row) is row
    assert collectives.world_size() == 1


def test_plain_tensors_are_not_dtensors():
    assert not collectives.is_dtensor(torch.ones(2))
    assert not collectives.is_dtensor(torch.nn.Parameter(torch.ones(2)))
    assert not collectives.is_dtensor(None)


def test_the_distributed_module_re_exports_the_same_objects():
    assert fw_dist.sq_norm_sum is collectives.sq_norm_sum
    assert fw_dist.mean_over_ranks is collectives.mean_over_ranks

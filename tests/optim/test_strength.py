"""Unit tests of optim/strength.py: which penalised steps PenaltyStrength measures, the ratio it
records, its buffer across chunks, force_next() and reset()."""

from __future__ import annotations

import pytest
import torch

from fwlora.optim.strength import MEASURE_EVERY, PenaltyStrength


def test_the_strength_read_out_measures_the_first_steps_then_every_nth():
    strength = PenaltyStrength(every=4)
    assert [j for j in range(1, 20) if strength.is_measured(j)] == [1, 2, 3, 4, 8, 12, 16]
    strength.record(torch.tensor(4.0, dtype=torch.float64), torch.tensor(16.0), step=7)
    strength.record(torch.tensor(1.0, dtype=torch.float64), None, step=8)
    assert strength.history() == [0.5, float("inf")] and strength.steps() == [7, 8]


def test_the_default_measures_the_first_sixteen_then_every_sixteenth():
    strength = PenaltyStrength()
    assert strength.every == MEASURE_EVERY == 16
    measured = [j for j in range(1, 70) if strength.is_measured(j)]
    assert measured == [*range(1, 17), 32, 48, 64]


def test_force_next_measures_one_step_then_the_rule_again():
    strength = PenaltyStrength(every=4)
    assert not strength.is_measured(5)
    strength.force_next()
    assert strength.is_measured(5) and strength.is_measured(6)  # until a ratio is recorded
    strength.record(torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0), step=9)
    assert not strength.is_measured(5)


def test_ratios_survive_the_chunk_boundary_and_reset_empties_everything():
    strength = PenaltyStrength(every=1)
    n = 1030  # more than one 1024-slot chunk
    for i in range(n):
        strength.record(torch.tensor(float(i * i), dtype=torch.float64), torch.tensor(1.0))
    assert len(strength) == n and strength.latest() == pytest.approx(n - 1)
    assert strength.history() == pytest.approx([float(i) for i in range(n)])
    assert strength.steps() == list(range(1, n + 1))  # no step given: 1, 2, ...
    strength.reset()
    assert len(strength) == 0 and strength.latest() is None and strength.history() == []


def test_grad_sq_norm_sums_every_gradient_and_is_none_without_any():
    a = torch.ones(2, 3, requires_grad=True)
    b = torch.ones(4, dtype=torch.float64, requires_grad=True)  # dtypes mixed: one float64 sum
    assert PenaltyStrength.grad_sq_norm([a, b]) is None
    a.grad, b.grad = torch.full((2, 3), 2.0), torch.full((4,), 3.0, dtype=torch.float64)
    total = PenaltyStrength.grad_sq_norm([a, b])
    assert total is not None and total.dtype == torch.float64
    assert float(total) == pytest.approx(6 * 4.0 + 4 * 9.0)

"""Unit tests of optim/penalty.py on its own: FisherPenalty's gradient, value and measured
norm against the definition, and factors without a gradient."""

from __future__ import annotations

import pytest
import torch

from fwlora import find_adapter_matrices
from fwlora.optim.penalty import FisherPenalty
from tiny import tiny_lora_model


def _matrices(seed=0):
    model = tiny_lora_model(seed=seed)
    return model, find_adapter_matrices(model)


def _literal(matrices, factors):
    """P = Σ f_m ‖s_m B_m A_m‖², differentiated by autograd (the definition)."""
    terms = [f * (m.scaling * m.lora_B @ m.lora_A).pow(2).sum() for m, f in zip(matrices, factors)]
    return sum(terms)


def test_gradient_value_and_norm_equal_the_definition():
    _, matrices = _matrices()
    factors = torch.rand(len(matrices), dtype=torch.float64).tolist()
    factors_params = [p for m in matrices for p in (m.lora_A, m.lora_B)]
    for p in factors_params:
        p.grad = torch.zeros_like(p)
    penalty = FisherPenalty(matrices)
    penalty.set_factors(factors)
    sq = penalty.add_gradients(1.0, measure=True)
    expected = torch.autograd.grad(_literal(matrices, factors), factors_params)
    for p, g in zip(factors_params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-14)
    norm_sq = sum(g.pow(2).sum() for g in expected)
    assert float(sq) == pytest.approx(float(norm_sq), rel=1e-9)
    literal = float(_literal(matrices, factors).detach())
    assert float(penalty.value()) == pytest.approx(literal, rel=1e-10)


@pytest.mark.parametrize("missing", ["A", "B", "both"])
def test_a_factor_without_gradient_is_neither_penalised_nor_measured(missing):
    _, matrices = _matrices(seed=1)
    factors = [0.5] * len(matrices)
    params = [p for m in matrices for p in (m.lora_A, m.lora_B)]
    for p in params:
        p.grad = torch.zeros_like(p)
    first = matrices[0]
    if missing in ("A", "both"):
        first.lora_A.grad = None
    if missing in ("B", "both"):
        first.lora_B.requires_grad_(False)  # a frozen factor, even with a stale gradient slot
    penalty = FisherPenalty(matrices)
    penalty.set_factors(factors)
    sq = penalty.add_gradients(1.0, measure=True)
    expected = torch.autograd.grad(
        _literal(matrices, factors), [p for p in params if p.requires_grad]
    )
    by_param = dict(zip([id(p) for p in params if p.requires_grad], expected))
    measured = 0.0
    for p in params:
        takes = p.grad is not None and p.requires_grad
        if takes:
            torch.testing.assert_close(p.grad, by_param[id(p)], rtol=1e-10, atol=1e-14)
            measured += float(by_param[id(p)].pow(2).sum())
    if missing in ("A", "both"):
        assert first.lora_A.grad is None
    if missing in ("B", "both"):
        assert not first.lora_B.grad.any()  # untouched: no penalty added
    assert float(sq) == pytest.approx(measured, rel=1e-9)

"""Issue 9, item 4: torch.compile — exact when the optimizer is built first; a named warning
(and a tested way out) when a compiled model already ran before it."""

from __future__ import annotations

import pytest
import torch

from compat_models import assert_close_dicts, lm_batches, reference_sq_norms, tiny_llama
from fwlora import FisherAdamW
from fwlora.optim.statistics import GradientStatistics
from fwlora.optim.targets import find_adapter_matrices

# The statistic's forward hook is opaque to dynamo (one graph break per LoRA layer during
# warm-up); at any graph break that returns a non-leaf tensor, dynamo itself reads `.grad`
# of it and torch warns about that read. Not ours to fix, and not a wrong result.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _one_step(model, opt, batch):
    opt.zero_grad()
    model(**batch).loss.backward()
    opt.step()
    return {k: 2.0 * v for k, v in opt.fisher.items()}


@pytest.mark.parametrize("order", ["optimizer_then_compile", "compile_then_optimizer"])
def test_compiled_model_is_exact_when_the_optimizer_exists_before_it_runs(order):
    model = tiny_llama()
    batch = lm_batches(1)[0]
    expected = reference_sq_norms(model, [lambda: model(**batch).loss])
    if order == "compile_then_optimizer":
        model.compile(backend="eager")
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    if order == "optimizer_then_compile":
        model.compile(backend="eager")
    assert_close_dicts(_one_step(model, opt, batch), expected)


def _compiled_and_run():
    model = tiny_llama()
    a, b = lm_batches(2)
    expected = reference_sq_norms(model, [lambda: model(**a).loss])
    model.compile(backend="eager")
    model(**b).loss.backward()  # the cached graph has no FW-LoRA hooks
    model.zero_grad()
    return model, a, expected


def test_statistics_report_matrices_a_stale_compiled_graph_never_reached():
    model, batch, _ = _compiled_and_run()
    matrices = find_adapter_matrices(model)
    stats = GradientStatistics(matrices)
    stats.attach()
    model(**batch).loss.backward()
    row = stats.take_row(torch.device("cpu"))
    assert stats.last_unseen == list(range(len(matrices)))
    assert float(row.abs().sum()) == 0.0


def test_dynamo_reset_after_building_the_optimizer_is_the_way_out():
    model, batch, expected = _compiled_and_run()
    opt = FisherAdamW(model, lr=0.0, weight_decay=0.0, warmup=3, alpha=0.5)
    torch._dynamo.reset()
    assert_close_dicts(_one_step(model, opt, batch), expected)


def test_stale_compiled_graph_warns_at_the_first_step_and_at_step_k():
    model, batch, _ = _compiled_and_run()
    opt = FisherAdamW(model, lr=0.0, warmup=2)
    with pytest.warns(RuntimeWarning, match=r"no gradient statistic for 14 of 14.*q_proj.*compile"):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    with pytest.warns(RuntimeWarning, match=r"F = 0 for 14 of 14 .*torch.compile"):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()

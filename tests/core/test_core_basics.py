"""The compiled core seen from Python: construction, errors, phase, serialisation."""

import pickle

import numpy as np
import pytest

from fwlora import FisherCore, FisherCoreError


def test_warmup_then_frozen_sum_importances():
    core = FisherCore(3, warmup=2, alpha=0.5, lam=1e-4)
    assert core.phase == "warmup" and core.importance is None and core.factors(1) is None
    core.observe(np.array([1.0, 2.0, 3.0]))
    core.observe([1.0, 2.0, 3.0])
    np.testing.assert_allclose(core.importance, [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(core.factors(3), 1e-4 * (1 - np.array([1, 2, 3]) / 6))
    assert core.phase == "frozen" and core.step == 2


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"warmup": 0}, "warmup"),
        ({"lam": -1.0}, "lam"),
        ({"normalization": "l2"}, "normalization"),
        ({"schedule": "cosine"}, "schedule"),
        ({"schedule": "ramp"}, "ramp_steps"),
        ({"refresh_every": -1}, "refresh_every"),
    ],
)
def test_bad_config_names_the_argument(kwargs, arg):
    with pytest.raises(FisherCoreError, match=f"`{arg}`"):
        FisherCore(4, **kwargs)


def test_rejected_observation_leaves_state_unchanged():
    core = FisherCore(3, warmup=5)
    core.observe([1.0, 2.0, 3.0])
    before = core.to_bytes()
    for bad in ([1.0, 2.0], [1.0, -1.0, 0.0], "abc", np.zeros((2, 3))):
        with pytest.raises(FisherCoreError, match="`g`"):
            core.observe(bad)
    with pytest.raises(FisherCoreError, match="`g`"):
        core.observe_batch(np.ones((5, 3)))  # only 4 warm-up steps remain
    assert core.to_bytes() == before


def test_non_finite_observation_is_skipped_and_counted():
    core = FisherCore(2, warmup=5)
    core.observe([1.0, 1.0])
    fisher = core.fisher.copy()
    assert core.observe([float("nan"), 1.0]) is False
    assert core.observe_batch(np.array([[np.inf, 0.0]])) == 1
    np.testing.assert_array_equal(core.fisher, fisher)
    assert (core.step, core.skipped) == (3, 2)


def test_round_trips_bytes_dict_pickle():
    core = FisherCore(4, warmup=2, normalization="max", schedule="ramp", ramp_steps=3)
    core.observe_batch(np.arange(8.0).reshape(2, 4))
    assert FisherCore.from_bytes(core.to_bytes()) == core
    assert FisherCore.from_dict(core.to_dict()) == core
    assert pickle.loads(pickle.dumps(core)) == core


def test_loading_state_for_other_size_is_refused():
    core = FisherCore(3, warmup=4)
    core.observe([1.0, 1.0, 1.0])
    before = core.to_bytes()
    with pytest.raises(FisherCoreError, match="5 adapter matrices, this one has 3"):
        core.load(FisherCore(5, warmup=4).to_bytes())
    assert core.to_bytes() == before


def test_fortran_ordered_and_strided_input_is_read_in_logical_order():
    obs = np.array([[1.0, 0.0], [1.0, 1.0]])
    c_core, f_core = FisherCore(2, warmup=5), FisherCore(2, warmup=5)
    c_core.observe_batch(obs)
    f_core.observe_batch(np.asfortranarray(obs))
    assert f_core == c_core
    strided = FisherCore(2, warmup=5)
    strided.observe(np.array([1.0, 9.0, 0.0])[::2])
    strided.observe(obs[1])
    assert strided == c_core


def test_core_counts_every_step_and_judges_the_phase():
    core = FisherCore(2, warmup=2, refresh_every=0)
    assert core.observing and core.steps_until_update == 2
    with pytest.raises(FisherCoreError, match="`steps`"):
        core.advance()  # warm-up steps need observations
    core.observe_batch(np.ones((2, 2)))
    assert core.phase == "frozen" and not core.observing and core.steps_until_update is None
    assert core.advance() == 3 and core.advance(2) == 5 and core.step == 5
    refreshing = FisherCore(1, warmup=1, refresh_every=3)
    refreshing.observe([1.0])
    assert refreshing.phase == "refreshing" and refreshing.observing
    assert refreshing.steps_until_update == 3


def test_uniform_normalization_ignores_fisher():
    core = FisherCore(4, warmup=1, lam=1.0, normalization="uniform")
    core.observe([1.0, 5.0, 0.0, 2.0])
    np.testing.assert_array_equal(core.importance, [0.25] * 4)
    np.testing.assert_allclose(core.factors(2), [0.75] * 4)
    assert FisherCore.from_dict(core.to_dict()) == core


def test_defaults_are_the_cores():
    d = FisherCore.defaults()
    core = FisherCore(1)
    assert d == {k: getattr(core, k) for k in d}
    assert d["warmup"] == 500 and d["lam"] == 1e-4 and d["alpha"] == 0.98


def test_bad_numbers_are_the_cores_error():
    core = FisherCore(2, warmup=3)
    for call in (lambda: core.factors(-1), lambda: core.schedule_scale(-2)):
        with pytest.raises(FisherCoreError, match="`step`"):
            call()
    with pytest.raises(FisherCoreError, match="bytes"):
        core.observe(b"\x00" * 16)
    assert core.step == 0


def test_error_pickles_and_old_state_format_is_refused():
    err = FisherCoreError("invalid `x`: y")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is FisherCoreError and str(clone) == str(err)
    state = FisherCore(2).to_dict()
    state["format_version"] = 1
    with pytest.raises(FisherCoreError, match="format_version 1"):
        FisherCore.from_dict(state)

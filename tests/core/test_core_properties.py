"""Property tests of the Rust core's invariants, driven from Python by hypothesis."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fwlora import FisherCore, FisherCoreError

finite = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)
modes = st.sampled_from(["sum", "max"])


@st.composite
def observations(draw, min_steps=1, max_steps=12, max_m=10):
    m = draw(st.integers(1, max_m))
    steps = draw(st.integers(min_steps, max_steps))
    return draw(arrays(np.float64, (steps, m), elements=finite))


def frozen_core(obs, normalization="sum", alpha=0.9, **kw):
    core = FisherCore(
        obs.shape[1], warmup=obs.shape[0], alpha=alpha, normalization=normalization, **kw
    )
    core.observe_batch(obs)
    return core


@given(observations(), modes)
def test_importances_are_bounded_and_sum_mode_sums_to_one(obs, mode):
    imp = frozen_core(obs, mode).importance
    assert imp is not None
    assert np.all(imp >= 0.0) and np.all(imp <= 1.0)
    if mode == "sum":
        assert imp.sum() == pytest.approx(1.0, rel=1e-12)
    else:
        assert imp.max() == 1.0


@given(observations(), modes, st.randoms())
def test_permutation_equivariance(obs, mode, rnd):
    perm = list(range(obs.shape[1]))
    rnd.shuffle(perm)
    a = frozen_core(obs, mode)
    b = frozen_core(obs[:, perm], mode)
    np.testing.assert_array_equal(b.fisher, a.fisher[perm])
    np.testing.assert_allclose(b.importance, a.importance[perm], rtol=1e-12)


@given(observations(), modes, st.one_of(st.sampled_from([0.25, 2.0, 1024.0]), st.floats(1e-3, 1e3)))
def test_invariance_to_scaling_inputs(obs, mode, c):
    a = frozen_core(obs, mode).importance
    b = frozen_core(obs * c, mode).importance
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-15)


@given(observations(), modes)
def test_monotonicity(obs, mode):
    core = frozen_core(obs, mode)
    f, imp = core.fisher, core.importance
    for i in range(len(f)):
        for j in range(len(f)):
            if f[i] >= f[j]:
                assert imp[i] >= imp[j]


@given(observations(max_steps=20), st.integers(1, 20))
def test_batched_equals_sequential(obs, split):
    m = obs.shape[1]
    a = FisherCore(m, warmup=30)
    b = FisherCore(m, warmup=30)
    a.observe_batch(obs[:split])
    if len(obs[split:]):
        a.observe_batch(obs[split:])
    for row in obs:
        b.observe(row)
    assert a.to_bytes() == b.to_bytes()


@given(observations(), st.floats(0.01, 0.99))
def test_ema_equals_its_closed_form(obs, alpha):
    core = FisherCore(obs.shape[1], warmup=50, alpha=alpha)
    core.observe_batch(obs)
    t = obs.shape[0]
    weights = (1 - alpha) * alpha ** np.arange(t - 1, -1, -1)
    np.testing.assert_allclose(core.fisher, weights @ obs, rtol=1e-9, atol=1e-12)


@given(observations(), st.floats(0.0, 1.0))
def test_factors_are_lam_times_one_minus_importance(obs, lam):
    core = frozen_core(obs, lam=lam)
    k = obs.shape[0]
    np.testing.assert_allclose(core.factors(k + 1), lam * (1 - core.importance), rtol=1e-12)
    assert core.factors(k) is not None  # frozen; the schedule scale is 0 at step <= K
    assert core.schedule_scale(k) == 0.0


@given(observations(), st.integers(1, 50), st.integers(0, 100))
def test_ramp_schedule(obs, ramp, after):
    core = frozen_core(obs, schedule="ramp", ramp_steps=ramp)
    k = obs.shape[0]
    assert core.schedule_scale(k + after) == pytest.approx(min(1.0, after / ramp))


@given(observations(max_steps=6), st.booleans())
def test_round_trips(obs, freeze):
    warmup = obs.shape[0] if freeze else obs.shape[0] + 3
    core = FisherCore(obs.shape[1], warmup=warmup, normalization="max")
    core.observe_batch(obs)
    for clone in (
        FisherCore.from_bytes(core.to_bytes()),
        FisherCore.from_dict(core.to_dict()),
        pickle.loads(pickle.dumps(core)),
        copy.deepcopy(core),
        core.copy(),
    ):
        assert clone == core and clone.to_bytes() == core.to_bytes()


bad_rows = st.one_of(
    arrays(np.float64, st.integers(0, 9).filter(lambda n: n != 4), elements=finite),
    arrays(np.float64, 4, elements=st.floats(-1e6, -1e-300)),
    arrays(np.float64, (2, 2), elements=finite),
    st.text(max_size=5),
    st.none(),
)


@given(observations(max_steps=3, max_m=4).filter(lambda o: o.shape[1] == 4), bad_rows)
def test_rejected_input_leaves_state_unchanged(obs, bad):
    core = FisherCore(4, warmup=10)
    core.observe_batch(obs)
    before = core.to_bytes()
    with pytest.raises(FisherCoreError):
        core.observe(bad)
    with pytest.raises(FisherCoreError):
        core.observe_batch(np.ones((10, 4)))  # more rows than warm-up steps left
    with pytest.raises(FisherCoreError):
        core.load(FisherCore(5, warmup=10))
    assert core.to_bytes() == before


@given(arrays(np.float64, (3, 4), elements=st.sampled_from([0.0, 1.0, np.nan, np.inf, -np.inf])))
def test_non_finite_rows_are_skipped_and_counted(obs):
    obs = np.where(obs < 0, np.inf, obs)  # -inf would be rejected as negative; use +inf
    core = FisherCore(4, warmup=10, alpha=0.5)
    core.observe_batch(obs)
    bad = ~np.all(np.isfinite(obs), axis=1)
    assert core.skipped == int(bad.sum()) and core.step == 3
    expected = FisherCore(4, warmup=10, alpha=0.5)
    for row in obs[~bad]:
        expected.observe(row)
    np.testing.assert_array_equal(core.fisher, expected.fisher)


@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data):
    try:
        core = FisherCore.from_bytes(data)
    except FisherCoreError:
        return
    assert FisherCore.from_bytes(core.to_bytes()) == core


@given(st.data())
def test_mutated_bytes_never_crash(data):
    core = FisherCore(3, warmup=2)
    core.observe_batch(np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 2.0]]))
    blob = bytearray(core.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        core = FisherCore.from_bytes(bytes(blob[:cut]))
    except FisherCoreError:
        return
    assert FisherCore.from_bytes(core.to_bytes()) == core


@given(
    st.dictionaries(
        st.sampled_from(list(FisherCore(2).to_dict())),
        st.one_of(
            st.none(),
            st.integers(-5, 5),
            st.floats(),
            st.text(max_size=3),
            st.lists(st.floats(), max_size=3),
        ),
    )
)
def test_random_dicts_never_crash(d):
    valid = FisherCore(2, warmup=3).to_dict()
    valid.update(d)
    try:
        core = FisherCore.from_dict(valid)
    except FisherCoreError:
        return
    assert FisherCore.from_dict(core.to_dict()) == core

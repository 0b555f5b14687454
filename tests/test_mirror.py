"""The ℓp mirror map and Bregman divergences against float64 references."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attnopt import mirror as m

PS = [1.01, 1.1, 1.5, 1.75, 2.0, 3.0, 4.0, 10.0]

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
mats = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=finite)


@pytest.mark.parametrize("p", PS)
def test_maps_are_inverse(p):
    w = np.concatenate([np.logspace(-30, 3, 40), -np.logspace(-30, 3, 40), [0.0]])
    back = m.grad_psi_star(m.grad_psi(w, p), p)
    np.testing.assert_allclose(back, w, rtol=1e-12, atol=0)
    theta = np.linspace(-3, 3, 31)
    np.testing.assert_allclose(m.grad_psi(m.grad_psi_star(theta, p), p), theta, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("p", PS)
def test_maps_match_formula_torch_and_numpy(p):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 5))
    expected = np.sign(w) * np.abs(w) ** (p - 1)
    np.testing.assert_allclose(m.grad_psi(w, p), expected, rtol=1e-14)
    got_t = m.grad_psi(torch.from_numpy(w), p)
    assert isinstance(got_t, torch.Tensor)
    np.testing.assert_allclose(got_t.numpy(), expected, rtol=1e-14)
    np.testing.assert_allclose(m.grad_psi_star(w, p), np.sign(w) * np.abs(w) ** (1 / (p - 1)), rtol=1e-14)


def test_zero_maps_to_zero_for_every_exponent():
    for p in PS:
        assert m.grad_psi(np.zeros(3), p).tolist() == [0, 0, 0]
        assert m.grad_psi_star(np.zeros(3), p).tolist() == [0, 0, 0]


@pytest.mark.parametrize("p", [1.01, 1.1, 2.0, 4.0, 10.0])
def test_lp_norm_is_overflow_safe(p):
    for scale in [1e-150, 1e-30, 1.0, 1e30, 1e150]:
        w = np.array([3.0, -4.0, 0.0]) * scale
        ref = scale * (3.0**p + 4.0**p) ** (1 / p)
        assert m.lp_norm(w, p) == pytest.approx(ref, rel=1e-12)
    # float32 too
    w32 = torch.tensor([1e-30, 2e-30], dtype=torch.float32)
    assert torch.isfinite(m.lp_norm(w32, p)) and m.lp_norm(w32, p) > 0


def test_lp_norm_dims_and_keepdim():
    w = torch.randn(5, 3, 4, dtype=torch.float64)
    n = m.lp_norm(w, 3.0, dim=(-2, -1))
    assert n.shape == (5,)
    for s in range(5):
        assert n[s].item() == pytest.approx(float(m.lp_norm(w[s], 3.0)), rel=1e-14)
    assert m.lp_norm(w, 3.0, dim=(-2, -1), keepdim=True).shape == (5, 1, 1)


@settings(max_examples=60, deadline=None)
@given(a=mats, data=st.data(), p=st.sampled_from(PS))
def test_bregman_nonnegative_and_zero_only_at_equality(a, data, p):
    b = data.draw(arrays(np.float64, a.shape, elements=finite))
    d = m.bregman(a, b, p)
    assert d >= 0.0
    assert m.bregman(a, a, p) == 0.0
    if not np.array_equal(a, b):
        # strictly convex: positive unless rounding makes a tiny difference invisible
        diff = np.max(np.abs(a - b))
        if diff > 1e-3 * max(1.0, np.max(np.abs(a)), np.max(np.abs(b))):
            assert d > 0.0


@pytest.mark.parametrize("p", PS)
def test_bregman_matches_definition(p):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    psi = lambda w: np.sum(np.abs(w) ** p) / p
    ref = psi(a) - psi(b) - np.sum(np.sign(b) * np.abs(b) ** (p - 1) * (a - b))
    assert m.bregman(a, b, p) == pytest.approx(ref, rel=1e-10)
    assert m.psi(a, p) == pytest.approx(psi(a), rel=1e-14)


def test_directional_bregman_scale_invariant_and_batched():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    for p in [1.1, 2.0, 3.0]:
        d = m.directional_bregman(a, b, p)
        assert m.directional_bregman(5 * a, 0.1 * b, p) == pytest.approx(d, rel=1e-12)
        assert m.directional_bregman(a, 7 * a, p) == pytest.approx(0.0, abs=1e-14)
        # for p = 2 it is half the squared distance of the unit vectors
        if p == 2.0:
            ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
            assert d == pytest.approx(0.5 * np.sum((ua - ub) ** 2), rel=1e-12)
    batch = torch.from_numpy(np.stack([a, b, -a]))
    got = m.directional_bregman(torch.from_numpy(a), batch, 3.0, dim=(-2, -1))
    assert got.shape == (3,)
    assert got[0].item() == pytest.approx(0.0, abs=1e-14)
    assert got[1].item() == pytest.approx(float(m.directional_bregman(a, b, 3.0)), rel=1e-12)


@pytest.mark.parametrize("bad", [1.0, 0.5, -2, float("nan"), float("inf")])
def test_invalid_p_is_rejected(bad):
    with pytest.raises(ValueError, match="p must be"):
        m.grad_psi(np.ones(2), bad)


def test_dual_exponent():
    assert m.dual_exponent(2) == 2
    assert m.dual_exponent(3) == pytest.approx(1.5)
    assert m.dual_exponent(1.1) == pytest.approx(11.0)
    assert 1 / 1.75 + 1 / m.dual_exponent(1.75) == pytest.approx(1.0)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="do not broadcast"):
        m.bregman(np.ones((2, 3)), np.ones((3, 2)), 2.0)


def test_directional_bregman_of_a_zero_matrix_is_undefined():  # issue 19 row 15
    a = np.ones((2, 2))
    for args in ((np.zeros((2, 2)), a), (a, np.zeros((2, 2)))):
        with pytest.raises(ValueError, match="zero"):
            m.directional_bregman(*args, 1.75)
    batch = torch.from_numpy(np.stack([a, np.zeros((2, 2)), 2 * a]))
    got = m.directional_bregman(torch.from_numpy(a), batch, 1.75, dim=(-2, -1), zero="nan")
    assert got[0] == 0 and torch.isnan(got[1]) and got[2] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="zero must be"):
        m.directional_bregman(a, a, 2.0, zero="ignore")

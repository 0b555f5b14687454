"""Synthetic data generators of E1/E2 (attnopt.data.synthetic)."""

import pytest
import torch

from attnopt.data.synthetic import JOINT_X, convergence_batch, convergence_instance, joint_instance


def test_instance_shapes_and_unit_norms():
    d = convergence_instance(3, n=6, T=8, d=10)
    assert d.X.shape == (6, 8, 10) and d.Z.shape == (6, 10) and d.v.shape == (10,) and d.Y.shape == (6,)
    assert d.X.dtype == torch.float64 and d.W0.shape == (10, 10)
    torch.testing.assert_close(d.X.norm(dim=-1), torch.ones(6, 8, dtype=torch.float64))
    torch.testing.assert_close(d.Z.norm(dim=-1), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(d.v.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert set(d.Y.tolist()) <= {-1.0, 1.0}


def test_published_draw_order():
    """v, Y, X, Z are drawn in that order from a float32 generator seeded with the seed."""
    g = torch.Generator().manual_seed(7)
    v = torch.randn(4, generator=g)
    Y = torch.randn(3, generator=g) > 0
    X = torch.randn(3, 5, 4, generator=g)
    d = convergence_instance(7, n=3, T=5, d=4)
    torch.testing.assert_close(d.v, (v / v.norm()).double(), rtol=1e-6, atol=1e-7)
    assert d.Y.tolist() == [1.0 if y else -1.0 for y in Y.tolist()]
    torch.testing.assert_close(d.X, (X / X.norm(dim=-1, keepdim=True)).double(), rtol=1e-6, atol=1e-7)


def test_same_seed_identical_different_seed_differs():
    a, b = convergence_instance(5), convergence_instance(5)
    for name in ("X", "Y", "Z", "v", "W0"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = convergence_instance(6)
    assert not torch.equal(a.X, c.X)


def test_init_and_query_options():
    zero = convergence_instance(2, init="zeros")
    assert torch.count_nonzero(zero.W0) == 0
    normal = convergence_instance(2, init="normal", init_std=1.0)
    assert normal.W0.std() > 0.5
    # the data do not depend on the initialisation
    assert torch.equal(zero.X, normal.X) and torch.equal(zero.Z, normal.Z)
    first = convergence_instance(2, query="first")
    assert torch.equal(first.Z, first.X[:, 0, :]) and torch.equal(first.X, zero.X)


def test_batch_stacks_seeds():
    b = convergence_batch([1, 2, 3], n=4, T=5, d=3)
    assert b.X.shape == (3, 4, 5, 3) and b.W0.shape == (3, 3, 3) and b.seeds == (1, 2, 3)
    one = convergence_instance(2, n=4, T=5, d=3)
    assert torch.equal(b.seed_slice(1).X, one.X) and torch.equal(b.W0[1], one.W0)


@pytest.mark.parametrize("kw", [dict(n=0), dict(T=1), dict(d=0), dict(query="last"), dict(init="uniform"),
                                dict(init_std=-1.0)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        convergence_instance(1, **kw)


def test_batch_rejects_duplicates_and_empty():
    with pytest.raises(ValueError):
        convergence_batch([1, 1])
    with pytest.raises(ValueError):
        convergence_batch([])


def test_joint_instance_is_the_spec():
    d = joint_instance()
    assert d.X.tolist() == [list(map(list, s)) for s in JOINT_X]
    assert d.Y.tolist() == [1.0, -1.0]
    assert torch.equal(d.Z, d.X[:, 0, :])
    assert torch.count_nonzero(d.W0) == 0 and torch.count_nonzero(d.v) == 0

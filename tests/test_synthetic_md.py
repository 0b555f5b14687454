"""Batched normalised mirror descent used by the synthetic experiments."""

import numpy as np
import pytest
import torch

from attnopt.data.synthetic import convergence_batch
from attnopt.experiments.synthetic.md import log_grid, md_step, train_md
from attnopt.mirror import dual_exponent, grad_psi, grad_psi_star, lp_norm


@pytest.mark.parametrize("p", [1.75, 2.0, 3.0])
def test_md_step_formula(p):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    G = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    out = md_step(W, G, p, 0.1, eps=0.0)
    for s in range(4):
        Gs = G[s] / lp_norm(G[s], dual_exponent(p))
        torch.testing.assert_close(out[s], grad_psi_star(grad_psi(W[s], p) - 0.1 * Gs, p), rtol=1e-13, atol=1e-15)
    # normalisation is per seed: scaling one seed's gradient changes nothing
    G2 = G.clone()
    G2[1] *= 1e6
    torch.testing.assert_close(md_step(W, G2, p, 0.1, eps=0.0), out, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p", [1.75, 2.0, 3.0])
def test_batched_step_equals_mirror_descent_optimizer_per_seed(p):
    optim = pytest.importorskip("attnopt.optim")
    eps = 1e-12
    g = torch.Generator().manual_seed(1)
    S = 3
    W = torch.randn(S, 4, 4, generator=g, dtype=torch.float64)
    Wb = W.clone()
    params = [torch.nn.Parameter(W[s].clone()) for s in range(S)]
    opts = [optim.MirrorDescent([prm], lr=0.1, p=p, normalize=True, eps=eps) for prm in params]
    for _ in range(5):
        G = torch.randn(S, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1e-3, 50.0]).view(S, 1, 1)
        Wb = md_step(Wb, G, p, 0.1, eps=eps)
        for s in range(S):
            params[s].grad = G[s].clone()
            opts[s].step()
    for s in range(S):
        torch.testing.assert_close(Wb[s], params[s].detach(), rtol=1e-11, atol=1e-13)


def test_zero_gradient_gives_zero_step_no_nan():
    W = torch.zeros(2, 3, 3, dtype=torch.float64)
    for eps in (0.0, 1e-16):
        out = md_step(W, torch.zeros_like(W), 1.75, 0.1, eps=eps)
        assert torch.equal(out, W)
    v = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    assert torch.equal(md_step(v, torch.zeros_like(v), 3.0, 0.1, eps=0.0, dim=-1), v)


def test_log_grid():
    g = log_grid(20000, 200)
    assert g[0] == 0 and g[-1] == 20000 and np.all(np.diff(g) > 0)
    assert 150 <= g.size <= 202
    assert log_grid(0).tolist() == [0]
    assert log_grid(5, 200).tolist() == [0, 1, 2, 3, 4, 5]


def test_train_md_batched_equals_per_seed_and_is_reproducible():
    d = convergence_batch([1, 2, 3], n=4, T=5, d=3)
    K = 40
    tr = train_md(d.X, d.Y, d.Z, d.v, d.W0, 1.75, 0.1, K, log_iters=log_grid(K, 10))
    tr2 = train_md(d.X, d.Y, d.Z, d.v, d.W0, 1.75, 0.1, K, log_iters=log_grid(K, 10))
    assert torch.equal(tr.W, tr2.W) and torch.equal(tr.loss, tr2.loss)
    assert tr.W.shape == (tr.iters.size, 3, 3, 3) and tr.loss.shape == (tr.iters.size, 3)
    assert torch.equal(tr.W[0], d.W0)
    for s in range(3):
        one = train_md(d.X[s], d.Y[s], d.Z[s], d.v[s], d.W0[s], 1.75, 0.1, K, log_iters=log_grid(K, 10))
        torch.testing.assert_close(one.W, tr.W[:, s], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(one.loss, tr.loss[:, s], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tr.w_norm[-1], lp_norm(tr.final_W, 1.75, dim=(-2, -1)))


def test_train_md_restores_thread_count_and_checks_log_iters():
    d = convergence_batch([1], n=2, T=3, d=2)
    before = torch.get_num_threads()
    train_md(d.X, d.Y, d.Z, d.v, d.W0, 2.0, 0.1, 3)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        train_md(d.X, d.Y, d.Z, d.v, d.W0, 2.0, 0.1, 3, log_iters=np.array([0, 5]))


def test_joint_training_moves_v_first():
    from attnopt.data.synthetic import joint_instance

    d = joint_instance()
    tr = train_md(d.X, d.Y, d.Z, d.v, d.W0, 2.0, 0.1, 3, log_iters=np.arange(4), train_v=True)
    # step 1: v = 0 so dL/dW = 0 (W stays 0, no NaN) while v moves
    assert torch.count_nonzero(tr.W[1]) == 0 and torch.count_nonzero(tr.v[1]) > 0
    assert torch.count_nonzero(tr.W[2]) > 0
    assert torch.isfinite(tr.W).all() and torch.isfinite(tr.v).all()

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


# ------------------------------------------------------------------ the exact step (issue 16)


def _autograd(d, W, v, train_v=False):
    from attnopt.models.attention import attention_output, logistic_loss

    Wg, vg = W.clone().requires_grad_(True), v.clone().requires_grad_(train_v)
    f, _ = attention_output(d.X, Wg, d.Z, vg)
    return torch.autograd.grad(logistic_loss(f, d.Y).sum(), [Wg, vg] if train_v else [Wg])


def _cos(a, b, dim=(-2, -1)):
    a = a / a.abs().amax(dim, keepdim=True)  # (scaled first: the gradients may be ~1e-175)
    b = b / b.abs().amax(dim, keepdim=True)
    return (a * b).sum(dim) / (torch.linalg.vector_norm(a, dim=dim) * torch.linalg.vector_norm(b, dim=dim))


def test_exact_gradient_equals_autograd_before_saturation():
    from attnopt.models.attention import scaled_gradients

    d = convergence_batch([1, 2, 3, 4], n=5, T=6, d=4)
    W = d.W0
    v = d.v * torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)[:, None]
    gW, gv = _autograd(d, W, v, train_v=True)
    g = scaled_gradients(d.X, d.Y, d.Z, W, v, with_v=True)
    assert torch.all(_cos(g.W, gW) >= 1 - 1e-12)
    assert torch.all(_cos(g.v, gv, dim=-1) >= 1 - 1e-12)
    torch.testing.assert_close(g.W * g.log_scale_W.exp()[:, None, None], gW, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g.v * g.log_scale_v.exp()[:, None], gv, rtol=1e-12, atol=1e-15)


def _mp_gradient(X, Y, Z, v, W, dps):
    """∂L/∂W of the logistic attention loss in mpmath at ``dps`` digits (the float64 reference)."""
    mp = pytest.importorskip("mpmath")
    n, T, dd = X.shape
    with mp.workdps(dps):
        G = [[mp.mpf(0)] * dd for _ in range(dd)]
        for i in range(n):
            x = [[mp.mpf(float(X[i, t, k])) for k in range(dd)] for t in range(T)]
            z = [mp.mpf(float(Z[i, k])) for k in range(dd)]
            Wz = [mp.fsum(mp.mpf(float(W[r, c])) * z[c] for c in range(dd)) for r in range(dd)]
            a = [mp.fsum(x[t][r] * Wz[r] for r in range(dd)) for t in range(T)]
            amax = max(a)
            e = [mp.exp(at - amax) for at in a]
            s = [et / mp.fsum(e) for et in e]
            gam = [mp.fsum(x[t][r] * mp.mpf(float(v[r])) for r in range(dd)) for t in range(T)]
            f = mp.fsum(st * gt for st, gt in zip(s, gam))
            y = mp.mpf(float(Y[i]))
            c = -y / (1 + mp.exp(y * f)) / n
            for t in range(T):
                ga = c * s[t] * (gam[t] - f)
                for r in range(dd):
                    for k in range(dd):
                        G[r][k] += ga * x[t][r] * z[k]
        norm = mp.sqrt(mp.fsum(G[r][k] ** 2 for r in range(dd) for k in range(dd)))
        return torch.tensor([[float(G[r][k] / norm) for k in range(dd)] for r in range(dd)], dtype=torch.float64)


@pytest.mark.parametrize("gap", [40.0, 400.0, 2000.0])
def test_exact_gradient_against_high_precision_reference_when_saturated(gap):
    """At a score gap past ln(1/ε) ≈ 36 the selected token's softmax rounds to 1: autograd's
    gradient is noise or zero, the exact one still agrees with a 1,000-digit reference."""
    from attnopt.models.attention import scaled_gradients
    from attnopt.svm import alpha_from_softmax, att_svm

    d = convergence_batch([5], n=3, T=4, d=3).seed_slice(0)
    alpha = alpha_from_softmax(d.X, d.W0, d.Z)
    W = gap * torch.from_numpy(att_svm(d.X, d.Z, alpha, 2.0).solution)  # every score gap >= `gap`
    ref = _mp_gradient(d.X, d.Y, d.Z, d.v, W, dps=1000)
    g = scaled_gradients(d.X, d.Y, d.Z, W, d.v)
    assert float(_cos(g.W, ref)) >= 1 - 1e-12
    (auto,) = _autograd(d, W, d.v)
    assert not float(_cos(auto, ref)) >= 1 - 1e-6  # (NaN for an all-zero autograd gradient)


@pytest.mark.parametrize("p", [1.01, 1.1])
def test_exact_step_near_p_one(p):
    """p near 1: ‖W‖_p grows like (ηk)^{1/(p−1)} (exponent 100 at p = 1.01); the exact step keeps
    moving (no ε stall), stays finite, and the divergence to the ℓp-AttSVM falls."""
    from attnopt.experiments.synthetic.solves import SVMCache, divergence, selected_tokens

    d = convergence_batch([1, 2, 3, 4], n=6, T=8, d=10)
    K = 1500
    runs = {s: train_md(d.X, d.Y, d.Z, d.v, d.W0, p, 0.1, K, log_iters=log_grid(K, 20), step=s)
            for s in ("exact", "published")}
    ex = runs["exact"]
    assert torch.isfinite(ex.W).all() and torch.isfinite(ex.w_norm).all()
    alpha = selected_tokens(d.X, ex.final_W, d.Z)
    cache = SVMCache()
    svm = [cache.att(s, d.X[s], d.Z[s], alpha[s], p) for s in range(4)]
    D = divergence(svm, ex.W, p, drop_unconverged=True)
    assert np.nanmean(D[-1]) < 0.05 and np.nanmean(D[-1]) < 0.1 * np.nanmean(D[0])
    # the published step's norm stops growing once ‖G‖_q < ε; the exact one's does not
    pub = runs["published"]
    grow_ex = float(ex.w_norm[-1].mean() / ex.w_norm[-2].mean())
    grow_pub = float(pub.w_norm[-1].mean() / pub.w_norm[-2].mean())
    assert grow_ex > 1.0 + 1e-3 and grow_pub < grow_ex


def test_exact_and_published_steps_agree_before_saturation():
    d = convergence_batch([1, 2], n=4, T=5, d=3)
    a = train_md(d.X, d.Y, d.Z, d.v, d.W0, 1.75, 0.1, 5, log_iters=np.arange(6), step="exact")
    b = train_md(d.X, d.Y, d.Z, d.v, d.W0, 1.75, 0.1, 5, log_iters=np.arange(6), step="published", eps=0.0)
    torch.testing.assert_close(a.W, b.W, rtol=1e-11, atol=1e-13)
    c = train_md(d.X, d.Y, d.Z, d.v, d.W0, 1.75, 0.1, 5, log_iters=np.arange(6), step="exact", normalize=False)
    e = train_md(d.X, d.Y, d.Z, d.v, d.W0, 1.75, 0.1, 5, log_iters=np.arange(6), step="published", normalize=False)
    torch.testing.assert_close(c.W, e.W, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="step"):
        train_md(d.X, d.Y, d.Z, d.v, d.W0, 1.75, 0.1, 5, step="exactly")


def test_exact_joint_step_zero_first_w_step():
    from attnopt.data.synthetic import joint_instance

    d = joint_instance()
    tr = train_md(d.X, d.Y, d.Z, d.v, d.W0, 2.0, 0.1, 3, log_iters=np.arange(4), train_v=True, step="exact")
    assert torch.count_nonzero(tr.W[1]) == 0 and torch.count_nonzero(tr.v[1]) > 0  # v(0) = 0: ∂L/∂W = 0
    assert torch.isfinite(tr.W).all() and torch.count_nonzero(tr.W[2]) > 0

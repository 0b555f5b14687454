"""The one-layer attention model against explicit loops."""

import numpy as np
import pytest
import torch

from attnopt.models import OneLayerAttention, attention_output, attention_scores, logistic_loss


def _explicit(X, W, z, v):
    out = []
    for i in range(X.shape[0]):
        s = np.array([X[i, t] @ W @ z[i] for t in range(X.shape[1])])
        a = np.exp(s - s.max())
        a /= a.sum()
        out.append(v @ X[i].T @ a)
    return np.array(out)


def test_output_matches_explicit_formula():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    W = torch.randn(3, 3, generator=g, dtype=torch.float64)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    v = torch.randn(3, generator=g, dtype=torch.float64)
    f, probs = attention_output(X, W, z, v)
    np.testing.assert_allclose(f.numpy(), _explicit(X.numpy(), W.numpy(), z.numpy(), v.numpy()), rtol=1e-12)
    np.testing.assert_allclose(probs.sum(-1).numpy(), 1.0, rtol=1e-14)
    assert attention_scores(X, W, z)[1, 2].item() == pytest.approx((X[1, 2] @ W @ z[1]).item())


def test_batch_dimension_over_seeds():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64)
    W = torch.randn(3, 2, 2, generator=g, dtype=torch.float64)
    z = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    v = torch.randn(3, 2, generator=g, dtype=torch.float64)
    f, _ = attention_output(X, W, z, v)
    for s in range(3):
        np.testing.assert_allclose(f[s].numpy(), attention_output(X[s], W[s], z[s], v[s])[0].numpy(), rtol=1e-14)


def test_logistic_loss():
    f = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    Y = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    ref = np.mean(np.log1p(np.exp(-Y.numpy() * f.numpy())))
    assert logistic_loss(f, Y).item() == pytest.approx(ref, rel=1e-14)


def test_module_w_and_kq_parameterisations():
    X = torch.randn(2, 3, 4, dtype=torch.float64)
    m = OneLayerAttention(4, v=torch.ones(4))
    assert torch.allclose(m(X), X.mean(1) @ torch.ones(4, dtype=torch.float64))  # W = 0: uniform
    kq = OneLayerAttention(4, rank=2)
    W = kq.K @ kq.Q.T
    assert torch.allclose(kq(X), attention_output(X, W, X[:, 0], kq.v)[0])
    assert set(n for n, _ in kq.named_parameters()) == {"K", "Q", "v"}
    fixed = OneLayerAttention(4, train_v=False)
    assert [n for n, _ in fixed.named_parameters()] == ["W"]
    with pytest.raises(ValueError, match="W must have shape"):
        OneLayerAttention(3, W=torch.zeros(2, 2))


def test_scaled_gradients_zero_and_batched():
    """v = 0 makes every γ equal: the W-gradient is exactly zero (no NaN from log 0), and a
    batch of instances gives each its own scale."""
    from attnopt.models.attention import scaled_gradients

    g = torch.Generator().manual_seed(3)
    X = torch.randn(2, 4, 5, 3, generator=g, dtype=torch.float64)
    z = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    Y = torch.tensor([[1.0, -1.0, 1.0, -1.0]] * 2, dtype=torch.float64)
    W = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    zero = scaled_gradients(X, Y, z, W, torch.zeros(2, 3, dtype=torch.float64), with_v=True)
    assert torch.count_nonzero(zero.W) == 0 and torch.isfinite(zero.log_scale_W).all()
    assert torch.count_nonzero(zero.v) > 0
    v = torch.randn(2, 3, generator=g, dtype=torch.float64)
    both = scaled_gradients(X, Y, z, W * torch.tensor([1.0, 300.0], dtype=torch.float64)[:, None, None], v)
    one = scaled_gradients(X[1], Y[1], z[1], 300.0 * W[1], v[1])
    torch.testing.assert_close(both.W[1], one.W, rtol=1e-12, atol=0)
    assert both.log_scale_W[1] < both.log_scale_W[0] - 10  # the saturated instance's gradient is far smaller

"""Shared by the optimizer tests: the float64 reference update, its float32 tolerance, and
seeded parameters and gradients.  (pytest puts ``tests/`` on ``sys.path``; the Triton
interpreter test adds it to the subprocess's ``PYTHONPATH``.)"""

from __future__ import annotations

import shutil

import torch

from attnopt.mirror import grad_psi, grad_psi_star, lp_norm
from attnopt.optim import _cpu

#: A C compiler for the fused CPU kernel is on this machine (the one the kernel build uses).
HAVE_CC = shutil.which(_cpu._compiler()[0]) is not None


def reference_step(w, g, *, lr, p, normalize=False, eps=0.0, momentum=0.0, buf=None,
                   weight_decay=0.0, maximize=False):
    """The documented update in float64, recomputing θ = ∇ψ(w) from scratch."""
    w, g = w.double(), g.double()
    if maximize:
        g = -g
    if normalize:
        den = lp_norm(g, p / (p - 1.0)) + eps
        g = g / den if den > 0 else torch.zeros_like(g)
    if momentum:
        buf = g.clone() if buf is None else momentum * buf + g
        g = buf
    w = w * (1.0 - lr * weight_decay)
    theta = grad_psi(w, p) - lr * g
    return grad_psi_star(theta, p), buf


def dual_tolerance(w_ref, w_old, step, p, rtol=1e-6, ulps=4.0):
    """Allowed |w - w_ref| for a float32 step: ``rtol`` relative in the primal, plus what
    a few float32 roundings of θ (size |θ_old| + |step|) become through ∇ψ*.  The second term
    is the conditioning of the problem itself: e/(p-1)-fold amplification, and for p > 2
    the steepness of ∇ψ* at 0 where θ − ηg cancels."""
    delta = ulps * 2.0**-24 * (grad_psi(w_old.double(), p).abs() + step.double().abs())
    theta_ref = grad_psi(w_ref, p).abs()
    return rtol * w_ref.abs() + (grad_psi_star(theta_ref + delta, p) - grad_psi_star(theta_ref, p))


def make_params(*shapes, dtype=torch.float32, seed=0, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype))
            for s in shapes]


def grads_like(params, seed=1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype) for p in params]


def train_steps(params, opt, n=2, seed=0):
    """``n`` steps of ``opt`` with the seeded gradients ``grads_like(params, seed + k)``."""
    for k in range(n):
        for x, g in zip(params, grads_like(params, seed=seed + k)):
            x.grad = g
        opt.step()

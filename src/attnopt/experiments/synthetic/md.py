r"""Batched (normalised) ℓp mirror descent for the one-layer attention model.

Every tensor may carry leading batch dimensions (in E1, one per seed): ``X (S, n, T, d)``,
``W (S, d, d)``, ...  The loss of each seed depends only on that seed's parameters, so one
backward pass through the *sum* of the per-seed losses yields every seed's own gradient, and
one vectorised mirror step updates all seeds at once.  The normalisation of the gradient is
taken per seed over that seed's whole tensor (``dim=(-2, -1)`` for W, ``dim=-1`` for v):

.. math::  W^+ = \nabla\psi^*\big(\nabla\psi(W) - \eta\, G / (\|G\|_q + \varepsilon)\big),
           \qquad q = p/(p-1).

A zero gradient stays zero (also with ε = 0), so the first W step of E2 (where v(0) = 0
makes ∂L/∂W vanish) is a no-op instead of a NaN.

Two steps (``step=``):

* ``"exact"`` (the default): G from :func:`attnopt.models.attention.scaled_gradients` — the
  gradient summed from pairwise score differences with every weight formed in log space and
  shifted by one maximum per seed (a positive factor that normalisation removes) — and
  :math:`\tilde G = G/\|G\|_q` with no ε.
* ``"published"``: G from autograd and :math:`\tilde G = G/(\|G\|_q + \varepsilon)`,
  ε = float64 machine epsilon as in the authors' code.  With ψ = (1/p)‖·‖_p^p, ‖W(k)‖_p grows
  like (ηk)^{1/(p−1)} (exponent 10 at p = 1.1), the score gap grows with it and ‖G‖_q decays
  super-exponentially; once ‖G‖_q ≪ ε the dual step is η‖G‖_q/ε and W freezes at a score gap
  near ln(1/ε) ≈ 36.  With ε = 0 it is worse: at that gap the selected token's softmax rounds to
  1.0 and autograd's softmax backward (γ_α − Σ_u s_u γ_u) loses every digit to cancellation, so
  the "gradient" is rounding noise that normalisation turns into full-length steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from attnopt.mirror import dual_exponent, grad_psi, grad_psi_star, lp_norm
from attnopt.models.attention import attention_output, logistic_loss, scaled_gradients
from attnopt.runtime import torch_threads

#: Default ε of the normalised step (float64 machine epsilon, as in the published code).
DEFAULT_EPS = float(torch.finfo(torch.float64).eps)

Progress = Callable[[int], None]
#: The normalised steps: the exact one (default) and the published one (autograd, + ε).
STEPS = ("exact", "published")


def md_step(
    W: torch.Tensor,
    G: torch.Tensor,
    p: float,
    lr: float,
    *,
    normalize: bool = True,
    eps: float = DEFAULT_EPS,
    dim: int | Sequence[int] = (-2, -1),
) -> torch.Tensor:
    r"""One (normalised) ℓp mirror-descent step, batched over the dimensions not in ``dim``.

    Returns :math:`\nabla\psi^*(\nabla\psi(W) - \eta\,\tilde G)` with
    :math:`\tilde G = G/(\|G\|_q + \varepsilon)` (norm over ``dim``, per batch entry) when
    ``normalize`` else :math:`\tilde G = G`.
    """
    if normalize:
        q = dual_exponent(p)
        nrm = lp_norm(G, q, dim=dim, keepdim=True)
        # an all-zero gradient stays zero, also for eps = 0 (no 0/0)
        G = G / torch.where(nrm > 0, nrm + eps, torch.ones_like(nrm))
    return grad_psi_star(grad_psi(W, p) - lr * G, p)


def log_grid(iterations: int, n_log: int = 200) -> np.ndarray:
    """Sorted unique iterations ``0 ∪ logspace(1, K, n_log) ∪ K`` (about ``n_log`` points)."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if iterations == 0:
        return np.zeros(1, dtype=np.int64)
    pts = np.unique(np.round(np.logspace(0.0, np.log10(iterations), max(int(n_log), 2))).astype(np.int64))
    return np.unique(np.concatenate([[0], pts, [iterations]])).astype(np.int64)


@dataclass
class Trajectory:
    """Iterates and metrics of a batched run at the logged iterations ``iters`` (length L).

    ``W (L, *B, d, d)`` and ``v (L, *B, d)`` (v is constant when it is not trained);
    ``loss``, ``max_softmax`` (mean over samples of the largest attention probability),
    ``logistic_prob`` (mean over samples of sigmoid(Y_i f_i)) and ``w_norm`` (‖W‖_p) have
    shape ``(L, *B)``.  ``probs`` is the final softmax ``(*B, n, T)``.
    """

    p: float
    iters: np.ndarray
    W: torch.Tensor
    v: torch.Tensor
    loss: torch.Tensor
    max_softmax: torch.Tensor
    logistic_prob: torch.Tensor
    w_norm: torch.Tensor
    probs: torch.Tensor
    seconds: float

    @property
    def final_W(self) -> torch.Tensor:
        return self.W[-1]

    @property
    def final_v(self) -> torch.Tensor:
        return self.v[-1]


def train_md(
    X: torch.Tensor,
    Y: torch.Tensor,
    Z: torch.Tensor,
    v0: torch.Tensor,
    W0: torch.Tensor,
    p: float,
    lr: float,
    iterations: int,
    *,
    log_iters: np.ndarray | None = None,
    train_v: bool = False,
    normalize: bool = True,
    eps: float = DEFAULT_EPS,
    step: str = "exact",
    progress: Progress | None = None,
    progress_every: int = 100,
    num_threads: int | None = 1,
) -> Trajectory:
    """Full-batch ℓp-AttGD (``train_v=False``, v fixed) or ℓp-JointGD (``train_v=True``).

    All seeds along the leading dimensions are trained together: one forward pass, one
    backward pass of the summed loss, one batched mirror step per iteration.  The iterate
    W(k) (and v(k)) and the metrics are stored at the iterations in ``log_iters`` (default:
    :func:`log_grid`), which must lie in ``[0, iterations]``.  ``progress(n)`` is called with
    the number of iterations done since its last call.  ``step``: "exact" or "published" (see
    the module docstring; ``eps`` is used by the published step only).

    ``num_threads`` (default 1) caps torch's intra-op threads for the duration of the run:
    the tensors are tiny, and on a loaded machine OpenMP synchronisation made single ops
    (softmax, backward) ~100x slower than the work itself.  ``None`` leaves the setting alone.
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    with torch_threads(num_threads):
        return _train_md(X, Y, Z, v0, W0, p, lr, iterations, log_iters, train_v, normalize, eps, step, progress,
                         progress_every)


def gradients(step: str, X, Y, Z, W, v, train_v: bool, normalize: bool):
    """``(f, probs, [G_W(, G_v)])`` of one forward pass: for the exact step G is the scaled
    gradient (multiplied back to the true one when the step is not normalised)."""
    if step == "published":
        Wg, vg = W.detach().requires_grad_(True), v.detach().requires_grad_(train_v)
        f, probs = attention_output(X, Wg, Z, vg)
        grads = torch.autograd.grad(logistic_loss(f, Y).sum(), [Wg, vg] if train_v else [Wg])
        return f.detach(), probs.detach(), list(grads)
    g = scaled_gradients(X, Y, Z, W, v, with_v=train_v)
    grads = [g.W] + ([g.v] if train_v else [])
    if not normalize:  # the true gradient (it may underflow: that is its value)
        grads = [G * torch.exp(M).reshape(M.shape + (1,) * (G.ndim - M.ndim))
                 for G, M in zip(grads, (g.log_scale_W, g.log_scale_v))]
    return g.f, g.probs, grads


def _train_md(X, Y, Z, v0, W0, p, lr, iterations, log_iters, train_v, normalize, eps, step, progress,
              progress_every) -> Trajectory:
    if log_iters is None:
        log_iters = log_grid(iterations)
    log_iters = np.unique(np.asarray(log_iters, dtype=np.int64))
    if log_iters.size == 0 or log_iters[0] < 0 or log_iters[-1] > iterations:
        raise ValueError(f"log_iters must lie in [0, {iterations}]")
    L = log_iters.size
    batch = W0.shape[:-2]
    dt = W0.dtype
    Ws = torch.empty((L, *W0.shape), dtype=dt)
    vs = torch.empty((L, *batch, v0.shape[-1]), dtype=dt)
    metrics = {k: torch.empty((L, *batch), dtype=dt) for k in ("loss", "max_softmax", "logistic_prob", "w_norm")}

    W = W0.detach().clone()
    v = v0.detach().clone().expand(*batch, v0.shape[-1]).clone()
    params = [W, v] if train_v else [W]
    dims = [(-2, -1), -1]
    step_eps = eps if step == "published" else 0.0
    t0 = time.perf_counter()
    j = 0
    pending = 0
    probs = None
    for k in range(iterations + 1):
        f, probs, grads = gradients(step, X, Y, Z, W, v, train_v, normalize)
        if j < L and log_iters[j] == k:
            Ws[j] = W
            vs[j] = v
            metrics["loss"][j] = logistic_loss(f, Y)
            metrics["max_softmax"][j] = probs.amax(-1).mean(-1)
            metrics["logistic_prob"][j] = torch.sigmoid(Y * f).mean(-1)
            metrics["w_norm"][j] = lp_norm(W, p, dim=(-2, -1))
            j += 1
        if k == iterations:
            break
        for prm, g, dim in zip(params, grads, dims):
            prm.copy_(md_step(prm, g, p, lr, normalize=normalize, eps=step_eps, dim=dim))
        pending += 1
        if progress is not None and pending >= progress_every:
            progress(pending)
            pending = 0
    if progress is not None and pending:
        progress(pending)
    return Trajectory(
        p=float(p),
        iters=log_iters,
        W=Ws,
        v=vs,
        probs=probs,
        seconds=time.perf_counter() - t0,
        **metrics,
    )


__all__ = ["DEFAULT_EPS", "STEPS", "gradients", "md_step", "log_grid", "Trajectory", "train_md"]

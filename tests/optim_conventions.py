"""Shared by the ported torch.optim convention tests (``test_optim_conventions*.py``): the
implementation flags, the option sets, the (flag, p) grid with the compiled path sampled, and
the small models and closures of torch's ``TestOptimRenewed``, in our own code."""

from __future__ import annotations

import pytest
import torch

from optim_reference import HAVE_CC

P_VALUES = [1.1, 1.75, 2.0, 3.0]
#: Every implementation flag of ``MirrorDescent`` (``_FLAGS`` in mirror_descent.py), plus the
#: default (no flag) and ``capturable=True`` (the device-selected eager path, on CPU here).
FLAGS = {"default": {}, "single": {"foreach": False}, "foreach": {"foreach": True}, "fused-cpu": {"fused": True},
         "capturable": {"capturable": True}, "compiled": {"compiled": True}}
#: The compiled path compiles a graph per shape and option set (seconds each on 2 cores): normal
#: runs take it at this p only, and with the first and last option sets; ``-m exhaustive`` all.
COMPILED_SAMPLE_P = 1.75

needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler for the fused CPU kernel")


def option_sets(flag: str, exhaustive: bool = False) -> list[dict]:
    """MirrorDescent's option sets, as ``OptimizerInfo.optim_inputs_func`` lists SGD's (fresh
    tensors each call: schedulers write into a tensor lr)."""
    sets = [dict(lr=1e-3), dict(lr=torch.tensor(1e-3)), dict(lr=1e-3, momentum=0.9), dict(lr=1e-3, weight_decay=0.1),
            dict(lr=1e-3, normalize=True, eps=1e-8), dict(lr=1e-3, maximize=True),
            dict(lr=1e-3, momentum=0.5, weight_decay=0.1, normalize=True, maximize=True)]
    if flag == "compiled" and not exhaustive:
        return [sets[0], sets[-1]]
    return sets


def grid(flags=tuple(FLAGS), ps=tuple(P_VALUES)):
    """pytest params (flag, p): fused-cpu needs a C compiler; compiled away from its sampled p is
    ``exhaustive``."""
    out = []
    for flag in flags:
        for p in ps:
            marks = [needs_cc] if flag == "fused-cpu" else []
            if flag == "compiled" and p != COMPILED_SAMPLE_P:
                marks.append(pytest.mark.exhaustive)
            out.append(pytest.param(flag, p, marks=marks, id=f"{flag}-p{p}"))
    return out


def exhaustive_run(request) -> bool:
    return "exhaustive" in (request.config.getoption("markexpr") or "")


def weight_bias(contiguous: bool = True, dtype=torch.float32, seed: int = 0):
    """torch's (10, 5) weight and (10,) bias, optionally as non-contiguous views, and an input."""
    gen = torch.Generator().manual_seed(seed)
    if contiguous:
        w = torch.randn(10, 5, generator=gen, dtype=dtype)
        b = torch.randn(10, generator=gen, dtype=dtype)
    else:
        w = torch.randn(10, 5, 2, generator=gen, dtype=dtype)[..., 0]
        b = torch.randn(10, 2, generator=gen, dtype=dtype)[..., 0]
    x = torch.randn(5, generator=gen, dtype=dtype)
    return torch.nn.Parameter(w), torch.nn.Parameter(b), x


def quadratic_closure(opt, w, b, x):
    """zero_grad, the loss ‖W x + b‖², backward; returns the loss."""
    def closure():
        opt.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        return loss
    return closure


def tiny_mlp(dtype=torch.float64, seed: int = 1):
    """torch's Linear(2, 3) – Sigmoid – Linear(3, 1) – Sigmoid, and its (3, 2) input."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1),
                                torch.nn.Sigmoid()).to(dtype)
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    return model, x

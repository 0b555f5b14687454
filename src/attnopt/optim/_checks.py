"""Validation of MirrorDescent's hyper-parameters: at construction, at load, and at every step
(cheaply: only a group whose values changed since it was last checked is checked again).

Every error is an ordinary ``ValueError`` or ``TypeError`` naming the option and the group.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from attnopt.mirror import check_p

__all__ = ["check_group", "group_key", "fill_group", "DUAL_DTYPES", "REQUIRED_KEYS", "GROUP_DEFAULTS", "GROUP_COUNTERS"]

#: Dtypes θ may have: it accumulates updates below the weights' resolution, so at least float32.
DUAL_DTYPES = (torch.float32, torch.float64)

#: Keys a saved parameter group must have to be MirrorDescent's.
REQUIRED_KEYS = ("lr", "p")

#: Every option of a parameter group and its default (those of ``MirrorDescent.__init__``; p has
#: none: None stands for "given per group").  They fill a group added or loaded without them: an
#: older state dict, a group appended to ``param_groups`` directly.
GROUP_DEFAULTS: dict[str, Any] = dict(lr=1e-3, p=None, normalize=False, eps=0.0, momentum=0.0, weight_decay=0.0,
                                      maximize=False, foreach=None, fused=None, compiled=None, capturable=False,
                                      dual_dtype=None)

#: What each group counts (applied and skipped steps).
GROUP_COUNTERS = ("step", "skipped_steps")


def fill_group(group: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Give ``group`` every option it lacks (from ``defaults``, then :data:`GROUP_DEFAULTS`) and
    its step counters, as torch's optimizers do in ``__setstate__``."""
    for name, value in GROUP_DEFAULTS.items():
        if name not in group:
            group[name] = defaults.get(name, value)
    for name in GROUP_COUNTERS:
        group.setdefault(name, 0)


def _check_real(name: str, value: Any, where: str, *, low: float | None = None, low_open: bool = False,
                high: float | None = None, high_open: bool = False) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a 1-element tensor{where}, got shape {tuple(value.shape)}")
        value = value.item()
    # any real number: int, float, numpy's float32/int64, fractions.Fraction, …
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{where}, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name}{where}: {value!r} (must be finite)")
    if low is not None and (v < low or (low_open and v == low)):
        rel = ">" if low_open else ">="
        raise ValueError(f"Invalid {name}{where}: {value!r} (must be {rel} {low})")
    if high is not None and (v > high or (high_open and v == high)):
        rel = "<" if high_open else "<="
        raise ValueError(f"Invalid {name}{where}: {value!r} (must be {rel} {high})")
    return v


def _lr(value: Any, where: str) -> Any:
    """A float, or the tensor itself (kept so that schedulers can ``fill_`` it and a captured
    step reads it); a tensor's value is checked only where reading it costs no synchronisation."""
    if isinstance(value, Tensor):
        if value.numel() != 1:  # as torch's optimizers: a ValueError
            raise ValueError(f"a tensor learning rate (lr) must have one element{where}, got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"a tensor learning rate (lr) must be floating-point{where} (a scheduler writes "
                            f"fractions into it), got {value.dtype}")
        if value.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_real("learning rate (lr)", value, where, low=0.0)
        return value
    return _check_real("learning rate (lr)", value, where, low=0.0)


def check_group(group: dict[str, Any], index: int | None = None, *, params: bool = True) -> None:
    """Validate (and normalise to floats) the hyper-parameters of one parameter group; with
    ``params``, also its parameters (dtypes) and the fused path's availability."""
    where = "" if index is None else f" (param_groups[{index}])"
    group["lr"] = _lr(group["lr"], where)
    if group["p"] is None:
        raise ValueError(f"MirrorDescent needs p{where}, the exponent of the potential (a number > 1): "
                         "pass p=… or give every parameter group its p")
    try:
        group["p"] = check_p(group["p"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Invalid p{where}: {group['p']!r} (must be a finite number > 1)") from exc
    group["eps"] = _check_real("eps", group["eps"], where, low=0.0)
    group["momentum"] = _check_real("momentum", group["momentum"], where, low=0.0, high=1.0, high_open=True)
    group["weight_decay"] = _check_real("weight_decay", group["weight_decay"], where, low=0.0)
    lr = group["lr"]
    if not isinstance(lr, Tensor) and lr * group["weight_decay"] > 1.0:
        raise ValueError(
            f"Invalid lr·weight_decay{where}: {lr:g}·{group['weight_decay']:g} > 1; the decoupled decay "
            "w ← (1 − lr·weight_decay)·w would flip the sign of every weight"
        )
    dd = group["dual_dtype"]
    if dd is not None:
        if not isinstance(dd, torch.dtype) or not dd.is_floating_point:
            raise TypeError(f"dual_dtype must be a floating torch.dtype or None{where}, got {dd!r}")
        if dd not in DUAL_DTYPES:
            raise ValueError(f"Invalid dual_dtype{where}: {dd} (θ must be torch.float32 or torch.float64: "
                             "it accumulates updates below the weights' resolution, which a 16-bit θ would lose)")
    for flag in ("normalize", "maximize", "capturable"):
        if not isinstance(group[flag], bool):
            raise TypeError(f"{flag} must be a bool{where}, got {group[flag]!r}")
    chosen = [k for k in ("foreach", "fused", "compiled") if group[k]]
    if len(chosen) > 1:
        raise ValueError(f"at most one of foreach/fused/compiled may be True{where}, got {', '.join(chosen)}")
    if params:
        _check_params(group, where)


def _check_params(group: dict[str, Any], where: str) -> None:
    for param in group["params"]:
        if not param.is_floating_point():
            raise TypeError(f"MirrorDescent needs floating-point parameters{where}, got {param.dtype}")
    if not group["fused"] or not group["params"]:
        return
    from attnopt.optim._functional import uses_triton

    devices = {param.device.type for param in group["params"]}
    if not uses_triton(group["params"]):
        if devices != {"cpu"}:
            raise ValueError("MirrorDescent(fused=True): a parameter group mixes CPU and accelerator "
                             "parameters; put them in separate optimizers")
        from attnopt.optim import _cpu

        _cpu.load()  # builds the C kernel now (once per machine), so a missing compiler shows here
        return
    if "cpu" in devices and len(devices) > 1:
        raise ValueError("MirrorDescent(fused=True): a parameter group mixes CPU and accelerator "
                         "parameters; put them in separate optimizers")
    try:
        from attnopt.optim import _triton
    except ImportError as exc:
        raise RuntimeError(
            "MirrorDescent(fused=True) on CUDA needs Triton (pip install 'attnopt[triton]'); "
            "Triton is not installed. Leave fused unset for the foreach path."
        ) from exc
    _triton.check_fused_supported(group["params"])


def group_key(group: dict[str, Any]) -> tuple:
    """What :func:`check_group` depends on, for the per-step "changed since checked?" test
    (a tensor lr by identity, and by value when it lives on the CPU)."""
    lr = group["lr"]
    if isinstance(lr, Tensor):
        lr = (id(lr), float(lr) if lr.device.type == "cpu" and not torch.compiler.is_compiling() else None)
    return (lr, group["p"], group["eps"], group["momentum"], group["weight_decay"], group["dual_dtype"],
            group["normalize"], group["maximize"], group["capturable"], group["foreach"], group["fused"],
            group["compiled"])

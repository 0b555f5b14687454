"""Non-finite gradients: the exact check before a step, and the device-side account of skipped steps.

Two ways to honour ``nonfinite="raise"`` / ``"skip"`` (nothing is written on a step whose
gradients hold a NaN or ±inf):

* **On the host, before the step** (CPU tensors, and the eager paths on accelerators):
  :func:`gradients_finite` answers exactly, in one read of the gradients (the C kernel's
  exponent-bit count on CPU, infinity norms elsewhere); the step then raises or returns at once.
* **On the device, without a host synchronisation** (the fused Triton path, ``capturable=True``
  and ``torch.compile(opt.step)``): the step's check writes a code into a one-element device
  flag (``BIG − index`` of the first bad parameter, so a ``max`` keeps the first), the update
  kernels skip themselves when the flag is set, and :class:`DeviceRecord` keeps, on the device,
  how many steps were skipped and which parameter and step came first.  The host learns it
  from an asynchronous copy read at the next step (no wait), or at once from a blocking read
  (:meth:`~attnopt.optim.MirrorDescent.check_nonfinite`, ``state_dict``, ``skipped_steps``).
  With ``"raise"`` the flag is sticky: every step after the bad one is skipped too, so the
  weights stay as they were before it until the error is raised.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable

import torch
from torch import Tensor

from attnopt.optim._math import BIG

__all__ = ["NONFINITE_MODES", "NonFiniteGradientError", "gradients_finite", "first_nonfinite", "DeviceRecord",
           "host_nonfinite", "report_deferred",
           "BIG"]

#: Accepted values of ``nonfinite``.
NONFINITE_MODES = ("raise", "skip", "ignore")


class NonFiniteGradientError(FloatingPointError):
    """A gradient contained NaN or ±inf and ``nonfinite="raise"`` was set."""


def _infinity_norms(grads: list[Tensor]) -> Tensor:
    """``max|g|`` per non-empty gradient (NaN and ±inf propagate through the maximum; no
    overflow, so exact), stacked into one float tensor per call."""
    gs = [g for g in grads if g.numel()]
    if not gs:
        return torch.zeros(1)
    if hasattr(torch, "_foreach_norm"):
        norms = torch._foreach_norm(gs, float("inf"))
    else:  # pragma: no cover - very old torch
        norms = [g.abs().amax() for g in gs]
    return torch.stack([n.to(torch.float64) for n in norms])


def gradients_finite(grads: list[Tensor]) -> bool:
    """Exactly whether every entry of every gradient is finite: one read of the gradients and
    one host synchronisation per device."""
    from attnopt.optim import _cpu

    if _cpu.is_loaded():  # the C kernel counts non-finite float32/bfloat16 entries at read bandwidth
        cpu = [g for g in grads if g.device.type == "cpu"]
        if cpu and _cpu.count_nonfinite(cpu):
            return False
        grads = [g for g in grads if g.device.type != "cpu"]
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    return all(bool(torch.isfinite(_infinity_norms(gs)).all()) for gs in by_device.values())


def first_nonfinite(groups: Iterable[dict]) -> tuple[int, int, Tensor] | None:
    """``(group index, global parameter index, parameter)`` of the first non-finite gradient."""
    index = 0
    for gi, group in enumerate(groups):
        for param in group["params"]:
            g = param.grad
            if g is not None and not bool(torch.isfinite(g).all()):
                return gi, index, param
            index += 1
    return None


def host_nonfinite(opt) -> None:
    """A non-finite gradient found on the host before optimizer ``opt``'s step: raise
    (``nonfinite="raise"``, naming the parameter) or count the skipped step."""
    bad = first_nonfinite(opt.param_groups)
    if opt.nonfinite == "raise":
        g0 = opt.param_groups[0]
        step_no = g0["step"] + g0["skipped_steps"] + 1
        if bad is None:
            raise NonFiniteGradientError(f"MirrorDescent: a non-finite gradient (NaN or inf) on another rank at step "
                                         f"{step_no}; nothing was updated")
        gi, index, param = bad
        raise NonFiniteGradientError(
            f"MirrorDescent: non-finite gradient (NaN or inf) for parameter {index} "
            f"(param_groups[{gi}], shape {tuple(param.shape)}, dtype {param.dtype}) at step "
            f"{step_no}; nothing was updated. Pass nonfinite='skip' to skip such steps."
        )
    for group in opt.param_groups:
        group["skipped_steps"] += 1


def report_deferred(opt, wait: bool, raise_error: bool = True) -> None:
    """Account for the steps the device skipped (optimizer ``opt``'s device records), and under ``"raise"`` raise for the first
    (``raise_error``; otherwise it stays pending for the next step)."""
    for record in opt._records.values():
        values = record.read() if wait else record.poll()
        if values is None:
            continue
        pending = opt.nonfinite == "raise" and values[1] != 0
        if values[0] == record.reported and not pending:
            continue
        if not wait:
            values = record.read()  # exact numbers for the report
        new = values[0] - record.reported
        for group in opt.param_groups:
            group["skipped_steps"] += new
            group["step"] = max(0, group["step"] - new)
        record.reported = values[0]
        if not (opt.nonfinite == "raise" and values[1] != 0 and raise_error):
            continue
        record.clear_report()
        index = BIG - values[1]
        param = opt._param_at(index)
        raise NonFiniteGradientError(
            f"MirrorDescent: non-finite gradient (NaN or inf) for parameter {index} (shape {tuple(param.shape)}, "
            f"dtype {param.dtype}) at step {values[2]}, found on {record.device}; nothing was written in that "
            "step or after it until now. Pass nonfinite='skip' to skip such steps and go on."
        )


class DeviceRecord:
    """What the device knows about non-finite steps, for one device of one optimizer.

    ``flag`` (int32[1]): this step's code, ``max`` over the bad parameters of ``BIG − index``
    (0: none).  ``rec`` (int64[4]): ``[bad steps, code of the first unreported bad step, its
    step number, steps]``.  :meth:`finalize` moves the flag into ``rec`` at the end of a step
    and clears it (unless ``sticky``); the host reports and clears ``rec[1:3]``.
    """

    #: Asynchronous snapshots kept in flight before the oldest is waited for.
    MAX_PENDING = 8

    def __init__(self, device: torch.device, steps_before: int, sticky: bool, triton: bool = False) -> None:
        self.device = device
        self.sticky = sticky
        self.triton = triton  # finalize with one Triton program (the fused path's own device work)
        self.flag = torch.zeros(1, dtype=torch.int32, device=device)
        self.rec = torch.tensor([0, 0, 0, steps_before], dtype=torch.int64).to(device)
        self.reported = 0  # bad steps the host has accounted for
        self._pending: collections.deque[tuple[Any, Tensor]] = collections.deque()
        self._ids: dict[tuple[int, ...], Tensor] = {}

    # -- on the device ----------------------------------------------------------------------

    def mark(self, grads: list[Tensor], ids: list[int]) -> None:
        """Raise the flag for these gradients (parameters ``ids``) with torch ops: no host
        synchronisation, capturable, traceable."""
        pairs = [(g, i) for g, i in zip(grads, ids) if g.numel()]
        if not pairs:
            return
        key = tuple(i for _, i in pairs)
        codes = self._ids.get(key)
        if codes is None or torch.compiler.is_compiling():
            codes = torch.tensor([BIG - i for i in key], dtype=torch.int64).to(self.device)
            if not torch.compiler.is_compiling():
                self._ids[key] = codes
        bad = ~torch.isfinite(_infinity_norms([g for g, _ in pairs]).to(self.device))
        code = torch.where(bad, codes, torch.zeros_like(codes)).amax().to(torch.int32)
        torch.maximum(self.flag, code.reshape(1), out=self.flag)

    def finalize(self) -> None:
        """End of a step on this device: count it, note it if bad, clear the flag (not when
        sticky), and start an asynchronous copy of ``rec`` for the host."""
        if self.triton and not torch.compiler.is_compiling():
            from attnopt.optim._triton import launch_finalize

            launch_finalize(self.flag, self.rec, self.sticky)
        else:
            bad = (self.flag != 0).to(torch.int64).reshape(())
            fresh = bad * (self.rec[1] == 0).to(torch.int64)  # the first unreported bad step
            steps = self.rec[3] + 1
            delta = torch.stack([bad, fresh * self.flag.reshape(()).to(torch.int64),
                                 fresh * steps, torch.ones_like(bad)])
            self.rec.add_(delta)
            if not self.sticky:
                self.flag.zero_()
        self._snapshot()

    def _snapshot(self) -> None:
        if self.device.type != "cuda" or torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
            return
        host = torch.empty(4, dtype=torch.int64, pin_memory=True)
        host.copy_(self.rec, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, host))
        if len(self._pending) > self.MAX_PENDING:
            self._pending[0][0].synchronize()

    # -- on the host -------------------------------------------------------------------------

    def poll(self) -> list[int] | None:
        """The newest copy of ``rec`` that has arrived, without waiting (None if none has);
        on CPU, ``rec`` itself."""
        if self.device.type != "cuda":
            return self.rec.tolist()
        if torch.cuda.is_current_stream_capturing():  # no event queries while a graph is captured
            return None
        newest = None
        while self._pending and self._pending[0][0].query():
            newest = self._pending.popleft()[1]
        return None if newest is None else newest.tolist()

    def read(self) -> list[int]:
        """``rec`` now (waits for the device)."""
        self._pending.clear()
        return self.rec.tolist()

    def clear_report(self) -> None:
        """The host has reported the first bad step: forget its name and release a sticky flag
        (device ops, queued after everything so far)."""
        self.rec[1:3].zero_()
        self.flag.zero_()


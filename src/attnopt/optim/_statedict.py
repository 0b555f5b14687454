"""MirrorDescent's state dict in torch's conventions: what it adds to torch's (the weights θ is
in step with, ``"synced_weights"``), its checks on load (a state dict of another optimizer is
refused; options a state dict from an older version lacks take their defaults), and the order
of torch's hooks around both — a ``load_state_dict`` pre-hook runs before the checks, so that it
can convert another optimizer's state dict; post-hooks run after MirrorDescent's own part.
Also the rule that a step which changed nothing is not counted.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from itertools import chain
from typing import Any, Callable

import torch
from torch import Tensor

from attnopt.optim._checks import REQUIRED_KEYS, check_group
from attnopt.optim._state import Batch, key, sync_dual

__all__ = ["state_dict", "load_state_dict", "changed_nothing"]


@contextlib.contextmanager
def _hooks_held(opt, name: str):
    """Hold back one of torch's hook tables (yielded) while torch's own method runs, so that the
    caller runs those hooks itself, before or after its part."""
    hooks = getattr(opt, name)
    setattr(opt, name, OrderedDict())
    try:
        yield hooks
    finally:
        setattr(opt, name, hooks)


def state_dict(opt, base: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """torch's state dict (``base``) plus, per parameter with a θ, ``"synced_weights"``: the
    weights θ is in step with (a reference, not a copy); θ is resynchronised first where the
    weights were edited since the optimizer's last write."""
    opt._report_deferred(wait=True, raise_error=False)
    opt._adopt_groups()
    opt._flush_versions()
    with _hooks_held(opt, "_optimizer_state_dict_post_hooks") as post:
        sd = base()
    for group, packed in zip(opt.param_groups, sd["param_groups"]):
        for param, index in zip(group["params"], packed["params"]):  # a repeated parameter: its first index
            state = opt.state.get(param)
            if state and "dual" in state and index in sd["state"] and "synced_weights" not in sd["state"][index]:
                if opt._versions.get(id(param)) != key(param):  # edited since our last write
                    sync_dual(param, state, group, index)
                    opt._forget_exact(param)
                    opt._versions[id(param)] = key(param)
                sd["state"][index] = dict(sd["state"][index], synced_weights=param.detach())
    for hook in post.values():
        result = hook(opt, sd)
        if result is not None:
            sd = result
    return sd


def load_state_dict(opt, state_dict: dict[str, Any], base: Callable[[dict[str, Any]], None]) -> None:
    """Pre-hooks, checks, torch's load (``base``, which fills missing options through
    ``__setstate__``), θ and momentum in their saved dtype, the groups' checks, post-hooks."""
    state_dict = state_dict.copy()
    for hook in opt._optimizer_load_state_dict_pre_hooks.values():
        result = hook(opt, state_dict)
        if result is not None:
            state_dict = result
    for gi, saved in enumerate(state_dict.get("param_groups", [])):
        missing = [k for k in REQUIRED_KEYS if k not in saved]
        if missing:
            keys = ", ".join(sorted(k for k in saved if k != "params"))
            raise ValueError(f"not a MirrorDescent state_dict: its param_groups[{gi}] has no {', '.join(missing)} "
                             f"(it has {keys}; torch.optim.SGD's, for one, has no p)")
        check_group(dict(opt.defaults, **{k: v for k, v in saved.items() if k != "params"}), gi, params=False)
    saved_state = state_dict["state"]
    with _hooks_held(opt, "_optimizer_load_state_dict_pre_hooks"), \
            _hooks_held(opt, "_optimizer_load_state_dict_post_hooks") as post:
        base(state_dict)
    id_map = dict(zip(chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                      chain.from_iterable(g["params"] for g in opt.param_groups)))
    for index, value in saved_state.items():
        param = id_map.get(index)
        if param is None:
            continue
        for name in ("dual", "momentum_buffer", "synced_weights"):  # torch cast them to the weights' dtype
            if isinstance(value.get(name), Tensor):
                opt.state[param][name] = value[name].to(device=param.device, copy=True)
    for gi, group in enumerate(opt.param_groups):
        check_group(group, gi)
    for hook in post.values():
        hook(opt)


def changed_nothing(groups: list[dict[str, Any]], batches: list[Batch]) -> bool:
    """Whether the step just taken was the identity: lr 0 in every group (host values) and
    every gradient and momentum buffer zero — the state initialisation of
    ``torch.distributed.checkpoint``'s state-dict helpers, which must not count as a step.
    Only a step with lr 0 everywhere pays for looking at the gradients."""
    for group in groups:
        lr = group["lr"]
        if isinstance(lr, Tensor) and (lr.device.type != "cpu" or torch.compiler.is_compiling()):
            return False
        if float(lr) != 0.0:
            return False
    tensors = [t for b in batches for t in chain(b.grads or (), (x for x in b.bufs if x is not None))]
    return all(not bool(t.any()) for t in tensors)

"""The training loop of K runs at once (K = 1: a single run).

Every member has its own model, optimiser, data order (its own generator) and stop rule; one
forward pass over the members' stacked parameters (:class:`attnopt.models.encoder.EncoderEnsemble`)
computes all their logits, and the backward pass of Σ_k loss_k gives member k exactly the
gradient of its own loss.  Per member and epoch: the summed loss and the running accuracy over
the epoch's batches in train mode (dropout on, as in the paper), then validation and test
accuracy in length-sorted batches.  A member freezes when its train accuracy reaches its
target, at its epoch limit, or when a ``STOP`` file appears in its folder (or the ensemble's).

The loss is checked for NaN/inf every ``nan_check_every`` steps (one host synchronisation per
check, not per step); a member with a non-finite loss stops with :class:`NonFiniteLoss`, its
last good checkpoint kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from attnopt.errors import UserError
from attnopt.experiments.imdb.batching import DeviceSplit, eval_batches, member_batch
from attnopt.experiments.imdb.checkpoint import CHECKPOINT
from attnopt.experiments.imdb.config import TrainConfig
from attnopt.experiments.imdb.execution import Dist, all_reduce, autocast
from attnopt.models.encoder import EncoderClassifier, EncoderEnsemble, Packed, Padded
from attnopt.runtime import ProgressFn, report

#: A file of this name in a run folder asks a running training to finish cleanly after the
#: current epoch (checkpoint, summary and report written; the same command continues it later).
STOP_FILE = "STOP"


class NonFiniteLoss(UserError, RuntimeError):
    """The training loss (or a gradient) became NaN or infinite; the run stopped with its last
    good checkpoint.  Exit code 3 on the command line."""

    exit_code = 3

    def __init__(self, epoch: int, step: int, value: float, checkpoint: str | None,
                 what: str = "training loss", run: str | None = None) -> None:
        self.epoch, self.step, self.value, self.checkpoint = epoch, step, value, checkpoint
        where = (f"the last good checkpoint is kept at {checkpoint}" if checkpoint
                 else "no checkpoint had been written yet")
        who = f"{run}: " if run else ""
        super().__init__(
            f"{who}non-finite {what} ({value}) at epoch {epoch}, step {step}; the run was stopped and {where}. "
            "Lower the learning rate (--lr) or use --precision fp32."
        )


@dataclass
class Member:
    """One run of the ensemble and everything it owns."""

    cfg: TrainConfig
    name: str
    model: EncoderClassifier
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator
    folder: Path | None
    history: list[dict] = field(default_factory=list)
    stop_reason: str | None = None
    error: NonFiniteLoss | None = None
    notes: list[str] = field(default_factory=list)
    #: the weights of the epoch of best validation accuracy so far (its first maximum), its
    #: epoch and accuracy; kept only when the run has a final test pass (``final_test``)
    best: dict[str, torch.Tensor] | None = None
    best_epoch: int | None = None
    best_val: float = float("-inf")
    #: the final test pass of the validation-selected weights, once the run has finished
    final: dict | None = None

    @property
    def active(self) -> bool:
        return self.stop_reason is None

    @property
    def checkpoint(self) -> Path | None:
        return None if self.folder is None else self.folder / CHECKPOINT

    def kept_checkpoint(self) -> str | None:
        ck = self.checkpoint
        return str(ck) if ck is not None and ck.is_file() else None


@dataclass
class Settings:
    """What every member shares: where and how the steps run."""

    device: torch.device
    precision: str
    pad: str
    loss: str
    reduction: str
    batch_size: int
    multiple: int
    eval_batch_size: int
    nan_check_every: int
    compile: bool
    dist: Dist
    progress: ProgressFn | None = None
    loss_hook: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None


# --------------------------------------------------------------------------- losses


def member_losses(logits: torch.Tensor, y: torch.Tensor, loss: str, reduction: str) -> torch.Tensor:
    """Per-member loss (K,) over the batch, computed in float32.

    ``bce``: binary cross-entropy of sigmoid(logit), computed stably from the logit;
    ``authors``: ``BCELoss`` on ``sigmoid(logit)`` as the authors' code does — its log is
    clamped at −100, so a confidently wrong review (sigmoid rounded to 0 or 1) gets zero gradient.
    """
    z = logits.float()
    if loss == "authors":
        per = F.binary_cross_entropy(torch.sigmoid(z), y, reduction="none")
    else:
        per = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    return per.sum(-1) if reduction == "sum" else per.mean(-1)


def correct_counts(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-member number of right predictions: sigmoid(logit) > 0.5 (the authors' rule, in
    float32) or logit > 0 — the same except where sigmoid rounds to exactly 0.5."""
    pred = torch.sigmoid(logits.float()) > 0.5 if loss == "authors" else logits.float() > 0
    return (pred == (y > 0.5)).sum(-1)


# --------------------------------------------------------------------------- steps


def train_step(fwd: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer], batch: Padded | Packed,
               y: torch.Tensor, s: Settings, grad_scale: float = 1.0,
               hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of every member (forward under autocast, loss, backward, optimiser steps); no
    host synchronisation.  Returns the detached (K,) losses and (K, B) logits.  A member whose
    optimiser raises ``FloatingPointError`` (MirrorDescent found a NaN gradient) is reported
    through :class:`_GradientError` after the other members have stepped."""
    with autocast(s.device, s.precision):
        logits = fwd(batch)
    losses = member_losses(logits, y, s.loss, s.reduction)
    if hook is not None:
        losses = hook(losses)
    total = losses.sum()
    (total * grad_scale if grad_scale != 1.0 else total).backward()
    bad: list[tuple[int, FloatingPointError]] = []
    for k, opt in enumerate(optimizers):
        try:
            opt.step()
        except FloatingPointError as exc:
            bad.append((k, exc))
        finally:
            opt.zero_grad(set_to_none=True)
    if bad:
        raise _GradientError(bad, losses.detach(), logits.detach())
    return losses.detach(), logits.detach()


class _GradientError(Exception):
    def __init__(self, bad, losses, logits) -> None:
        super().__init__("non-finite gradient")
        self.bad, self.losses, self.logits = bad, losses, logits


class _Forward:
    """The (compiled, DDP-wrapped) forward of the active members, rebuilt when they change."""

    def __init__(self, s: Settings) -> None:
        self.s, self.key, self.fwd = s, None, None

    def __call__(self, members: Sequence[Member]) -> torch.nn.Module:
        key = tuple(id(m) for m in members)
        if key != self.key:
            fwd: torch.nn.Module = EncoderEnsemble([m.model for m in members])
            if self.s.dist.active:
                from torch.nn.parallel import DistributedDataParallel as DDP

                dev = self.s.device
                fwd = DDP(fwd, device_ids=[dev.index] if dev.type == "cuda" else None)
            if self.s.compile:
                fwd = torch.compile(fwd)
            self.key, self.fwd = key, fwd
        return self.fwd


def train_epoch(members: list[Member], epoch: int, split: DeviceSplit, s: Settings,
                forward: _Forward) -> dict[int, tuple[float, float]]:
    """One pass of every active member over its own shuffle of ``split``.

    Returns ``{index in members: (mean loss per review, running accuracy)}`` for the members
    that finished the epoch; a member whose loss turns non-finite gets ``error`` and
    ``stop_reason="non_finite_loss"`` and leaves the epoch at once.
    """
    alive = [i for i, m in enumerate(members) if m.active]
    n, B, d = split.n, s.batch_size, s.dist
    n_steps = math.ceil(n / B)
    grad_scale = float(d.world) if s.reduction == "sum" else 1.0
    perms = {i: torch.randperm(n, generator=members[i].data_gen) for i in alive}
    for i in alive:
        members[i].model.train()
    sums = {i: torch.zeros(2, dtype=torch.float64, device=s.device) for i in alive}
    pending: list[tuple[list[int], torch.Tensor]] = []
    for step in range(n_steps):
        if not alive:
            break
        idx = [perms[i][step * B:(step + 1) * B] for i in alive]
        if d.active:
            idx = [x[d.rank::d.world] for x in idx]
        batch, y = member_batch(split, idx, s.pad, s.multiple)
        hook = None
        if s.loss_hook is not None:
            hook = (lambda v, _e=epoch + 1, _s=step + 1: s.loss_hook(_e, _s, v))  # noqa: E731
        fwd = forward([members[i] for i in alive])
        try:
            losses, logits = train_step(fwd, [members[i].optimizer for i in alive], batch, y, s, grad_scale, hook)
        except _GradientError as exc:
            for k, err in exc.bad:
                m, value = members[alive[k]], float(exc.losses[k])
                what = "training loss" if not math.isfinite(value) else f"gradient [{err}]"
                _fail(m, NonFiniteLoss(epoch + 1, step + 1, value if not math.isfinite(value) else float("nan"),
                                       m.kept_checkpoint(), what=what, run=m.name))
            losses, logits = exc.losses, exc.logits
        with torch.no_grad():
            scale = float(len(idx[0])) if s.reduction == "mean" else 1.0
            right = correct_counts(logits, y, s.loss)
            for k, i in enumerate(alive):
                sums[i][0] += losses[k].double() * scale
                sums[i][1] += right[k]
        pending.append((list(alive), losses))
        if len(pending) >= s.nan_check_every or step == n_steps - 1:
            _check_finite(members, pending, epoch + 1, step + 2 - len(pending), d)
            pending = []
        alive = [i for i in alive if members[i].active]
        report(s.progress, "steps", 1, n_steps)
    out = {}
    for i in alive:
        all_reduce(sums[i], d)
        loss_sum, right = sums[i].tolist()
        out[i] = (loss_sum / n, right / n)
    return out


def _fail(m: Member, err: NonFiniteLoss) -> None:
    if m.active:
        m.error, m.stop_reason = err, "non_finite_loss"


def _check_finite(members: list[Member], pending: list[tuple[list[int], torch.Tensor]], epoch: int,
                  first_step: int, d: Dist) -> None:
    """Fail every member whose loss was non-finite at one of the pending steps (one sync)."""
    width = len(members)
    vals = torch.full((len(pending), width), 0.0, dtype=torch.float32, device=pending[0][1].device)
    for j, (alive, losses) in enumerate(pending):
        vals[j, alive] = losses.float()
    bad = (~torch.isfinite(vals)).to(torch.int32)
    flags = all_reduce(bad.amax(0), d, op="max")  # every process stops the same members
    for i in torch.nonzero(flags).flatten().tolist():
        col = bad[:, i]
        j = int(torch.nonzero(col)[0, 0]) if bool(col.any()) else 0
        value = float(vals[j, i]) if bool(col.any()) else float("nan")
        m = members[i]
        _fail(m, NonFiniteLoss(epoch, first_step + j, value, m.kept_checkpoint(), run=m.name))


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_members(models: Sequence[EncoderClassifier], split: DeviceSplit, batch_size: int, precision: str,
                     multiple: int = 8, loss: str = "bce", d: Dist | None = None) -> list[tuple[float, float]]:
    """(mean loss, accuracy) of each model on ``split``, all models on each length-sorted batch."""
    if split.n == 0:
        return [(float("nan"), float("nan"))] * len(models)
    K = len(models)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    ens = EncoderEnsemble(list(models)).eval()  # a new module starts in training mode: dropout off here
    tot = torch.zeros(K, 2, dtype=torch.float64, device=split.device)
    per_batch = max(1, batch_size // K)  # K members share each batch's activations
    rank, world = (d.rank, d.world) if d is not None else (0, 1)
    with autocast(split.device, precision):
        for batch, y in eval_batches(split, per_batch, multiple, rank, world):
            logits = ens(batch)
            yy = y.expand(K, -1)
            tot[:, 0] += member_losses(logits, yy, loss, "sum").double()
            tot[:, 1] += correct_counts(logits, yy, loss)
    if d is not None:
        all_reduce(tot, d)
    for m, mode in zip(models, modes):
        m.train(mode)
    return [(a / split.n, b / split.n) for a, b in tot.tolist()]


def evaluate(model: EncoderClassifier, split: DeviceSplit, batch_size: int = 500, precision: str = "fp32",
             pad_multiple: int = 8, loss: str = "bce") -> tuple[float, float]:
    """(mean loss, accuracy) of one model on ``split`` (length-sorted batches)."""
    return evaluate_members([model], split, batch_size, precision, pad_multiple, loss)[0]


# --------------------------------------------------------------------------- epochs


def stop_requested(folders: Sequence[Path | None], d: Dist) -> bool:
    """Whether a STOP file exists in any of ``folders`` (agreed over the processes)."""
    flag = torch.tensor([int(any(f is not None and (f / STOP_FILE).exists() for f in folders))])
    return bool(all_reduce(flag, d, op="max").item())


def keep_best(m: Member, epoch: int, val_acc: float) -> None:
    """Remember member m's weights when ``val_acc`` beats its best (the first maximum wins, as
    in :func:`~attnopt.experiments.imdb.train.summarize_history`)."""
    if math.isfinite(val_acc) and val_acc > m.best_val:
        m.best = {k: v.detach().clone() for k, v in m.model.state_dict().items()}
        m.best_epoch, m.best_val = epoch, val_acc


def final_test(members: Sequence[Member], split: DeviceSplit, s: Settings) -> None:
    """Score each member's validation-selected weights (its last weights if no validation
    accuracy was finite) once on the fixed final test split; the result goes to ``m.final``."""
    import copy

    models = []
    for m in members:
        model = copy.deepcopy(m.model)
        if m.best is not None:
            model.load_state_dict(m.best)
        models.append(model)
    scores = evaluate_members(models, split, s.eval_batch_size, s.precision, s.multiple, s.loss, s.dist)
    for m, (loss, acc) in zip(members, scores):
        m.final = {"final_test_acc": acc, "final_test_loss": loss, "final_test_epoch": m.best_epoch or len(m.history),
                   "final_test_n": split.n}


FINISHED = ("target_train_acc", "max_epochs")


def run_epochs(members: list[Member], start_epoch: int, splits: tuple[DeviceSplit, DeviceSplit, DeviceSplit],
               s: Settings, on_epoch: Callable[[Member, bool], None], root: Path | None = None,
               final: DeviceSplit | None = None, on_round: Callable[[], None] | None = None) -> None:
    """Epochs until every member has stopped; ``on_epoch(member, finished)`` after each of a
    member's epochs (and when it stops on a non-finite loss), ``on_round()`` after the
    ``on_epoch`` calls of one epoch's members (where a save round commits).  With a ``final`` split, each
    member's validation-selected weights are kept and scored on it once the member has
    finished (train-accuracy target or epoch limit), before its last ``on_epoch``."""
    train, val, test = splits
    forward = _Forward(s)
    epoch = start_epoch
    limit = max(m.cfg.max_epochs for m in members)
    while any(m.active for m in members) and epoch < limit:
        t0 = time.perf_counter()
        before = [m.active for m in members]
        results = train_epoch(members, epoch, train, s, forward)
        failed = [m for m, was in zip(members, before) if was and m.error is not None]
        for m in failed:
            on_epoch(m, True)
        if failed and on_round is not None:
            on_round()
        t_train = time.perf_counter() - t0
        done = [members[i] for i in results]
        if not done:
            break
        evals = [evaluate_members([m.model for m in done], sp, s.eval_batch_size, s.precision, s.multiple, s.loss,
                                  s.dist) for sp in (val, test)]
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        t_epoch = time.perf_counter() - t0
        ended = []
        for k, (i, (train_loss, train_acc)) in enumerate(results.items()):
            m = members[i]
            (val_loss, val_acc), (test_loss, test_acc) = evals[0][k], evals[1][k]
            m.history.append({
                "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
                "train_time_s": t_train, "epoch_time_s": t_epoch,
                "train_reviews_per_s": train.n / t_train if t_train > 0 else float("nan"),
                "members": len(done),
            })
            if final is not None:
                keep_best(m, epoch + 1, val_acc)
            if train_acc >= m.cfg.target_train_acc:
                m.stop_reason = "target_train_acc"
            elif stop_requested([m.folder, root], s.dist):
                m.stop_reason = "stop_file"
            elif epoch + 1 >= m.cfg.max_epochs:
                m.stop_reason = "max_epochs"
            ended.append(m)
        if final is not None:
            finished = [m for m in ended if m.stop_reason in FINISHED and m.final is None]
            if finished:
                final_test(finished, final, s)
        for m in ended:
            on_epoch(m, not m.active)
        if on_round is not None:
            on_round()
        report(s.progress, "epochs", 1, limit)
        epoch += 1


__all__ = ["Member", "Settings", "NonFiniteLoss", "STOP_FILE", "FINISHED", "train_step", "train_epoch", "evaluate",
           "evaluate_members", "member_losses", "correct_counts", "run_epochs", "stop_requested", "keep_best",
           "final_test"]

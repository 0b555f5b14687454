"""E3 / E6: training the encoder classifier on IMDB (or SST-2): one run (:func:`run_train`) or
a seed ensemble trained together in one process (:func:`run_ensemble`).

Protocol (the paper's code, with the parts it leaves open made parameters; see
:mod:`attnopt.experiments.imdb.config` for the ``honest`` and ``paper`` presets):

* model: :class:`attnopt.models.encoder.EncoderClassifier`, size s = blocks = heads;
* loss: binary cross-entropy of sigmoid(logit), **summed** over the batch of 100, reshuffled
  every epoch; plain optimiser steps (no schedule, no clipping);
* train accuracy is the running accuracy over the epoch's batches in train mode; a run stops
  at ``target_train_acc`` (99.5 %) or after ``max_epochs`` (1,000);
* after every epoch: validation and test accuracy.  Reported, clearly labelled:
  ``honest_test_acc`` — test accuracy at the epoch of best validation accuracy (only when the
  validation split is held out), and ``paper_best_test_acc`` — the best test accuracy over
  all epochs (the paper's number; it selects on the test set and is optimistic).

A run folder holds config.json (the run's identity), history.csv and summary.json (rewritten
after every epoch, ``"complete": true`` once finished), report.md and checkpoint.pt (written
atomically after every epoch, so the same command resumes an interrupted run bit for bit).
An ensemble's folder holds one such folder per member, plus its own config and summary.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from attnopt.config import config_error
from attnopt.errors import CheckpointError, RunFolderError
from attnopt.experiments.imdb.batching import DeviceSplit
from attnopt.experiments.imdb.checkpoint import (CHECKPOINT, commit, pending, read_checkpoint, rng_state,
                                                 save_checkpoint, set_rng_state, settle)
from attnopt.experiments.imdb.config import PAPER_E3, EnsembleConfig, TrainConfig
from attnopt.experiments.imdb.engine import STOP_FILE, Member, NonFiniteLoss, Settings, run_epochs
from attnopt.experiments.imdb.execution import (Dist, barrier, execution_scope, make_optimizer, resolve_device,
                                                setup_distributed, teardown_distributed)
from attnopt.models.encoder import EncoderClassifier
from attnopt.report.runs import RunDir, as_run_dir
from attnopt.report.tables import pct
from attnopt.runtime import ProgressFn

EXPERIMENT = "imdb-train"
ENSEMBLE = "imdb-ensemble"


@dataclass
class TrainResult:
    """One run: its folder (None when nothing was written), summary, per-epoch history, and
    what happened besides (resumed, already finished, a stale STOP file removed)."""

    out: Path | None
    config: TrainConfig
    summary: dict
    history: list[dict]
    notes: list[str] = field(default_factory=list)
    error: NonFiniteLoss | None = None


@dataclass
class EnsembleResult:
    """Every member's :class:`TrainResult` (folders ``out/<name>``) and the ensemble's summary."""

    out: Path | None
    config: EnsembleConfig
    members: list[TrainResult]
    summary: dict

    @property
    def errors(self) -> list[NonFiniteLoss]:
        return [m.error for m in self.members if m.error is not None]


def run_record(cfg: TrainConfig) -> dict:
    """What a run folder's config.json records: the run's identity (see ``TrainConfig.identity``)."""
    return cfg.identity()


def ensemble_record(cfg: EnsembleConfig) -> dict:
    return {"members": [m.identity() for m in cfg.members], "names": list(cfg.names)}


def check_resumable(path: Path, record: dict, experiment: str = EXPERIMENT) -> None:
    """Refuse, naming the keys, a folder holding a run of this experiment with another identity."""
    try:
        stored = json.loads((Path(path) / "config.json").read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(stored, dict) or stored.get("experiment") != experiment:
        return
    now = json.loads(json.dumps(record, default=str))
    stored = {k: v for k, v in stored.items() if k != "experiment"}
    keys = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
    if keys:
        detail = ", ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in keys[:6])
        raise RunFolderError(f"cannot resume {path}: it holds a run of another configuration ({detail}); "
                             "pass --overwrite to replace it, or choose another --out")


# --------------------------------------------------------------------------- public entry points


def run_train(config: TrainConfig | dict, *, out: str | Path | RunDir | None = None, progress: ProgressFn | None = None,
              resume: bool = True, data=None, data_root=None, cache=None,
              _loss_hook: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None) -> TrainResult:
    """Train (or resume) one run; ``out`` its run folder (None: write nothing).

    ``data`` (a :class:`~attnopt.data.reviews.ReviewData`) may be given directly (tests);
    otherwise it is loaded from the shared folder (``data_root``) through the token ``cache``.
    Raises :class:`NonFiniteLoss` (exit code 3) when the loss turns NaN/inf.
    """
    cfg = TrainConfig.coerce(config)
    cfg.resolved_lr()  # a missing default learning rate is reported before any work
    dist = setup_distributed(cfg.device)
    try:
        folder = _open(out, run_record(cfg), EXPERIMENT, resume, dist)
        (member,) = _train([cfg], [folder], None, resume, dist, progress, data, data_root, cache, _loss_hook)
    finally:
        teardown_distributed(dist)
    if member.error is not None:
        raise member.error
    return member


def run_ensemble(config: EnsembleConfig | dict, *, out: str | Path | RunDir | None = None,
                 progress: ProgressFn | None = None, resume: bool = True, data=None, data_root=None, cache=None,
                 _loss_hook: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None) -> EnsembleResult:
    """Train the members of ``config`` together (one process, one forward pass per step);
    member k writes ``out/<names[k]>`` in the format of a single run and reproduces the single
    run of its configuration up to float rounding (its own init, data order and stop rule).
    A member stopped by a non-finite loss is reported in the result; the others go on."""
    cfg = EnsembleConfig.coerce(config)
    for m in cfg.members:
        m.resolved_lr()
    dist = setup_distributed(cfg.members[0].device)
    try:
        if dist.active:
            raise config_error(cfg, "members: an ensemble runs in one process; under torchrun train each seed "
                                    "alone (--no-ensemble)")
        root = _open(out, ensemble_record(cfg), ENSEMBLE, resume, dist)
        folders = [None if root is None else root / name for name in cfg.names]
        results = _train(list(cfg.members), folders, root, resume, dist, progress, data, data_root, cache, _loss_hook,
                         names=list(cfg.names))
    finally:
        teardown_distributed(dist)
    summary = ensemble_summary(cfg, results)
    if root is not None:
        RunDir(root).write_summary(summary, complete=all(r.error is None for r in results))
    return EnsembleResult(root, cfg, results, summary)


# --------------------------------------------------------------------------- set-up


def _open(out, record: dict, experiment: str, resume: bool, dist: Dist) -> Path | None:
    """The run folder (opened by rank 0 only: under torchrun the others just use the path)."""
    if out is None:
        return None
    if isinstance(out, RunDir):
        path = out.path
    else:
        path = Path(out)
        if dist.rank == 0:
            if resume:
                check_resumable(path, record, experiment)
            as_run_dir(path, record, experiment=experiment, resumable=resume)
    barrier(dist)
    return path


def _load_data(cfg: TrainConfig, data, data_root, cache, dist: Dist, progress):
    if data is not None:
        return data
    from attnopt.data.reviews import load_reviews

    if dist.active and dist.rank != 0:
        barrier(dist)  # rank 0 tokenises and fills the cache first
    data = load_reviews(cfg.dataset, cfg.max_len, cfg.subset, cfg.eval_subset, cfg.data_seed,
                        cfg.resolved_val_in_train(), cfg.clean_html, data_root=data_root, cache=cache,
                        progress=progress if dist.rank == 0 else None, final_test=cfg.final_test)
    if dist.active and dist.rank == 0:
        barrier(dist)
    return data


def _dropout_seed(cfgs: Sequence[TrainConfig], rank: int) -> int:
    """Seed of the dropout stream: a single run's depends on its seed (and the process); an
    ensemble's on all its members."""
    if len(cfgs) == 1:
        base = cfgs[0].seed
    else:
        base = zlib.crc32(repr([sorted(c.identity().items()) for c in cfgs]).encode())
    return (base * 1_000_003 + 7919 * (rank + 1)) % (2**63)


def _member(cfg: TrainConfig, name: str, folder: Path | None, device: torch.device, resume: bool,
            dist: Dist) -> tuple[Member, dict | None]:
    torch.manual_seed(cfg.resolved_init_seed())
    model = EncoderClassifier(cfg.model_config()).to(device)
    m = Member(cfg, name, model, make_optimizer(cfg, model.parameters(), device),
               torch.Generator().manual_seed(cfg.seed), folder)
    ck_path = m.checkpoint
    if not (resume and ck_path is not None and ck_path.is_file()):
        return m, None
    ck = read_checkpoint(ck_path)
    saved = {k: v for k, v in (ck.get("config") or {}).items()}
    if TrainConfig.from_dict({k: v for k, v in saved.items() if k in cfg.to_dict()}).identity() != cfg.identity():
        raise RunFolderError(f"cannot resume {ck_path}: it was written by a run of another configuration; "
                             "pass --overwrite to replace it, or choose another --out")
    if len(ck["rng"]) != dist.world:
        raise CheckpointError(f"cannot resume {ck_path}: it was written by {len(ck['rng'])} process(es), "
                              f"this run has {dist.world}")
    try:
        model.load_state_dict(ck["model"])
        m.optimizer.load_state_dict(ck["optimizer"])
        m.data_gen.set_state(ck["data_gen"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {ck_path} does not fit this run ({str(exc).splitlines()[0]}); "
                              "start over with --no-resume") from None
    m.history = list(ck["history"])
    m.best, m.best_epoch, m.final = ck.get("best"), ck.get("best_epoch"), ck.get("final")
    m.best_val = float(ck.get("best_val", float("-inf")))
    if ck.get("stop_reason") == "target_train_acc" or ck["epoch"] >= cfg.max_epochs:
        m.stop_reason = ck.get("stop_reason") or "max_epochs"
        m.notes.append(f"{folder}: already finished ({ck['epoch']} epochs, {m.stop_reason}); nothing to do")
    else:
        m.notes.append(f"resuming {folder} after epoch {ck['epoch']}")
    return m, ck


def _train(cfgs: list[TrainConfig], folders: list[Path | None], root: Path | None, resume: bool, dist: Dist,
           progress, data, data_root, cache, loss_hook, names: list[str] | None = None) -> list[TrainResult]:
    base = cfgs[0]
    device = resolve_device(base.device, dist)
    precision = base.resolved_precision(device.type)
    with execution_scope(tf32=base.protocol == "paper" and device.type == "cuda" and precision == "fp32"):
        data = _load_data(base, data, data_root, cache, dist, progress)
        if len(data.train) == 0:
            from attnopt.data.reviews import ReviewDataError

            raise ReviewDataError("the training split is empty")
        names = names or [c.run_name() for c in cfgs]
        commits = root if root is not None else folders[0]  # where a save round's commit file goes
        settled = []
        if resume and commits is not None:
            if dist.rank == 0:
                settled = settle([f / CHECKPOINT for f in folders if f is not None], commits)
            barrier(dist)  # every process reads the settled checkpoints
        members, cks = zip(*(_member(c, n, f, device, resume, dist) for c, n, f in zip(cfgs, names, folders)))
        members = list(members)
        members[0].notes[:0] = settled
        active = [(m, ck) for m, ck in zip(members, cks) if m.active]
        epochs = {ck["epoch"] if ck else 0 for _, ck in active}
        if len(epochs) > 1:
            raise CheckpointError(f"the members' checkpoints stop at different epochs {sorted(epochs)} (interrupted "
                                  "while saving?); start over with --no-resume")
        start = epochs.pop() if epochs else 0
        resumed = [ck for _, ck in active if ck]
        if resumed:
            set_rng_state(resumed[0]["rng"][dist.rank], device)
        else:
            torch.manual_seed(_dropout_seed(cfgs, dist.rank))
        s = Settings(device, precision, base.resolved_pad(device.type), base.resolved_loss(), base.loss_reduction,
                     base.batch_size, base.pad_multiple, base.eval_batch_size, base.nan_check_every, base.compile,
                     dist, progress, loss_hook)
        if dist.rank == 0:
            _remove_stale_stops(members, root)
        splits = tuple(DeviceSplit(data.split(n), device) for n in ("train", "val", "test"))
        final = None
        if base.final_test is not None:
            if data.final is None:
                raise config_error(base, "final_test: the data given has no final test split "
                                         "(load it with load_reviews(final_test=...))")
            final = DeviceSplit(data.final, device)
        extra = {"device": str(device), "precision": precision, "pad": s.pad, "loss": s.loss,
                 "world_size": dist.world, "members": len(members), "data_sizes": data.sizes()}
        ens = {"names": names} if root is not None else None
        round_: list[tuple[Member, bool, bool]] = []

        def on_epoch(m: Member, finished: bool) -> None:
            round_.append((m, finished, _save(m, finished, dist, device, ens)))

        def on_round() -> None:
            """Phase 2 of the round's save, then the members' histories and summaries."""
            if dist.rank == 0 and commits is not None:
                commit([m.checkpoint for m, _, saved in round_ if saved], commits)
            for m, finished, _ in round_:
                _record(m, finished, extra, dist, ens)
            round_.clear()

        if any(m.active for m in members):
            run_epochs(members, start, splits, s, on_epoch, root, final, on_round)
    return [TrainResult(m.folder, m.cfg, _summary(m, extra), m.history, m.notes, m.error) for m in members]


def _remove_stale_stops(members: Sequence[Member], root: Path | None) -> None:
    for folder, m in [(root, None)] + [(m.folder, m) for m in members]:
        if folder is not None and (folder / STOP_FILE).exists():
            (folder / STOP_FILE).unlink()
            (m or members[0]).notes.append(f"removed {folder / STOP_FILE} left from an earlier stop")


def _save(m: Member, finished: bool, dist: Dist, device: torch.device, ens: dict | None) -> bool:
    """Phase 1 of a save round (every ``checkpoint_every`` epochs and at the end): the member's
    pending checkpoint (on every process: the generators' gather is collective); whether it saved."""
    if m.folder is None:
        return False
    epoch = len(m.history)
    if m.error is None and (finished or epoch % m.cfg.checkpoint_every == 0):
        states = [rng_state(device)]
        if dist.active:
            import torch.distributed as tdist

            states = [None] * dist.world
            tdist.all_gather_object(states, rng_state(device))
        if dist.rank == 0:
            save_checkpoint(pending(m.checkpoint), config=m.cfg.to_dict(), epoch=epoch, model=m.model,
                            optimizer=m.optimizer, data_gen=m.data_gen, rng=states, history=m.history,
                            stop_reason=m.stop_reason if finished else None,
                            ensemble=None if ens is None else ens | {"name": m.name},
                            best={"best": m.best, "best_epoch": m.best_epoch, "best_val": m.best_val, "final": m.final})
        return True
    return False


def _record(m: Member, finished: bool, extra: dict, dist: Dist, ens: dict | None) -> None:
    """History, summary and report of a member after its round committed (rank 0)."""
    if m.folder is None or dist.rank != 0:
        return
    run = RunDir(m.folder)
    if ens is not None and not (m.folder / "config.json").is_file():
        run.write_config(run_record(m.cfg), EXPERIMENT)
    run.write_csv("history.csv", rows=m.history)
    summary = _summary(m, extra)
    # a run cut short by a STOP file is resumable, not finished: it is not marked complete
    run.write_summary(summary, complete=finished and m.error is None and m.stop_reason != "stop_file")
    if finished and m.error is None:
        run.write_report(run_report(m.cfg, summary))


# --------------------------------------------------------------------------- summaries


def summarize_history(history: Sequence[dict], held_out_val: bool = True, final: dict | None = None) -> dict:
    """Headline numbers of a run from its per-epoch history (accuracies as fractions).

    ``held_out_val=False`` (validation inside the training data, the paper protocol): no
    honest number, since validation accuracy no longer selects on held-out data.  ``final``
    (the final test pass of the validation-selected weights, ``final_test``) makes the honest
    number that pass's accuracy; the per-epoch test accuracy there stays as
    ``honest_epoch_test_acc``."""
    if not history:
        return {"epochs": 0}
    val = np.array([h["val_acc"] for h in history], dtype=float)
    test = np.array([h["test_acc"] for h in history], dtype=float)
    best_val = int(np.nanargmax(val)) if np.isfinite(val).any() else len(history) - 1
    best_test = int(np.nanargmax(test)) if np.isfinite(test).any() else len(history) - 1
    out = {"epochs": len(history)}
    if held_out_val:
        out |= {
            "honest_test_acc": float(test[best_val]),
            "honest_note": "test accuracy at the epoch of best validation accuracy (selection on held-out train data)",
            "best_val_acc": float(val[best_val]),
            "best_val_epoch": best_val + 1,
        }
    else:
        out |= {"honest_test_acc": None, "honest_note": "none: the validation reviews were trained on (paper protocol)",
                "best_val_epoch": None}
    if held_out_val and final is not None:
        out |= {"honest_epoch_test_acc": out["honest_test_acc"], "honest_test_acc": final["final_test_acc"],
                "honest_note": f"accuracy of the validation-selected weights (epoch {final['final_test_epoch']}) on "
                               f"the fixed {final['final_test_n']}-review held-out test subset", **final}
    return out | {
        "paper_best_test_acc": float(test[best_test]),
        "paper_note": "best test accuracy over epochs, as the paper reports it (selects on the test set: optimistic)",
        "paper_best_test_epoch": best_test + 1,
        "last_test_acc": float(test[-1]),
        "last_val_acc": float(val[-1]),
        "final_train_acc": float(history[-1]["train_acc"]),
        "final_train_loss": float(history[-1]["train_loss"]),
        "mean_epoch_time_s": float(np.mean([h.get("epoch_time_s", float("nan")) for h in history])),
    }


def _summary(m: Member, extra: dict) -> dict:
    cfg = m.cfg
    out = summarize_history(m.history, not cfg.resolved_val_in_train(), m.final) | {
        "stop_reason": m.stop_reason, "running": m.active, "optimizer": cfg.optimizer_label(),
        "lr": cfg.resolved_lr(), "dataset": cfg.dataset, "size": cfg.size, "seed": cfg.seed,
        "init_seed": cfg.resolved_init_seed(), "protocol": cfg.protocol, "max_epochs": cfg.max_epochs, **extra,
    }
    if m.error is not None:
        out["error"] = str(m.error)
    return out


def ensemble_summary(cfg: EnsembleConfig, results: Sequence[TrainResult]) -> dict:
    rows = [{"name": n, "seed": r.config.seed, "optimizer": r.config.optimizer_label(), "lr": r.config.resolved_lr(),
             **{k: r.summary.get(k) for k in ("epochs", "stop_reason", "honest_test_acc", "paper_best_test_acc",
                                              "last_test_acc", "mean_epoch_time_s")}}
            for n, r in zip(cfg.names, results)]
    return {"members": rows, "failed": [n for n, r in zip(cfg.names, results) if r.error is not None]}


def run_report(cfg: TrainConfig, s: dict) -> str:
    """report.md of a finished run."""
    def p(x: Any) -> str:
        return "–" if x is None or not math.isfinite(x) else pct(x) + " %"

    honest = (f"- **honest** test accuracy (at best validation epoch {s['best_val_epoch']}): {p(s['honest_test_acc'])}"
              if s.get("honest_test_acc") is not None else f"- no honest number: {s.get('honest_note')}")
    lines = [
        f"# {cfg.dataset.upper()} — {cfg.optimizer_label()}, size {cfg.size}, seed {cfg.seed}",
        "",
        f"- protocol {cfg.protocol}; learning rate {cfg.resolved_lr():g}, batch {cfg.batch_size}, loss "
        f"{s.get('loss')} ({cfg.loss_reduction}), max_len {cfg.max_len}, subset {cfg.subset or 'all'}, initial "
        f"weights from seed {cfg.resolved_init_seed()}",
        f"- epochs run: {s['epochs']} (stopped by {s['stop_reason']})",
        honest,
        f"- paper-style best test accuracy over epochs (epoch {s['paper_best_test_epoch']}; selects on test): "
        f"{p(s['paper_best_test_acc'])}",
        f"- last-epoch test accuracy: {p(s['last_test_acc'])}; final train accuracy {p(s['final_train_acc'])}",
        f"- mean epoch time: {s['mean_epoch_time_s']:.2f} s on {s['device']} ({s['precision']}, pad {s['pad']}, "
        f"{s['members']} member(s) in the process)",
    ]
    if cfg.optimizer == "md" and (round(cfg.p, 6), cfg.size) in PAPER_E3 and cfg.dataset == "imdb":
        m, sd, last, ep = PAPER_E3[(round(cfg.p, 6), cfg.size)]
        lines.append(f"- paper (10 seeds): best test {m:.2f} ± {sd:.2f} % [last {last:.2f} %], {ep} epochs")
    return "\n".join(lines)


__all__ = ["run_train", "run_ensemble", "TrainResult", "EnsembleResult", "summarize_history", "run_report",
           "run_record", "ensemble_record", "check_resumable", "EXPERIMENT", "ENSEMBLE"]

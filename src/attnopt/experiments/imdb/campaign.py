"""The IMDB / SST-2 campaign: train the plan's missing trials within a time budget and leave a
small record per finished trial (:mod:`.records`), so that the record accumulates across
machines and short GPU windows.

``run_campaign(config, out=RESULTS)``:

1. reads the plan (:mod:`.plan`) and the complete records under ``RESULTS/records``; a trial
   counts only when its record is complete;
2. groups the missing trials into ensembles (members share everything but seeds, optimiser,
   p and learning rate; at most ``max_members`` each), resuming first any ensemble left in the
   work folder by an earlier call;
3. trains each ensemble (:func:`~attnopt.experiments.imdb.train.run_ensemble`) in the work
   folder (outside the records, checkpoints included) until the budget ends: then a ``STOP``
   file makes every member finish its epoch, checkpoint and stop; the next call resumes them;
4. writes the record of every member that finished (train-accuracy stop or epoch limit) and
   removes an ensemble's work folder once all its members are recorded.

The budget bounds training; a record takes a few evaluations more (seconds on a GPU).

Any number of workers may run on one results folder (``docs/campaign_cluster.md``): a worker
claims the members of an ensemble (:mod:`.claims`, all of them or none) before training it and
releases them once recorded; it skips trials other workers hold, takes over stale claims, and
rescans the records after each ensemble, until nothing it may claim is left or the budget is
spent.  ``shard=(K, N)`` restricts a worker to its part of the plan (:mod:`.shards`).  The
work folder should be shared as well (then a taken-over trial resumes from its checkpoint;
otherwise it starts again from scratch).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from attnopt.config import ConfigMixin, check_bool, check_float, check_int, check_sequence, config_error
from attnopt.experiments.imdb.claims import STALE_AFTER_S, Claims
from attnopt.experiments.imdb.config import EnsembleConfig, TrainConfig
from attnopt.experiments.imdb.engine import STOP_FILE
from attnopt.experiments.imdb.plan import Plan, PlanError, Trial, identity_key, load_plan, resolve_sweeps
from attnopt.experiments.imdb.records import RecordExists, find_records, record_complete
from attnopt.experiments.imdb.shards import group_trials, in_shard, parse_shard
from attnopt.runtime import ProgressFn, report

FINISHED = ("target_train_acc", "max_epochs")


@dataclass(frozen=True)
class CampaignConfig(ConfigMixin):
    """``plan`` (TOML path), ``budget`` (seconds of training), ``work`` (checkpoints of trials in
    progress; default ``runs/campaign-work``), ``only`` (cell-name prefixes), ``device`` and
    ``compile`` (override the plan's: they do not change a trial's identity), ``max_members``
    (overrides the plan's ensemble sizes), ``dry_run``, ``shard`` (``"K/N"``: this worker's part
    of the plan), ``stale_after`` (seconds without a heartbeat after which another worker's
    claim is taken over), ``steal_stale`` (take over at once every claim not held by a live
    process on this host)."""

    plan: str = ""
    budget: float = 480.0
    work: str | None = None
    only: tuple = ()
    device: str | None = None
    compile: bool | None = None
    max_members: int | None = None
    dry_run: bool = False
    shard: str | None = None
    stale_after: float = STALE_AFTER_S
    steal_stale: bool = False

    def __post_init__(self) -> None:
        if not str(self.plan):
            raise config_error(self, "plan: give the plan file")
        object.__setattr__(self, "budget", check_float(self, "budget", self.budget, gt=0.0))
        object.__setattr__(self, "only", check_sequence(self, "only", self.only, lambda o, n, v: str(v),
                                                        allow_empty=True))
        check_bool(self, "dry_run", self.dry_run)
        if self.compile is not None:
            check_bool(self, "compile", self.compile)
        if self.max_members is not None:
            object.__setattr__(self, "max_members", check_int(self, "max_members", self.max_members, 1))
        if self.shard is not None:
            k, n = parse_shard(self.shard)
            object.__setattr__(self, "shard", f"{k}/{n}")
        object.__setattr__(self, "stale_after", check_float(self, "stale_after", self.stale_after, gt=0.0))
        check_bool(self, "steal_stale", self.steal_stale)

    def shard_spec(self) -> tuple[int, int] | None:
        return parse_shard(self.shard)

    def work_dir(self) -> Path:
        return Path(self.work) if self.work else Path("runs") / "campaign-work"


@dataclass
class CampaignResult:
    out: Path | None
    status: list[dict]                 # per cell: planned, complete, missing, waiting
    recorded: list[Path] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)   # trials stopped by the budget (resumable)
    not_started: list[str] = field(default_factory=list)   # trials the budget left no time for
    failed: list[str] = field(default_factory=list)        # trials stopped by a non-finite loss
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    missing: int = 0                                      # distinct trials not yet recorded
    shard: list[str] = field(default_factory=list)        # dry run with a shard: its missing trials
    claimed_elsewhere: list[str] = field(default_factory=list)  # left to the other workers holding them


def count_missing(plan: Plan, complete: dict) -> int:
    """Distinct planned trials without a complete record (a cell waiting for its sweep counts
    all its seeds)."""
    waiting = sum(len(c.seeds) for c in plan.cells if c.lr_sweep is not None and not c.trials)
    return waiting + sum(1 for t in plan.trials() if t.key not in complete)


def complete_records(results: Path | None) -> dict[str, dict]:
    """Trial key -> summary of every complete record under ``results/records``."""
    if results is None or not (Path(results) / "records").is_dir():
        return {}
    out = {}
    for rec in find_records(Path(results) / "records"):
        try:
            summary = json.loads((rec / "summary.json").read_text())
        except (OSError, ValueError):  # moved away since the scan
            continue
        out[summary["record"]["trial"]] = summary | {"_path": str(rec)}
    return out


def plan_status(plan: Plan, complete: dict[str, dict], sweeps: dict[str, dict]) -> list[dict]:
    owner = {t.key: t.cell for t in plan.trials()}
    rows = []
    for c in plan.cells:
        done = [t for t in c.trials if t.key in complete]
        shared = sorted({owner[t.key] for t in c.trials if owner[t.key] != c.name})
        waiting = c.lr_sweep is not None and not c.trials
        planned = len(c.seeds)
        rows.append({"cell": c.name, "group": c.group, "planned": planned, "complete": len(done),
                     "missing": planned - len(done),
                     "missing_seeds": [t.config.seed for t in c.trials if t.key not in complete] if c.trials
                     else list(c.seeds),
                     "waiting_for": f"sweep {c.lr_sweep}" if waiting else None,
                     "same_trials_as": shared,
                     "lr": sweeps[c.name]["lr"] if c.name in sweeps else (c.trials[0].config.resolved_lr()
                                                                          if c.trials else None)})
    return rows


def _work_name(keys: list[str]) -> str:
    return "ens-" + hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:12]


def _stored_ensemble(folder: Path) -> tuple[list[str], list[str]] | None:
    """(member trial keys, names) of an ensemble left in the work folder, or None."""
    try:
        stored = json.loads((folder / "config.json").read_text())["config"]
        members = [TrainConfig.from_dict({k: v for k, v in m.items() if k in TrainConfig.__dataclass_fields__})
                   for m in stored["members"]]
        return [identity_key(m) for m in members], list(stored["names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def schedule(plan: Plan, pending: list[Trial], complete: dict, work: Path,
             max_members: int | None = None, exclude: set | frozenset = frozenset()
             ) -> list[tuple[list[Trial], tuple | None]]:
    """Ensembles to train, in order: (trials, names or None). Ensembles left in ``work`` whose
    members are all in the plan, some still missing and none in ``exclude`` (claimed by another
    worker, or of another shard) come first, as they were; the rest are grouped by what members
    must share, at most ``max_members`` (default: the plan's) each."""
    by_key = {t.key: t for t in plan.trials()}
    left = {t.key: t for t in pending}
    groups: list[tuple[list[Trial], tuple | None]] = []
    for folder in sorted(work.glob("ens-*")) if work.is_dir() else []:
        stored = _stored_ensemble(folder)
        if stored is None:
            continue
        keys, names = stored
        if all(k in by_key for k in keys) and any(k in left for k in keys) and not any(k in exclude for k in keys):
            groups.append(([by_key[k] for k in keys], tuple(names)))
            for k in keys:
                left.pop(k, None)
    return groups + [(g, None) for g in group_trials(plan, list(left.values()), max_members)]


class _Deadline:
    """Keeps a STOP file in ``folder`` once the deadline has passed (the training loop removes a
    stale STOP at its start, so it is re-created until the loop ends)."""

    def __init__(self, folder: Path, deadline: float) -> None:
        self.folder, self.deadline = folder, deadline
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            if time.monotonic() >= self.deadline and self.folder.is_dir() and not (self.folder / STOP_FILE).exists():
                (self.folder / STOP_FILE).touch()

    def __enter__(self) -> "_Deadline":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        (self.folder / STOP_FILE).unlink(missing_ok=True)


def run_campaign(config: CampaignConfig | dict, *, out: str | Path | None = None, progress: ProgressFn | None = None,
                 data=None, data_root=None, cache=None) -> CampaignResult:
    """Train the plan's missing trials into records under ``out`` (the results folder) within
    ``config.budget`` seconds.  ``out=None`` or ``dry_run``: only the status, nothing trained.
    ``data`` (a ReviewData) stands in for the plan's dataset (tests)."""
    t0 = time.monotonic()
    cfg = CampaignConfig.coerce(config)
    plan = load_plan(cfg.plan)
    results = None if out is None else Path(out)
    complete = complete_records(results)
    pending = _pending(plan, complete, cfg, results)
    res = CampaignResult(results, plan_status(plan, complete, resolve_sweeps(plan, complete)),
                         missing=count_missing(plan, complete))
    if cfg.shard is not None:
        res.shard = [f"{t.cell}/{t.name}" for t in pending]
    if results is None or cfg.dry_run or not pending:
        return res
    work = cfg.work_dir()
    deadline = t0 + cfg.budget
    loaded: dict = {}
    tried: set[str] = set()    # trials this worker has trained (recorded, stopped or failed)
    with Claims(results / "claims", stale_after=cfg.stale_after, steal_stale=cfg.steal_stale) as claims:
        while pending:
            busy = claims.busy()
            free = [t for t in pending if t.key not in busy and t.key not in tried]
            res.claimed_elsewhere = [f"{t.cell}/{t.name}" for t in pending if t.key in busy]
            groups = schedule(plan, free, complete, work, cfg.max_members, exclude=busy | tried)
            if groups and time.monotonic() >= deadline:
                res.not_started += [f"{t.cell}/{t.name}" for g, _ in groups for t in g if t.key not in complete]
                break
            for trials, names in groups:
                todo = [t.key for t in trials if t.key not in complete]
                if not claims.claim_all(todo, {t.key: f"{t.cell}/{t.name}" for t in trials}):
                    continue
                if any(record_complete(t.record_path(results)) for t in trials if t.key in todo):
                    for k in todo:    # recorded meanwhile by another worker: rescan
                        claims.release(k)
                    break
                tried.update(todo)
                try:
                    _train_claimed(cfg, trials, names, work, deadline, data, loaded, plan, results, complete, res,
                                   progress, data_root, cache, claims)
                finally:
                    for k in todo:
                        claims.release(k)
                break
            else:
                break  # nothing this worker may claim
            complete = complete_records(results)
            pending = _pending(plan, complete, cfg, results)
        res.notes += [f"took over the stale claim of {c.trial or c.key} ({c.owner()})" for c in claims.taken_over]
    complete = complete_records(results)
    res.status = plan_status(plan, complete, resolve_sweeps(plan, complete))
    res.missing = count_missing(plan, complete)
    res.elapsed_s = time.monotonic() - t0
    return res


def _pending(plan: Plan, complete: dict, cfg: CampaignConfig, results: Path | None) -> list[Trial]:
    """The plan's trials without a complete record, within ``--only`` and the shard (rates from
    the sweeps recorded so far); a record of another configuration in a trial's place is an error."""
    resolve_sweeps(plan, complete)
    pending = [t for t in plan.trials() if t.key not in complete
               and (not cfg.only or any(t.cell.startswith(o) for o in cfg.only))]
    pending = in_shard(plan, pending, cfg.shard_spec(), cfg.max_members)
    out = []
    for t in pending:
        path = None if results is None else t.record_path(results)
        if path is not None and path.exists():
            if _record_trial(path) == t.key:
                continue  # recorded by another worker since the scan
            raise PlanError(f"plan: {path} holds a record of another configuration than the "
                            f"plan's trial {t.cell}/{t.name} (was the plan edited?); move it away or rename the cell")
        out.append(t)
    return out


def _record_trial(path: Path) -> str | None:
    try:
        return json.loads((path / "summary.json").read_text())["record"]["trial"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _train_claimed(cfg: CampaignConfig, trials: list[Trial], names, work: Path, deadline: float, data, loaded: dict,
                   plan: Plan, results: Path, complete: dict, res: CampaignResult, progress, data_root, cache,
                   claims: Claims) -> None:
    overrides = {k: v for k, v in (("device", cfg.device), ("compile", cfg.compile)) if v is not None}
    members = tuple(t.config.replace(**overrides) if overrides else t.config for t in trials)
    ens = EnsembleConfig(members=members, names=names)
    folder = work / _work_name([t.key for t in trials])
    split_data = data if data is not None else _load(members[0], loaded, data_root, cache, progress)
    _train_group(ens, trials, folder, deadline, split_data, plan, results, complete, res, progress, data_root, claims)


def _load(cfg: TrainConfig, loaded: dict, data_root, cache, progress):
    from attnopt.data.reviews import load_reviews

    key = (cfg.dataset, cfg.max_len, cfg.subset, cfg.eval_subset, cfg.data_seed, cfg.resolved_val_in_train(),
           cfg.clean_html)
    if key + (cfg.final_test,) not in loaded:
        loaded.clear()  # one dataset in memory at a time
        loaded[key + (cfg.final_test,)] = load_reviews(*key, data_root=data_root, cache=cache, progress=progress,
                                                       final_test=cfg.final_test)
    key += (cfg.final_test,)
    return loaded[key]


def _train_group(ens: EnsembleConfig, trials: list[Trial], folder: Path, deadline: float, data, plan: Plan,
                 results: Path, complete: dict, res: CampaignResult, progress, data_root, claims: Claims) -> None:
    from attnopt.data.reviews import load_tokenizer
    from attnopt.experiments.imdb.batching import DeviceSplit
    from attnopt.experiments.imdb.execution import resolve_device
    from attnopt.experiments.imdb.records import write_record
    from attnopt.experiments.imdb.runs import load_model
    from attnopt.experiments.imdb.train import run_ensemble

    with _Deadline(folder, deadline):
        out = run_ensemble(ens, out=folder, progress=progress, data=data)
    device = resolve_device(ens.members[0].device)
    tok = load_tokenizer(data_root)
    split_name = plan.campaign["prune_split"]
    split = DeviceSplit(data.split(split_name), device) if plan.campaign["prune_levels"] else None
    left = 0
    for t, member in zip(trials, out.members):
        label = f"{t.cell}/{t.name}"
        if t.key in complete:
            continue
        if member.error is not None:
            res.failed.append(f"{label}: {member.error}")
            left += 1
        elif member.summary.get("stop_reason") in FINISHED:
            if not claims.mine(t.key):
                res.notes.append(f"{label}: its claim was taken over by another worker while it trained")
            model, _ = load_model(member.out, device)
            try:
                dest = write_record(member.out, t.record_path(results), model=model, cell=t.cell, group=t.group,
                                    key=t.key, eval_split=split, levels=plan.campaign["prune_levels"], tokenizer=tok,
                                    split_name=split_name, data_root=data_root)
            except RecordExists as exc:
                res.notes.append(f"{label}: {exc}")
                complete[t.key] = {}
                continue
            complete[t.key] = json.loads((dest / "summary.json").read_text())
            res.recorded.append(dest)
            report(progress, "records", 1, len(trials))
        else:
            res.in_progress.append(f"{label} (epoch {member.summary.get('epochs')}, checkpoint in {member.out})")
            left += 1
    if left == 0:
        shutil.rmtree(folder, ignore_errors=True)
        res.notes.append(f"{folder}: every member recorded; work folder removed")


__all__ = ["CampaignConfig", "CampaignResult", "run_campaign", "plan_status", "complete_records", "schedule",
           "count_missing"]

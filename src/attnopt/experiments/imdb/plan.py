"""The campaign plan: which IMDB / SST-2 trials make up the record, read from a TOML file.

A plan has three parts::

    [campaign]                 # how trials are trained and recorded
    max_members = 8            # trials trained together in one process (one ensemble)
    prune_levels = [0.0, 0.5, 0.9]
    prune_split = "test"

    [defaults]                 # TrainConfig fields shared by every cell (e.g. max_epochs)

    [[cell]]                   # one row of the tables (or several: see below)
    name = "paper-s3"
    protocol = "paper"
    size = 3
    optimizer = "md"           # or a list: ["md", "adam"]
    p = [1.1, 2.0, 3.0]        # md only; a list expands into one cell per p
    lr = 8e-4                  # optional: default the paper's (md) or BASELINE_LR; a list expands;
                               # "sweep:NAME" takes the best rate of the [[sweep]] block NAME
    seeds = [0, 1, 2, 3, 4]    # data order and dropout
    init_seed = 0              # one shared initialisation; or init_seeds = [..] (one per seed)

    [[sweep]]                  # cells of a learning-rate sweep (same keys as a cell)

Every other key of a cell is a :class:`TrainConfig` field.  A *trial* is one
``TrainConfig``; its identity (``TrainConfig.identity``) decides whether a record already
holds it, so the same trial named by two cells is trained once.  A sweep's best rate for a
cell is the rate whose complete sweep trials (same dataset, protocol, size, optimizer, p) have
the highest mean best-validation accuracy; until the sweep is complete the cell waits.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from attnopt.config import ConfigError, check_choice, check_float, check_int
from attnopt.experiments.imdb.config import TrainConfig

CAMPAIGN_KEYS = {"max_members": 8, "max_members_by_size": {}, "prune_levels": (0.0, 0.5, 0.9), "prune_split": "test"}
CELL_ONLY = {"name", "seeds", "init_seed", "init_seeds", "lr", "optimizer", "p", "seed"}
SWEEP_PREFIX = "sweep:"


class PlanError(ConfigError):
    """The plan file is missing, not TOML, or describes trials that cannot exist."""


@dataclass(frozen=True)
class Trial:
    """One training run of the plan: its configuration and where its record lives."""

    config: TrainConfig
    cell: str
    group: str = "cell"      # the plan block: "cell" or "sweep"

    @property
    def name(self) -> str:
        return f"seed{self.config.seed}-init{self.config.resolved_init_seed()}"

    @property
    def key(self) -> str:
        return identity_key(self.config)

    def record_path(self, results: Path) -> Path:
        return Path(results) / "records" / self.cell / self.name


@dataclass
class Cell:
    """One expanded cell: a name, the trials it asks for (or, waiting for a sweep, none yet)."""

    name: str
    group: str               # "cell" or "sweep"
    base: dict               # TrainConfig fields without seed / init_seed
    seeds: tuple
    init_seeds: tuple | None
    lr_sweep: str | None = None
    trials: list[Trial] = field(default_factory=list)


@dataclass
class Plan:
    path: Path | None
    campaign: dict
    cells: list[Cell]

    def trials(self) -> list[Trial]:
        """Every trial of every cell whose rate is known, each identity once (first cell wins)."""
        seen: dict[str, Trial] = {}
        for c in self.cells:
            for t in c.trials:
                seen.setdefault(t.key, t)
        return list(seen.values())


def identity_key(cfg: TrainConfig) -> str:
    """A short stable hash of the trial's identity (the fields a resume may not change) and its
    epoch limit (a 20-epoch sweep trial is not a trial run to the stop rule)."""
    blob = json.dumps(cfg.identity() | {"max_epochs": cfg.max_epochs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fail(where: str, msg: str) -> PlanError:
    return PlanError(f"plan: {where}: {msg}")


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _tag(cfg_opt: str, p: float, lr, multi_lr: bool) -> str:
    tag = f"p{p:g}" if cfg_opt == "md" else cfg_opt
    return tag + (f"-lr{lr:g}" if multi_lr else "")


def _expand(entry: dict, defaults: dict, group: str, index: int) -> list[Cell]:
    where = f"{group}[{index}]"
    if not isinstance(entry, dict):
        raise _fail(where, "must be a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise _fail(where, "needs a name (no '/')")
    if "seed" in entry:
        raise _fail(name, "use seeds = [..], not seed")
    seeds = entry.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise _fail(name, "seeds must be a non-empty list")
    seeds = tuple(check_int(name, "seeds", s, 0) for s in seeds)
    if len(set(seeds)) != len(seeds):
        raise _fail(name, "seeds repeat")
    if "init_seed" in entry and "init_seeds" in entry:
        raise _fail(name, "give init_seed or init_seeds, not both")
    inits = None
    if "init_seeds" in entry:
        inits = tuple(check_int(name, "init_seeds", s, 0) for s in _as_list(entry["init_seeds"]))
        if len(inits) != len(seeds):
            raise _fail(name, f"init_seeds has {len(inits)} entries for {len(seeds)} seeds")
    elif "init_seed" in entry:
        inits = (check_int(name, "init_seed", entry["init_seed"], 0),) * len(seeds)
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(k for k in entry if k not in known and k not in CELL_ONLY)
    if unknown:
        raise _fail(name, f"unknown key(s) {', '.join(unknown)}")
    fixed = defaults | {k: v for k, v in entry.items() if k not in CELL_ONLY}
    opts = _as_list(entry.get("optimizer", defaults.get("optimizer", "md")))
    ps = [check_float(name, "p", p) for p in _as_list(entry.get("p", defaults.get("p", 1.1)))]
    lr = entry.get("lr", defaults.get("lr"))
    sweep = None
    if isinstance(lr, str):
        if not lr.startswith(SWEEP_PREFIX) or not lr[len(SWEEP_PREFIX):]:
            raise _fail(name, f"lr must be a number, a list of numbers or 'sweep:NAME'; got {lr!r}")
        sweep, lrs = lr[len(SWEEP_PREFIX):], [None]
    else:
        lrs = [None if v is None else check_float(name, "lr", v, gt=0.0) for v in _as_list(lr)]
    combos = [(o, p) for o in opts for p in (ps if str(o).lower() == "md" else ps[:1])]
    many = len(combos) > 1 or len(lrs) > 1
    cells = []
    for (opt, p), rate in itertools.product(combos, lrs):
        fields_ = fixed | {"optimizer": opt, "p": p, "lr": rate}
        try:
            probe = TrainConfig.from_dict(fields_, seed=seeds[0])
        except ConfigError as exc:
            raise _fail(name, str(exc)) from None
        cname = f"{name}-{_tag(probe.optimizer, probe.p, rate, len(lrs) > 1)}" if many else name
        cells.append(Cell(cname, group, fields_, seeds, inits, sweep))
    return cells


def _trials(cell: Cell, lr: float | None) -> list[Trial]:
    out = []
    for i, s in enumerate(cell.seeds):
        extra = {"seed": s} | ({"init_seed": cell.init_seeds[i]} if cell.init_seeds is not None else {})
        if lr is not None:
            extra["lr"] = lr
        cfg = TrainConfig.from_dict(cell.base, **extra)
        try:  # the defaults written out, so that the same run always has the same identity
            cfg = cfg.replace(lr=cfg.resolved_lr(), init_seed=cfg.resolved_init_seed())
        except ConfigError as exc:
            raise _fail(cell.name, str(exc)) from None
        out.append(Trial(cfg, cell.name, cell.group))
    return out


def parse_plan(data: dict, path: Path | None = None) -> Plan:
    """A :class:`Plan` from a parsed TOML mapping (cells waiting for a sweep have no trials yet;
    :func:`resolve_sweeps` fills them in once their sweep's records are complete)."""
    unknown = sorted(set(data) - {"campaign", "defaults", "cell", "sweep"})
    if unknown:
        raise _fail("top level", f"unknown table(s) {', '.join(unknown)}")
    camp = dict(CAMPAIGN_KEYS)
    extra = sorted(set(data.get("campaign", {})) - set(CAMPAIGN_KEYS))
    if extra:
        raise _fail("campaign", f"unknown key(s) {', '.join(extra)}")
    camp |= data.get("campaign", {})
    camp["max_members"] = check_int("plan campaign", "max_members", camp["max_members"], 1)
    if not isinstance(camp["max_members_by_size"], dict):
        raise _fail("campaign", "max_members_by_size must be a table {size = members}")
    try:
        camp["max_members_by_size"] = {int(k): check_int("plan campaign", "max_members_by_size", v, 1)
                                       for k, v in camp["max_members_by_size"].items()}
    except ValueError:
        raise _fail("campaign", "max_members_by_size: keys are model sizes (integers)") from None
    camp["prune_levels"] = tuple(check_float("plan campaign", "prune_levels", v, ge=0.0, lt=1.0)
                                 for v in _as_list(camp["prune_levels"]))
    check_choice("plan campaign", "prune_split", camp["prune_split"], ("val", "test"))
    defaults = dict(data.get("defaults", {}))
    bad = sorted(k for k in defaults if k not in TrainConfig.__dataclass_fields__ or k in ("seed", "init_seed"))
    if bad:
        raise _fail("defaults", f"unknown or per-cell key(s) {', '.join(bad)}")
    cells: list[Cell] = []
    for group in ("sweep", "cell"):
        entries = data.get(group, [])
        if not isinstance(entries, list):
            raise _fail(group, "must be an array of tables ([[%s]])" % group)
        for i, e in enumerate(entries):
            cells += _expand(e, defaults, group, i)
    names = [c.name for c in cells]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail("cells", f"names repeat after expansion: {', '.join(dup)}")
    sweeps = sorted(c.name for c in cells if c.group == "sweep")
    for c in cells:
        if c.lr_sweep is None:
            c.trials = _trials(c, None)
        elif c.group == "sweep" or not any(s.group == "sweep" and _in_sweep(s, c.lr_sweep) for s in cells):
            raise _fail(c.name, f"lr = 'sweep:{c.lr_sweep}' names no [[sweep]] block (have: "
                                f"{', '.join(sweeps) or 'none'})")
    return Plan(path, camp, cells)


def _in_sweep(cell: Cell, sweep: str) -> bool:
    return cell.name == sweep or cell.name.startswith(sweep + "-")


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"plan: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"plan: {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"plan: {path}: not valid TOML ({exc})") from None
    return parse_plan(data, path)


def _same_family(a: TrainConfig, b: dict) -> bool:
    cfg = TrainConfig.from_dict(b, seed=0)
    return (a.dataset, a.protocol, a.size, a.optimizer, round(a.p, 6) if a.optimizer == "md" else 0) == (
        cfg.dataset, cfg.protocol, cfg.size, cfg.optimizer, round(cfg.p, 6) if cfg.optimizer == "md" else 0)


def resolve_sweeps(plan: Plan, complete: dict[str, dict]) -> dict[str, dict]:
    """Fill in the trials of cells that take their rate from a sweep, where the sweep is done.

    ``complete`` maps a trial key to its record summary.  Returns, per waiting cell, what the
    sweep gave: ``{"lr": best or None, "means": {lr: mean best-val acc}, "missing": n}``."""
    out = {}
    for c in plan.cells:
        if c.lr_sweep is None:
            continue
        pool = [s for s in plan.cells if s.group == "sweep" and _in_sweep(s, c.lr_sweep) and _same_family(
            s.trials[0].config, c.base)]
        if not pool:
            raise _fail(c.name, f"sweep {c.lr_sweep!r} has no cell with this dataset, protocol, size and optimizer")
        trials = [t for s in pool for t in s.trials]
        missing = sum(1 for t in trials if t.key not in complete)
        means: dict[float, list] = {}
        for t in trials:
            s = complete.get(t.key)
            if s is not None and s.get("best_val_acc") is not None:
                means.setdefault(t.config.resolved_lr(), []).append(float(s["best_val_acc"]))
        means = {lr: sum(v) / len(v) for lr, v in means.items()}
        best = max(means, key=lambda k: (means[k], -k)) if means and missing == 0 else None
        c.trials = _trials(c, best) if best is not None else []
        out[c.name] = {"lr": best, "means": means, "missing": missing}
    return out


__all__ = ["Plan", "Cell", "Trial", "PlanError", "load_plan", "parse_plan", "resolve_sweeps", "identity_key"]

"""``attnopt imdb campaign PLAN --status``: the campaign's progress across all its workers.

Per cell: trials complete (a record), claimed by a live worker (which host and pid, since
when), claimed but stale (the owner is dead or silent: the next worker takes them over),
missing (nobody on them), and the estimated training time left.

The estimate comes from recorded epoch times only: a trial's cost per epoch is its history's
``epoch_time_s / members`` (an ensemble's epoch trains all its members at once), its length the
epochs it took.  A cell's unfinished trials are estimated from the cell's complete records,
else from records of the same dataset, protocol and model size; the epochs a trial in progress
has done (its checkpoint in the work folder) are subtracted.  Cells with nothing comparable
recorded have no estimate ("–").  The total is worker time: divide by the number of workers.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnopt.experiments.imdb.campaign import _stored_ensemble, complete_records
from attnopt.experiments.imdb.claims import STALE_AFTER_S, ClaimInfo, Claims
from attnopt.experiments.imdb.plan import Plan, resolve_sweeps


@dataclass
class CellProgress:
    cell: str
    planned: int
    complete: int
    claimed: list[tuple[str, ClaimInfo]]    # (trial name, claim) held by a live worker
    stale: list[tuple[str, ClaimInfo]]      # (trial name, claim) whose owner is gone
    missing: int                            # neither recorded nor claimed (waiting cells: all)
    remaining_s: float | None               # estimated training time left (worker time)


def _record_costs(complete: dict[str, dict]) -> list[dict]:
    """Per complete record: cell, (dataset, protocol, size), epochs, seconds per epoch of one trial."""
    out = []
    for s in complete.values():
        path = Path(s["_path"])
        try:
            with (path / "history.csv").open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            cfg = json.loads((path / "config.json").read_text())["config"]
            per = [float(r["epoch_time_s"]) / max(float(r.get("members") or 1), 1.0) for r in rows]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if per:
            out.append({"cell": s["record"]["cell"], "family": (cfg.get("dataset"), cfg.get("protocol"),
                                                                 cfg.get("size")),
                        "epochs": len(rows), "epoch_s": float(np.mean(per))})
    return out


def _epochs_done(work: Path) -> dict[str, int]:
    """Trial key -> epochs checkpointed in the work folder's ensembles."""
    done: dict[str, int] = {}
    for folder in sorted(work.glob("ens-*")) if work.is_dir() else []:
        stored = _stored_ensemble(folder)
        if stored is None:
            continue
        for key, name in zip(*stored):
            try:
                done[key] = int(json.loads((folder / name / "summary.json").read_text()).get("epochs", 0))
            except (OSError, ValueError, TypeError):
                pass
    return done


def campaign_progress(plan: Plan, results: Path, work: Path, stale_after: float = STALE_AFTER_S,
                      now: float | None = None) -> list[CellProgress]:
    complete = complete_records(results)
    resolve_sweeps(plan, complete)
    claims = Claims(Path(results) / "claims", stale_after=stale_after).scan()
    costs = _record_costs(complete)
    done = _epochs_done(work)
    owner = {t.key: t.cell for t in plan.trials()}
    rows = []
    for c in plan.cells:
        mine = [t for t in c.trials if owner[t.key] == c.name]   # a shared trial is counted by its owner cell
        fam = (c.base.get("dataset"), c.base.get("protocol"), c.base.get("size"))
        pool = [r for r in costs if r["cell"] == c.name] or [r for r in costs if r["family"] == fam]
        claimed, stale, missing, left_s = [], [], 0, 0.0
        for t in c.trials:
            if t.key in complete:
                continue
            info = claims.get(t.key)
            if info is not None:
                (stale if info.stale(stale_after, now=now) else claimed).append((t.name, info))
            else:
                missing += 1
            if t in mine and pool:
                epochs = float(np.mean([r["epochs"] for r in pool]))
                left_s += max(epochs - done.get(t.key, 0), 0.0) * float(np.mean([r["epoch_s"] for r in pool]))
        if not c.trials:
            missing = len(c.seeds)
        unfinished = [t for t in mine if t.key not in complete]
        rows.append(CellProgress(c.name, len(c.seeds), sum(t.key in complete for t in c.trials), claimed, stale,
                                 missing, (left_s if pool else None) if unfinished else 0.0))
    return rows


def format_progress(rows: list[CellProgress], now: float | None = None) -> str:
    from attnopt.report.tables import markdown_table

    now = time.time() if now is None else now

    def since(info: ClaimInfo) -> str:
        start = "?" if info.start is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.start))
        return f"{info.owner()} since {start}, heartbeat {now - info.heartbeat:.0f} s ago"

    def hours(s: float | None) -> str:
        return "–" if s is None else f"{s / 3600:.2f} h"

    body = [[r.cell, f"{r.complete} / {r.planned}", len(r.claimed), len(r.stale), r.missing, hours(r.remaining_s)]
            for r in rows]
    lines = [markdown_table(["cell", "complete", "claimed", "stale", "missing", "est. training left"], body)]
    for r in rows:
        lines += [f"claimed: {r.cell}/{name} by {since(info)}" for name, info in r.claimed]
        lines += [f"stale:   {r.cell}/{name} (was {since(info)}): the next worker takes it over"
                  for name, info in r.stale]
    known = [r.remaining_s for r in rows if r.remaining_s is not None]
    unknown = [r.cell for r in rows if r.remaining_s is None]
    lines.append(f"estimated training left: {hours(sum(known))} of worker time (from the recorded epoch times; "
                 f"divide by the number of workers)" + (f"; no estimate for {len(unknown)} cell(s) with nothing "
                                                        "comparable recorded yet" if unknown else ""))
    return "\n".join(lines)


__all__ = ["CellProgress", "campaign_progress", "format_progress"]

"""Deterministic shards of a campaign plan: ``--shard K/N`` gives worker K the K-th of N
disjoint parts of the plan's trials, the same on every machine.

The parts are cut from the **whole plan** (every trial whose learning rate is known, complete
or not), not from the missing trials, so a trial never changes shard when records complete:
a worker's shard is its part minus what is already recorded.  The trials are grouped as the
campaign trains them (:func:`group_trials`: members share everything but seeds, optimiser, p,
learning rate; at most ``max_members`` a group), so an ensemble stays in one shard; only when
there are fewer groups than shards are the largest groups halved until every shard has work.
Groups are then dealt in plan order, each to the shard holding the fewest trials so far (ties:
the lower index).

Trials of cells that wait for a learning-rate sweep are placed after all the others, so they
join the deal only once their sweep is recorded and never move the trials known before.  All
workers must use the same plan and ``--max-members`` (both decide the groups).
"""

from __future__ import annotations

import json
import re
from dataclasses import fields

from attnopt.config import ConfigError
from attnopt.experiments.imdb.config import MEMBER_FIELDS, RESUME_MUTABLE, TrainConfig
from attnopt.experiments.imdb.plan import Plan, Trial

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | tuple | None) -> tuple[int, int] | None:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``; None stays None."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)) and len(text) == 2:
        k, n = (int(v) for v in text)
    else:
        m = _SHARD.match(str(text))
        if not m:
            raise ConfigError(f"shard: give K/N (worker K of N, 0 <= K < N), e.g. 0/4; got {text!r}")
        k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"shard: K/N needs N >= 1 and 0 <= K < N; got {k}/{n}")
    return k, n


def shared_key(cfg: TrainConfig) -> str:
    """What ensemble members must share: every field except the member and resume-mutable ones."""
    d = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)
         if f.name not in MEMBER_FIELDS and f.name not in RESUME_MUTABLE}
    return json.dumps(d, sort_keys=True, default=str)


def group_size(plan: Plan, cfg: TrainConfig, max_members: int | None = None) -> int:
    return max_members or plan.campaign["max_members_by_size"].get(cfg.size, plan.campaign["max_members"])


def group_trials(plan: Plan, trials: list[Trial], max_members: int | None = None) -> list[list[Trial]]:
    """``trials`` in ensembles: bucketed by what members share (first appearance order), each
    bucket cut into runs of at most ``max_members`` (default: the plan's, by model size)."""
    buckets: dict[str, list[Trial]] = {}
    for t in trials:
        buckets.setdefault(shared_key(t.config), []).append(t)
    out = []
    for ts in buckets.values():
        size = group_size(plan, ts[0].config, max_members)
        out += [ts[i:i + size] for i in range(0, len(ts), size)]
    return out


def _split_to(groups: list[list[Trial]], n: int) -> list[list[Trial]]:
    groups = [list(g) for g in groups]
    while len(groups) < n and any(len(g) > 1 for g in groups):
        i = max(range(len(groups)), key=lambda j: (len(groups[j]), -j))
        g = groups[i]
        half = (len(g) + 1) // 2
        groups[i:i + 1] = [g[:half], g[half:]]
    return groups


def _deal(groups: list[list[Trial]], parts: list[list[Trial]]) -> list[list[Trial]]:
    for g in groups:
        parts[min(range(len(parts)), key=lambda j: (len(parts[j]), j))].extend(g)
    return parts


def shard_assignment(plan: Plan, n: int, max_members: int | None = None) -> dict[str, int]:
    """Trial key -> shard index in ``range(n)`` for every trial of the plan whose rate is known."""
    waiting = {c.name for c in plan.cells if c.lr_sweep is not None}
    trials = plan.trials()
    fixed = [t for t in trials if t.cell not in waiting]
    late = [t for t in trials if t.cell in waiting]
    groups = _split_to(group_trials(plan, fixed, max_members), n)
    parts = _deal(groups, [[] for _ in range(n)])
    if late:  # dealt after the fixed trials, so they never move those
        _deal(_split_to(group_trials(plan, late, max_members), n), parts)
    return {t.key: i for i, part in enumerate(parts) for t in part}


def in_shard(plan: Plan, trials: list[Trial], shard: tuple[int, int] | None,
             max_members: int | None = None) -> list[Trial]:
    """The trials of ``trials`` that belong to ``shard`` (all of them when ``shard`` is None)."""
    if shard is None:
        return list(trials)
    k, n = shard
    where = shard_assignment(plan, n, max_members)
    return [t for t in trials if where.get(t.key) == k]


__all__ = ["parse_shard", "shard_assignment", "in_shard", "group_trials", "shared_key", "group_size"]

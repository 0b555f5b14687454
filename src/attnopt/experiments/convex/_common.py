"""What the convex-attention experiments share: device and dtype checks, progress of tasks
counted by absolute positions, and the history files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from attnopt.config import check_choice, config_error
from attnopt.runtime import ProgressFn, report

#: the floating dtypes a config may name
DTYPES = ("float32", "float64")


def check_device(owner: Any, name: str, value: Any) -> str:
    """A device string torch understands (``"cpu"``, ``"cuda"``, ``"cuda:1"`` …), normalised."""
    import torch

    if not isinstance(value, str):
        raise config_error(owner, f"{name} must be a device name such as 'cpu' or 'cuda', got {value!r}")
    try:
        return str(torch.device(value))
    except (RuntimeError, ValueError):
        raise config_error(owner, f"{name}: {value!r} is not a device torch knows "
                                  "(e.g. 'cpu', 'cuda', 'cuda:0')") from None


def require_device(owner: Any, name: str, device: str) -> None:
    """Raise :class:`~attnopt.config.ConfigError` when ``device`` does not exist on this machine
    (checked when a run starts, not when a config is built: a config may be meant for another)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise config_error(owner, f"{name} {device!r} is not available here ({count} CUDA device(s))")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError):
            raise config_error(owner, f"{name} {device!r} is not available here") from None


def check_dtype(owner: Any, name: str, value: Any) -> str:
    return check_choice(owner, name, value, DTYPES)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


class Ticker:
    """One progress task whose work is counted by position (a FISTA iteration, an optimiser
    step), reported to a :data:`~attnopt.runtime.ProgressFn` as increments.  ``close()`` ends
    the task at the count actually reached: solvers stop early on convergence or a time limit,
    and the task's total becomes what was done."""

    def __init__(self, progress: Optional[ProgressFn], label: str, total: int) -> None:
        self.progress, self.label, self.total, self.done = progress, label, int(total), 0

    def __call__(self, done: int) -> None:
        done = min(int(done), self.total)
        if done > self.done:
            report(self.progress, self.label, done - self.done, self.total)
            self.done = done

    def close(self, done: Optional[int] = None) -> None:
        done = self.done if done is None else int(done)
        self.total = max(done, self.done)
        report(self.progress, self.label, self.total - self.done, self.total)
        self.done = self.total


@dataclass
class RunResult:
    """What a convex experiment returns: its config, the summary (what summary.json holds),
    the per-model histories (what the history CSVs hold), and the run folder (None: none)."""

    config: Any
    summary: dict
    histories: dict[str, list[dict]]
    out: Optional[Path] = None


def begin(cls, config: Any, out: Any, experiment: str, check_environment):
    """The start of a convex experiment: its config (``cls.coerce``: an instance, a mapping or
    None), what the run needs beyond it (``check_environment(cfg)``), then the run folder
    (None when ``out`` is None: nothing is written) — in that order, so that a refused config
    or a missing extra leaves no folder behind."""
    from attnopt.report.runs import as_run_dir

    cfg = cls.coerce(config)
    check_environment(cfg)
    return cfg, as_run_dir(out, cfg, experiment=experiment)


def write_histories(rd, histories: dict[str, list[dict]]) -> None:
    """``history_<model>.csv``, one row per logged step, for every model."""
    for name, rows in histories.items():
        rd.write_csv(f"history_{name}.csv", rows=rows)

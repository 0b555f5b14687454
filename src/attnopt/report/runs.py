"""Run folders: one run per folder, marked complete only at the end.

A run folder holds::

    config.json     the validated configuration (plus package version, time, host)
    summary.json    the headline metrics; its key "complete" is true once the run has finished
    *.csv           histories (one row per logged step)
    *.png / *.html  figures
    report.md       a short human-readable report

:func:`open_run_dir` decides whether a folder may take a run: an empty or new folder always;
one holding a run of the same configuration when that run can be resumed (else it is emptied
and redone, which gives the same files); anything else only with ``overwrite=True``, which
empties it first — and never a non-empty folder that holds no attnopt run.  Every write is
atomic (see :mod:`attnopt.files`) and files get the user's umask.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from attnopt.errors import RunFolderError
from attnopt.files import (atomic_torch_save, atomic_write_bytes, jsonable, read_json, read_json_object, to_json,
                           writable_folder)

__all__ = ["RunDir", "RunRecord", "load_run", "open_run_dir", "as_run_dir", "make_run_dir", "default_run_path", "is_complete", "read_summary",
           "atomic_write_bytes", "atomic_torch_save", "to_json", "jsonable"]


class RunDir:
    """A folder for one experiment run; all writers are atomic and return the path written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        _mkdir(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_bytes(self.path / name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, to_json(obj) + "\n")

    def write_config(self, config: Any, experiment: str | None = None) -> Path:
        """config.json: ``{"config": {"experiment": …, <the configuration>}, "meta": …}`` (the
        experiment's name and configuration, and the package version, time and host)."""
        meta = {
            "attnopt_version": _version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        return self.write_json("config.json", {"config": _recorded(config, experiment), "meta": meta})

    def write_summary(self, summary: Mapping[str, Any], complete: bool = True) -> Path:
        """summary.json; ``complete=True`` marks the run finished (write it last)."""
        return self.write_json("summary.json", {**dict(summary), "complete": bool(complete)})

    def write_csv(self, name: str, columns: Mapping[str, Sequence[Any]] | None = None,
                  rows: Iterable[Mapping[str, Any]] | None = None) -> Path:
        """Write a CSV from equal-length ``columns`` or from a list of dict ``rows``."""
        buf = io.StringIO()
        if columns is not None:
            keys = list(columns)
            lengths = {len(columns[k]) for k in keys}
            if len(lengths) > 1:
                raise ValueError(f"write_csv({name}): columns have different lengths {sorted(lengths)}")
            writer = csv.writer(buf)
            writer.writerow(keys)
            for r in zip(*(columns[k] for k in keys)):
                writer.writerow([jsonable(v) for v in r])
        else:
            rows = list(rows or [])
            keys = list(dict.fromkeys(k for r in rows for k in r))
            writer = csv.DictWriter(buf, fieldnames=keys)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: jsonable(v) for k, v in r.items()})
        return self.write_text(name, buf.getvalue())

    def save_figure(self, name: str, fig, dpi: int = 120) -> Path:
        """Save a matplotlib figure atomically and close it."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format=Path(name).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return atomic_write_bytes(self.path / name, buf.getvalue())

    def write_report(self, markdown: str) -> Path:
        return self.write_text("report.md", markdown.rstrip() + "\n")

    def subdir(self, name: str) -> "RunDir":
        """A folder inside this run (for one part of a composite run, such as the demo's e1/)."""
        return RunDir(self.path / name)


def _mkdir(path: Path) -> None:
    writable_folder(path, "run folder", "--out", RunFolderError)


@dataclass(frozen=True)
class RunRecord:
    """What a run folder records: its configuration (led by ``"experiment"``), the meta data
    (package version, time, host) and the summary (``None`` while it has none)."""

    path: Path
    config: dict
    meta: dict
    summary: dict | None

    @property
    def experiment(self) -> str | None:
        return self.config.get("experiment")

    @property
    def complete(self) -> bool:
        return isinstance(self.summary, dict) and self.summary.get("complete") is True


def load_run(path: str | os.PathLike) -> RunRecord:
    """The :class:`RunRecord` of the run folder ``path``.

    Raises :class:`~attnopt.errors.RunFolderError` (one line naming the file) when the folder
    does not exist, has no config.json, or its config.json or summary.json is not valid JSON
    or lacks what attnopt writes; a run without summary.json (running or interrupted) is not
    an error: its ``summary`` is None."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder {path} {'is a file' if path.exists() else 'does not exist'}")
    if not (path / "config.json").exists():
        raise RunFolderError(f"{path} holds no config.json: it is not an attnopt run folder")
    record = read_json(path / "config.json", RunFolderError)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunFolderError(f"{path / 'config.json'} has no \"config\" object; it was edited or is not attnopt's")
    meta = record.get("meta")
    summary = read_json_object(path / "summary.json", RunFolderError) if (path / "summary.json").exists() else None
    return RunRecord(path, record["config"], meta if isinstance(meta, dict) else {}, summary)


def read_summary(path: str | os.PathLike) -> dict | None:
    """The run's summary.json, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(path) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def is_complete(path: str | os.PathLike) -> bool:
    """Whether the folder holds a finished run (summary.json with ``"complete": true``)."""
    s = read_summary(path)
    return isinstance(s, dict) and s.get("complete") is True


def _stored_config(path: Path) -> Any:
    try:
        return json.loads((path / "config.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None


def _recorded(config: Any, experiment: str | None) -> Any:
    """What config.json records as "config": the configuration, led by the experiment's name."""
    if experiment is None:
        return config
    body = jsonable(config)
    return {"experiment": experiment, **body} if isinstance(body, dict) else {"experiment": experiment, "value": body}


def _empty(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def open_run_dir(path: str | os.PathLike, config: Any, *, experiment: str | None = None,
                 overwrite: bool = False, resumable: bool = False) -> RunDir:
    """The run folder ``path`` for a run of ``config``, following the module's rules, with
    config.json written (the run is incomplete until :meth:`RunDir.write_summary`).

    ``resumable``: the experiment can continue from what the folder holds (a checkpoint); a
    folder holding the same configuration is then kept as it is.  Raises
    :class:`~attnopt.errors.RunFolderError` when the folder may not be used.
    """
    path = Path(path)
    if path.exists():
        _mkdir(path)  # a file, or a folder that cannot be written, is refused here
    busy = path.is_dir() and any(path.iterdir())
    if busy:
        is_run = (path / "config.json").is_file()
        stored = _stored_config(path)
        if is_run and stored is None and not overwrite:
            read_json(path / "config.json", RunFolderError)  # says what is wrong with it
            raise RunFolderError(f"{path / 'config.json'} records no configuration; pass --overwrite to replace "
                                 "the run, or choose another --out")
        same = is_run and stored == json.loads(to_json(_recorded(config, experiment)))
        if overwrite:
            if not is_run:
                raise RunFolderError(f"{path} is not empty and holds no attnopt run; refusing to empty it "
                                     "(choose another --out)")
            _empty(path)
        elif same and not resumable:
            _empty(path)  # the same run again: redo it from scratch, same files
        elif not same:
            what = ("a finished run" if is_complete(path) else "an unfinished run") if is_run else "other files"
            why = " of another configuration" if is_run else ""
            raise RunFolderError(f"{path} already holds {what}{why}; pass --overwrite to replace it, "
                                 "or choose another --out")
    rd = RunDir(path)
    if not (busy and same and resumable and not overwrite):
        rd.write_config(config, experiment)
    return rd


def as_run_dir(out: "str | os.PathLike | RunDir | None", config: Any, *, experiment: str | None = None,
               resumable: bool = False) -> RunDir | None:
    """What an experiment's ``out=`` becomes: None stays None (write nothing); a
    :class:`RunDir` (opened by the caller, e.g. the CLI with ``--overwrite``) is used as it is;
    a path is opened with :func:`open_run_dir`."""
    if out is None or isinstance(out, RunDir):
        return out
    return open_run_dir(out, config, experiment=experiment, resumable=resumable)


def default_run_path(name: str) -> Path:
    """``runs/<name>-<UTC timestamp>`` (relative to the working directory)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def make_run_dir(out: str | os.PathLike | None, name: str) -> RunDir:
    """``out`` if given, else ``runs/<name>-<UTC timestamp>`` (no reuse check: see :func:`open_run_dir`)."""
    return RunDir(default_run_path(name) if out is None else out)


def _version() -> str:
    from attnopt import __version__

    return __version__

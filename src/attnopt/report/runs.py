"""Run folders: every experiment writes its config, metrics, histories, figures and report here.

A run folder holds::

    config.json     the validated configuration (plus package version, time, host)
    summary.json    the headline metrics
    *.csv           histories (one row per logged step)
    *.png / *.html  figures
    report.md       a short human-readable report

Writes are atomic (temporary file in the same folder, then ``os.replace``) so an interrupted
run never leaves a truncated file behind.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` made atomic: a crash mid-write keeps the previous checkpoint."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensors
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def to_json(obj: Any) -> str:
    """JSON text for dataclasses, numpy/torch values and paths (NaN -> null)."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False)


class RunDir:
    """A folder for one experiment run; all writers are atomic and return the path written."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_bytes(self.path / name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, to_json(obj) + "\n")

    def write_config(self, config: Any) -> Path:
        meta = {
            "attnopt_version": _version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        return self.write_json("config.json", {"config": config, "meta": meta})

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
                writer.writerow([_jsonable(v) for v in r])
        else:
            rows = list(rows or [])
            keys = list(dict.fromkeys(k for r in rows for k in r))
            writer = csv.DictWriter(buf, fieldnames=keys)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _jsonable(v) for k, v in r.items()})
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


def make_run_dir(out: str | os.PathLike | None, name: str) -> RunDir:
    """``out`` if given, else ``runs/<name>-<UTC timestamp>``."""
    if out is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{name}-{stamp}"
    return RunDir(out)


def _version() -> str:
    from attnopt import __version__

    return __version__

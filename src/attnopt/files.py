"""Writing and reading files safely: atomic writes that honour the umask, JSON for numpy/torch
values, and checkpoint loading that never runs code from the file.

* :func:`atomic_write_bytes` writes a temporary file beside the target, fsyncs it and renames
  it over the target, so a crash leaves the old file or the new one, never half of one. The
  file gets the mode an ordinary ``open()`` would give it (0666 minus the umask).
* :func:`load_checkpoint` is ``torch.load(weights_only=True)``: tensors, numbers, strings and
  containers only.  A truncated file or one that carries a pickled callable raises
  :class:`~attnopt.errors.CheckpointError` with one line saying which file and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import pickle
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

from attnopt.errors import CheckpointError, FolderError, UserError, storage_error

_umask_lock = threading.Lock()


def _file_mode() -> int:
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def writable_folder(path: str | os.PathLike, what: str, option: str, error: type[FolderError] = FolderError) -> Path:
    """``path`` as a folder this process can write (created if missing), or ``error``: one line
    naming ``what`` it is and the ``option`` that chose it ("cache folder", "--cache")."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{what} {path} is a file, not a folder; choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create {what} {path}: {exc.strerror or exc}; choose another {option}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        try:
            why = " (read-only file system)" if os.statvfs(path).f_flag & os.ST_RDONLY else ""
        except OSError:
            why = ""
        raise error(f"{what} {path} is not writable{why}; choose another {option}")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename).

    A fault of the file system (no space, read-only, permissions …) raises
    :class:`~attnopt.errors.StorageError` naming ``path``; the previous file, if any, is kept
    and no temporary file is left behind."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), _file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise storage_error(exc, "cannot write", path) from None
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` made atomic: a crash mid-write keeps the previous checkpoint."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu", hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    ``hint`` is appended to the message of a damaged file (e.g. "start over with --no-resume").
    """
    import torch

    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} holds Python objects other than tensors and plain data, which attnopt "
            f"refuses to load (it would run code from the file): {first}") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist{suffix}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({first}){suffix}") from None


def read_json(path: str | os.PathLike, error: type[UserError] = UserError) -> Any:
    """The JSON value in ``path``; a missing file, a file that is not valid JSON (hand-edited,
    truncated) or a read fault is ``error`` (a :class:`~attnopt.errors.StorageError` for a
    fault of the file system) with one line naming the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a JSON file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start}); it was damaged or is not attnopt's") from None
    except OSError as exc:
        raise storage_error(exc, "cannot read", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        raise error(f"{path} {what}; it was edited or damaged") from None


def read_json_object(path: str | os.PathLike, error: type[UserError] = UserError) -> dict:
    """:func:`read_json` of a file that must hold a JSON object (what attnopt's config.json,
    summary.json and record files hold)."""
    value = read_json(path, error)
    if not isinstance(value, dict):
        raise error(f"{path} is not a JSON object; it was edited or is not attnopt's")
    return value


def jsonable(obj: Any) -> Any:
    """``obj`` with dataclasses, numpy/torch values and paths turned into JSON types
    (NaN → null, ±inf → "inf"/"-inf")."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if type(obj).__module__ == "numpy":
        return jsonable(obj.tolist()) if hasattr(obj, "tolist") else obj
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensors
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def to_json(obj: Any) -> str:
    """JSON text for dataclasses, numpy/torch values and paths (NaN -> null)."""
    return json.dumps(jsonable(obj), indent=2, sort_keys=False)

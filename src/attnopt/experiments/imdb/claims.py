"""Claims: which campaign worker trains which trial, as one lock file per trial.

``<results>/claims/<trial key>.lock`` holds ``{"host", "pid", "start", "token", "trial"}``
(``start``: when the claim was made, Unix seconds).  A worker claims a trial before training it
and removes the file once the trial is recorded (or stopped); while it holds claims, a thread
touches their files every :data:`HEARTBEAT_S` seconds, so the file's modification time is the
owner's last sign of life.

**Creating a claim is atomic** on every file system where ``link(2)`` is: the claim is written
in full to a private temporary file, then hard-linked to the lock name, which fails when the
name exists (local file systems, NFS v2/v3/v4 — link is the classic NFS-safe lock —, Lustre,
GPFS, BeeGFS, CephFS).  Where hard links are refused (some FUSE, SMB/CIFS and object-store
mounts), ``open(O_CREAT | O_EXCL)`` is used instead, atomic on local file systems and NFSv3+;
on file systems where neither is atomic, concurrent workers on one folder are not safe (give
each worker its own ``--shard`` there).

**A claim is stale** — its owner is taken to be dead and the trial free — when

* the owner ran on this host and its pid is gone (known at once), or
* its heartbeat is older than ``stale_after`` seconds (:data:`STALE_AFTER_S`, 600 s by
  default; hosts' clocks are assumed to agree within a small part of that), or
* ``steal_stale`` is set and the owner is not a live process on this host (use it when you
  know the owner is gone: a requeued Slurm task taking over its own shard).

Taking over a stale claim renames it to a private name (only one worker's rename succeeds),
checks that the renamed file is the stale claim that was judged (else puts it back) and then
claims as usual.  A claim's owner checks that the file is still its own before it writes the
record; the record itself is placed by one rename that never overwrites
(:func:`~attnopt.experiments.imdb.records.write_record`), so even a claim taken from a live
but silent owner costs duplicate work, never a duplicate or corrupt record.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
SUFFIX = ".lock"


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class ClaimInfo:
    """A claim as read back: its owner, when it was made, its last heartbeat (file mtime)."""

    key: str
    path: Path
    host: str | None
    pid: int | None
    start: float | None
    token: str | None
    trial: str | None
    heartbeat: float

    def owner(self) -> str:
        return f"{self.host or '?'}:{self.pid if self.pid is not None else '?'}"

    def stale(self, stale_after: float = STALE_AFTER_S, steal_stale: bool = False, now: float | None = None) -> bool:
        local = self.host == _host() and self.pid is not None
        if local and not pid_alive(self.pid):
            return True
        if (time.time() if now is None else now) - self.heartbeat > stale_after:
            return True
        return steal_stale and not local


def read_claim(path: Path) -> ClaimInfo | None:
    """The claim at ``path`` (None when it is gone); an unreadable file is a claim of an
    unknown owner (its age still makes it stale)."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        data = {}
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
    pid = data.get("pid")
    return ClaimInfo(path.name[:-len(SUFFIX)], path, data.get("host"), pid if isinstance(pid, int) else None,
                     data.get("start"), data.get("token"), data.get("trial"), mtime)


class Claims:
    """This worker's claims in ``folder``: :meth:`claim`, :meth:`release`, a heartbeat while
    used as a context manager (which releases whatever is still held at exit)."""

    def __init__(self, folder: str | Path, *, stale_after: float = STALE_AFTER_S, steal_stale: bool = False,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.folder = Path(folder)
        self.stale_after, self.steal_stale, self.heartbeat_s = float(stale_after), bool(steal_stale), heartbeat_s
        self.host, self.pid, self.token = _host(), os.getpid(), uuid.uuid4().hex
        self.held: dict[str, Path] = {}
        self.taken_over: list[ClaimInfo] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading
    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def scan(self) -> dict[str, ClaimInfo]:
        """Every claim in the folder (this worker's included)."""
        if not self.folder.is_dir():
            return {}
        out = {}
        for p in sorted(self.folder.glob(f"*{SUFFIX}")):
            info = read_claim(p)
            if info is not None:
                out[info.key] = info
        return out

    def busy(self) -> set[str]:
        """Keys claimed by other workers whose claims are not stale (not for this worker to take)."""
        return {k for k, c in self.scan().items()
                if c.token != self.token and not c.stale(self.stale_after, self.steal_stale)}

    def mine(self, key: str) -> bool:
        info = read_claim(self.path(key))
        return info is not None and info.token == self.token

    # ------------------------------------------------------------------ claiming
    def _record(self, trial: str) -> bytes:
        return (json.dumps({"host": self.host, "pid": self.pid, "start": time.time(), "token": self.token,
                            "trial": trial}) + "\n").encode()

    def _create(self, key: str, trial: str) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        ignore = self.folder / ".gitignore"
        if not ignore.exists():
            try:
                ignore.write_text("*\n")  # claims are transient: never committed with the records
            except OSError:
                pass
        lock, tmp = self.path(key), self.folder / f".{key}.{self.token}.tmp"
        tmp.write_bytes(self._record(trial))
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                                 errno.ENOSYS):
                raise
        finally:
            tmp.unlink(missing_ok=True)
        try:  # no hard links here: exclusive create
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._record(trial))
        return True

    def _take_over(self, info: ClaimInfo) -> bool:
        """Move the stale claim ``info`` out of the way (True when this worker did)."""
        aside = self.folder / f".{info.key}.stale-{self.token}"
        try:
            os.rename(info.path, aside)
        except FileNotFoundError:
            return False  # another worker moved it first
        moved = read_claim(aside)
        if moved is not None and (moved.token, moved.heartbeat) != (info.token, info.heartbeat):
            try:  # a fresh claim was moved, not the stale one: put it back
                os.link(aside, info.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        self.taken_over.append(info)
        return True

    def claim(self, key: str, trial: str = "") -> bool:
        """Claim ``key`` (True: this worker holds it now)."""
        with self._lock:
            if key in self.held:
                return True
            for _ in range(2):
                if self._create(key, trial):
                    self.held[key] = self.path(key)
                    return True
                info = read_claim(self.path(key))
                if info is None:
                    continue  # released meanwhile: try again
                if info.token == self.token:
                    self.held[key] = info.path
                    return True
                if not info.stale(self.stale_after, self.steal_stale) or not self._take_over(info):
                    return False
            return False

    def claim_all(self, keys: list[str], labels: dict[str, str] | None = None) -> bool:
        """Claim every key, in order, or none (what was claimed is released at the first refusal)."""
        got = []
        for k in keys:
            if not self.claim(k, (labels or {}).get(k, "")):
                for g in got:
                    self.release(g)
                return False
            got.append(k)
        return True

    def release(self, key: str) -> None:
        with self._lock:
            path = self.held.pop(key, None)
            if path is not None and self.mine(key):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ heartbeat
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                for key, path in list(self.held.items()):
                    if self.mine(key):
                        try:
                            os.utime(path)
                        except OSError:
                            pass

    def __enter__(self) -> "Claims":
        self._thread = threading.Thread(target=self._beat, name="claims-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for key in list(self.held):
            self.release(key)


__all__ = ["Claims", "ClaimInfo", "read_claim", "pid_alive", "HEARTBEAT_S", "STALE_AFTER_S"]

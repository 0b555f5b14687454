"""The one base class of the errors a user causes (an option, a config value, a file, a
folder), so that the command line can report all of them the same way: one line
``error: …`` on stderr and exit code :attr:`UserError.exit_code` (2), never a traceback.
A fault of the file system while the work reads or writes (no space left, a read-only
file system, an I/O error) is a :class:`StorageError`: one line too, exit code 1.

Every other exception that reaches the command line is a bug and shows its traceback.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """Something the user asked for or supplied is wrong; the message says what and where.

    Subclasses keep their historical bases too (:class:`attnopt.config.ConfigError` is a
    ``ValueError``, :class:`attnopt.data.shared.DataError` a ``RuntimeError``), so existing
    ``except`` clauses keep working."""

    #: exit code of the command line for this error
    exit_code: int = 2


class FolderError(UserError):
    """A folder the user named (a cache, an output) is a file, cannot be created, or is not writable."""


class RunFolderError(FolderError):
    """A run folder cannot be used: it is a file, not writable, or holds another run."""


class CheckpointError(UserError):
    """A checkpoint is unreadable, truncated, or holds something other than plain data."""


#: errno values of file-system faults that a user can fix (space, permissions, mounts, limits)
STORAGE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "EEXIST", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
    "EMFILE", "ENFILE", "EFBIG", "ENOENT", "ESTALE", "ETXTBSY", "EBUSY", "ELOOP", "EXDEV") if hasattr(errno, name))


class StorageError(UserError, OSError):
    """The file system refused a read or write (no space left, read-only, permission denied,
    I/O error …).  Exit code 1 on the command line; an ``OSError`` too, so ``except OSError``
    keeps catching it.  The message names the file and what was being done."""

    exit_code: int = 1

    def __init__(self, message: str, errno_: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.message, self.errno, self.filename = message, errno_, filename

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.message, self.errno, self.filename)


def describe_os_error(exc: OSError, doing: str = "", path: object = None) -> str:
    """One line for an OSError: what was being done, the file (``path``, else the error's),
    and the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = errno.errorcode.get(exc.errno or 0)
    path = exc.filename if path is None else path
    where = f" {path}" if path else ""
    head = f"{doing}{where}" if doing else (f"file-system error on{where}" if where else "file-system error")
    return f"{head}: {reason}" + (f" ({code})" if code else "")


def storage_error(exc: OSError, doing: str, path: object = None) -> StorageError:
    """The :class:`StorageError` for ``exc`` met while ``doing`` something to ``path`` (e.g.
    ``storage_error(exc, "cannot write", target)``); a StorageError is returned as it is."""
    if isinstance(exc, StorageError):
        return exc
    path = exc.filename if path is None else path
    return StorageError(describe_os_error(exc, doing, path), exc.errno, None if path is None else str(path))

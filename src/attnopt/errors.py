"""The one base class of the errors a user causes (an option, a config value, a file, a
folder), so that the command line can report all of them the same way: one line
``error: …`` on stderr and exit code :attr:`UserError.exit_code` (2), never a traceback.

Every other exception that reaches the command line is a bug and shows its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for or supplied is wrong; the message says what and where.

    Subclasses keep their historical bases too (:class:`attnopt.config.ConfigError` is a
    ``ValueError``, :class:`attnopt.data.shared.DataError` a ``RuntimeError``), so existing
    ``except`` clauses keep working."""

    #: exit code of the command line for this error
    exit_code: int = 2


class RunFolderError(UserError):
    """A run folder cannot be used: it is a file, not writable, or holds another run."""


class CheckpointError(UserError):
    """A checkpoint is unreadable, truncated, or holds something other than plain data."""

"""What every command shares: the consoles, the progress adapter, the common options, the
option parsers and the one error policy.

Error policy: a :class:`~attnopt.errors.UserError` (config, data, run folder, checkpoint …)
or a click usage error is printed as one line ``error: …`` on stderr with exit code 2; a
fault of the file system (no space left, read-only, permission denied, I/O error:
:class:`~attnopt.errors.StorageError` or an ``OSError`` with one of
:data:`~attnopt.errors.STORAGE_ERRNOS`) is one line with exit code 1, saying that the run
folder is not marked complete; Ctrl-C exits 130 with a line saying what was kept, and so does
SIGTERM (a scheduler's or ``kill``'s stop) with exit code 143; anything else is a bug and shows
its traceback.
``attnopt --debug …`` (or ``ATTNOPT_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from typer.core import TyperGroup

from attnopt.errors import STORAGE_ERRNOS, StorageError, UserError, storage_error
from attnopt.runtime import ProgressFn

#: set by ``attnopt --debug``
DEBUG = {"on": os.environ.get("ATTNOPT_DEBUG", "") not in ("", "0")}


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print ``error: message`` (one line) on stderr and return the exit to raise."""
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def _is(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is a click exception called ``name`` (typer vendors its own click, older
    typers use the click package: the class names are what both share)."""
    return any(c.__name__ == name for c in type(exc).__mro__)


class AttnoptGroup(TyperGroup):
    """The root command group: click's usage errors become one line ``error: …`` (exit 2)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        try:
            rv = super().main(args=args, prog_name=prog_name or "attnopt", complete_var=complete_var,
                              standalone_mode=False, **extra)
        except Exception as exc:
            if standalone_mode and not DEBUG["on"] and _reportable(exc):  # outside any guard()
                err = _as_user_error(exc)
                sys.exit(fail(str(err), err.exit_code).exit_code)
            if _is(exc, "NoArgsIsHelpError"):  # `attnopt synthetic`: the help, not an error
                typer.echo(exc.format_message())  # type: ignore[attr-defined]
                rv = 0
            elif not standalone_mode or not (_is(exc, "ClickException") or _is(exc, "Abort")):
                raise
            elif _is(exc, "Abort"):
                sys.exit(fail("aborted", 130).exit_code)
            else:
                sys.exit(fail(exc.format_message(), exc.exit_code).exit_code)  # type: ignore[attr-defined]
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def run_app(app: typer.Typer, **kwargs: Any) -> None:
    """Run ``app`` as a program (the console script and ``python -m``): its exit goes through
    :func:`attnopt.runtime.end_process`, so a torchrun rank that used gloo leaves without
    Python's finalisation.  (Not in :meth:`AttnoptGroup.main`, which tests call in-process.)"""
    from attnopt.runtime import end_process

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        app(**kwargs)
    except SystemExit as exc:
        end_process(exc.code)
        raise
    end_process(0)


class Terminated(KeyboardInterrupt):
    """SIGTERM in a program: it takes Ctrl-C's path (checkpoints kept, one line saying so)."""


def _terminated(signum, frame) -> None:
    raise Terminated


def interrupted(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The word and exit code of an interrupt: ("interrupted", 130) for Ctrl-C, ("terminated",
    143 = 128 + SIGTERM) for a termination."""
    return ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)


def new_app(help: str) -> typer.Typer:
    """A command group in the house style."""
    return typer.Typer(help=help, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)


def _reportable(exc: BaseException) -> bool:
    """A user error, or a file-system fault the user can fix (not a bug's OSError)."""
    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS)


def _as_user_error(exc: BaseException) -> UserError:
    """A reportable exception as the UserError the policy prints (a bare OSError: StorageError)."""
    return exc if isinstance(exc, UserError) else storage_error(exc, "file-system error on")


@contextmanager
def guard(out: Optional[Path] = None, *, resumable: bool = False) -> Iterator[None]:
    """The error policy around a command's work.  ``out``: the run folder the work writes
    (named in the interrupt message, with what a rerun does)."""
    try:
        yield
    except (UserError, OSError) as exc:
        if DEBUG["on"] or not _reportable(exc):
            raise
        exc = _as_user_error(exc)
        kept = ""
        if isinstance(exc, StorageError) and out is not None:
            kept = f"; {out} is not marked complete: the same command {'resumes' if resumable else 'redoes'} it"
        raise fail(f"{exc}{kept}", exc.exit_code) from None
    except KeyboardInterrupt as exc:
        what, code = interrupted(exc)
        if out is None:
            raise fail(f"{what}; nothing was written", code) from None
        again = "resumes it" if resumable else "redoes it"
        raise fail(f"{what}; {out} keeps the unfinished run (not marked complete): the same command "
                   f"{again}, --overwrite starts afresh", code) from None


# --------------------------------------------------------------------------------------
# consoles and progress


def console():
    """The stdout console (140 columns when piped, so tables are not squeezed)."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=140)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Optional[ProgressFn]]:
    """A :data:`~attnopt.runtime.ProgressFn` drawing rich bars on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as bars:
        def advance(label: str, step: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], total=total)
            bars.advance(tasks[label], step)

        yield advance


def finish(con, out: Optional[Path], t0: float, what: str) -> None:
    """The closing lines of a command: where the run went and the wall time."""
    if out is not None:
        con.print(f"[bold]{what}[/] written to [cyan]{out}[/]")
    con.print(f"wall time: {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------------------
# common options (Annotated, one style)

OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<experiment>-<time>).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Empty --out first if it holds another run.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on a terminal.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Shared data folder (default: $ATTNOPT_DATA, else ../shared/data).")]
CacheOpt = Annotated[Optional[Path], typer.Option(
    "--cache", help="Cache folder (default: $ATTNOPT_CACHE, else ~/.cache/attnopt).")]


def open_out(out: Optional[Path], experiment: str, config: Any, *, overwrite: bool = False,
             resumable: bool = False):
    """The run folder of a command: ``out`` or ``runs/<experiment>-<time>``, checked by
    :func:`attnopt.report.runs.open_run_dir` (errors are one line, exit 2)."""
    from attnopt.report.runs import default_run_path, open_run_dir

    with guard():
        return open_run_dir(out if out is not None else default_run_path(experiment), config,
                            experiment=experiment, overwrite=overwrite, resumable=resumable)


# --------------------------------------------------------------------------------------
# option parsers (errors name the option)


_WHOLE = re.compile(r"\s*[-+]?\d+\s*")


def _int(text: str) -> int:
    """``int(text)`` for a whole number written as one (ValueError otherwise: ``int`` itself
    accepts ``"1_000"``)."""
    if not _WHOLE.fullmatch(text):
        raise ValueError(text)
    return int(text)


def whole(value: Any) -> int:
    """The parser of every integer option: a whole number written as one (``"0.0"``, ``"1e3"`` and
    ``"1_000"`` are refused, whatever the installed typer's own integer conversion accepts)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str) or not _WHOLE.fullmatch(value):
        raise typer.BadParameter(f"{value!r} is not a whole number")
    return int(value)


def int_option(*decls: str, **kw: Any) -> Any:
    """``typer.Option`` for an integer (or a list of integers), parsed by :func:`whole`."""
    return typer.Option(*decls, parser=whole, **kw)


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """``"1..100"``, ``"1-100"``, ``"3,5,9"`` or a mix (``"1..5,9"``) → a tuple of seeds."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        sep = ".." if ".." in part else ("-" if "-" in part[1:] else None)
        try:
            if sep == "..":
                a, b = part.split("..", 1)
            elif sep == "-":
                i = part.index("-", 1)
                a, b = part[:i], part[i + 1:]
            if sep:
                lo, hi = _int(a), _int(b)
                if hi < lo:
                    raise typer.BadParameter(f"empty seed range {part!r}", param_hint=option)
                out.extend(range(lo, hi + 1))
            else:
                out.append(_int(part))
        except ValueError:
            raise typer.BadParameter(f"cannot read seeds {text!r} (use e.g. 1..100 or 1,2,5)",
                                     param_hint=option) from None
    if not out:
        raise typer.BadParameter("no seeds given", param_hint=option)
    return tuple(out)


def _count(text: str, option: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise typer.BadParameter(f"cannot read {text!r} as a number of iterations", param_hint=option) from None
    if not v.is_integer() or v < 1:
        raise typer.BadParameter(f"iterations must be a whole number >= 1, got {text}", param_hint=option)
    return int(v)


def parse_iters(text: Optional[str], option: str = "--iters") -> Any:
    """``None`` (protocol), ``"2000"`` (every p) or ``"1.75=1500,2=2000,3=20000"`` (per p)."""
    if text is None:
        return None
    text = str(text).strip()
    if "=" in text or ":" in text:
        out: dict[float, int] = {}
        for part in text.split(","):
            kv = part.replace(":", "=").split("=")
            if len(kv) != 2:
                raise typer.BadParameter(f"cannot read {part!r} (use 2000 or 1.75=1500,2=2000)", param_hint=option)
            try:
                p = float(kv[0])
            except ValueError:
                raise typer.BadParameter(f"cannot read p in {part!r}", param_hint=option) from None
            out[p] = _count(kv[1], option)
        return out
    return _count(text, option)


def parse_floats(text: str, option: str) -> list[float]:
    """Comma-separated numbers."""
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"must be comma-separated numbers, got {text!r}", param_hint=option) from None


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated integers."""
    try:
        return tuple(_int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"must be comma-separated integers, got {text!r}", param_hint=option) from None

"""Every command, driven with generated bad arguments, answers as the error policy says: one
line ``error: …`` on stderr naming the option, exit code 2, no traceback, and no run folder
left behind that looks complete.  The experiments themselves are replaced by a sentinel, so a
bad value that slips through shows up as a failure here instead of as a long run."""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import re
import typing
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.models import ArgumentInfo, OptionInfo
from typer.testing import CliRunner

import attnopt.experiments
from attnopt.cli import app
from attnopt.report.runs import is_complete

runner = CliRunner()


class Accepted(Exception):
    """Raised by the stand-in experiments: the command accepted its arguments."""


def _commands(t: typer.Typer, prefix: tuple[str, ...] = ()):
    for info in t.registered_commands:
        yield prefix + (info.name or info.callback.__name__.replace("_", "-"),), info.callback
    for group in t.registered_groups:
        yield from _commands(group.typer_instance, prefix + (group.name,))


def _params(fn):
    """(python name, option declarations or None for an argument, base type) of a command."""
    hints = typing.get_type_hints(fn, include_extras=True)
    for name in inspect.signature(fn).parameters:
        hint = hints[name]
        info, base = None, hint
        if typing.get_origin(hint) is typing.Annotated:
            base, *extras = typing.get_args(hint)
            info = next((e for e in extras if isinstance(e, (OptionInfo, ArgumentInfo))), None)
        while typing.get_origin(base) in (typing.Union, getattr(__import__("types"), "UnionType", None), list, typing.List):
            base = next(a for a in typing.get_args(base) if a is not type(None))
        decls = None
        if isinstance(info, OptionInfo):
            decls = [d for d in (info.param_decls or ()) if d.startswith("-")] or [f"--{name.replace('_', '-')}"]
            decls = [d.split("/")[0] for d in decls]
        yield name, decls, base


COMMANDS = sorted(_commands(app))
CASES = [(cmd, name, decls, base) for cmd, fn in COMMANDS for name, decls, base in _params(fn)
         if decls and base in (int, float)]


def _positional(fn, tmp: Path) -> list[str]:
    return [str(tmp) for name, decls, base in _params(fn) if decls is None]


@pytest.fixture(autouse=True)
def _stand_in_experiments(monkeypatch):
    """Every public ``run_*``/``train``-like entry point of attnopt.experiments raises Accepted."""
    def accepted(*args, **kwargs):
        raise Accepted()

    for mod in pkgutil.walk_packages(attnopt.experiments.__path__, "attnopt.experiments."):
        m = importlib.import_module(mod.name)
        for attr, val in list(vars(m).items()):
            if callable(val) and re.match(r"run_|train$|sparsity_report$|attention_report$|results_table$", attr):
                monkeypatch.setattr(m, attr, accepted)


def _check(args: list[str], option: str, pyname: str, out: Path | None) -> None:
    res = runner.invoke(app, args)
    if isinstance(res.exception, Accepted):
        pytest.fail(f"{' '.join(args)} was accepted")
    text = res.stdout + res.stderr
    assert "Traceback" not in text, text
    assert res.exit_code == 2, (args, res.exit_code, text, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.stderr)
    names = {option.lstrip("-").replace("-", "_").lower(), pyname.lower()}
    said = lines[0].lower().replace("-", "_")
    assert any(n in said for n in names), (args, lines[0])
    if out is not None:
        assert not is_complete(out), out


BAD_INT = st.one_of(st.sampled_from(["x", "1.5", "", "1e400", "nan"]),
                    st.text(min_size=1, max_size=6).filter(lambda s: not re.fullmatch(r"\s*[-+]?\d+\s*", s)))
BAD_FLOAT = st.one_of(st.sampled_from(["x", "nan", "NaN", "", "1,5"]),
                      st.text(min_size=1, max_size=6).filter(lambda s: not _is_number(s)))


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s)) or True
    except ValueError:
        return False


@pytest.mark.parametrize("cmd,name,decls,base", CASES, ids=[f"{' '.join(c[0])}:{c[2][0]}" for c in CASES])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_number_is_one_line_naming_the_option(cmd, name, decls, base, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    value = data.draw(BAD_INT if base is int else BAD_FLOAT)
    fn = dict(COMMANDS)[cmd]
    has_out = any(d == "--out" for _, ds, _ in _params(fn) for d in (ds or ()))
    out = tmp / "run" if has_out else None
    args = [*cmd, *_positional(fn, tmp), decls[0], value] + (["--out", str(out)] if has_out else [])
    _check(args, decls[0], name, out)


INT_CASES = [c for c in CASES if c[3] is int]


@pytest.mark.parametrize("value", ["0.0", "2.0", "1e3", "1_0"])
@pytest.mark.parametrize("cmd,name,decls,base", INT_CASES, ids=[f"{' '.join(c[0])}:{c[2][0]}" for c in INT_CASES])
def test_an_integer_option_refuses_a_float_spelling(cmd, name, decls, base, value, tmp_path):
    """A lax converter (typer >= 0.2x validates with pydantic) reads "0.0" or "1_0" as an integer;
    every integer option refuses them, whatever typer is installed (found at random by the test
    above: ``--seed 0.0`` was accepted)."""
    fn = dict(COMMANDS)[cmd]
    has_out = any(d == "--out" for _, ds, _ in _params(fn) for d in (ds or ()))
    out = tmp_path / "run" if has_out else None
    args = [*cmd, *_positional(fn, tmp_path), decls[0], value] + (["--out", str(out)] if has_out else [])
    _check(args, decls[0], name, out)


@pytest.mark.parametrize("cmd", [c for c, _ in COMMANDS], ids=[" ".join(c) for c, _ in COMMANDS])
def test_unknown_option_and_out_on_a_file(cmd, tmp_path):
    fn = dict(COMMANDS)[cmd]
    pos = _positional(fn, tmp_path)
    _check([*cmd, *pos, "--no-such-option", "1"], "--no-such-option", "no_such_option", None)
    if any(d == "--out" for _, ds, _ in _params(fn) for d in (ds or ())):
        f = tmp_path / "a-file"
        f.write_text("not a folder")
        res = runner.invoke(app, [*cmd, *pos, "--out", str(f)])
        if not isinstance(res.exception, Accepted):  # the folder is opened before the work starts
            assert res.exit_code == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stdout, res
        assert f.read_text() == "not a folder"


def test_one_typer_style():
    """Every parameter of every command is declared as ``Annotated[type, typer.Option/Argument(…)]``."""
    plain = [f"{' '.join(cmd)}: {name}" for cmd, fn in COMMANDS for name, p in inspect.signature(fn).parameters.items()
             if typing.get_origin(typing.get_type_hints(fn, include_extras=True)[name]) is not typing.Annotated]
    assert plain == []

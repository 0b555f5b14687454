"""The typer CLI (attnopt.cli), run in reduced form through CliRunner."""

import json

import pytest
import typer
from typer.testing import CliRunner

from attnopt import __version__
from attnopt.cli import app
from attnopt.cli._common import parse_iters, parse_seeds

runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


def test_version_and_help():
    assert __version__ in _ok(["--version"])
    out = _ok(["--help"])
    assert "demo" in out and "synthetic" in out
    out = _ok(["synthetic", "--help"])
    for cmd in ("convergence", "matrix", "path", "joint"):
        assert cmd in out


def test_app_is_a_plain_typer_that_accepts_sub_apps():
    assert isinstance(app, typer.Typer)
    extra = typer.Typer()

    @extra.command()
    def hello():
        typer.echo("hi")

    @extra.command()
    def bye():
        typer.echo("bye")

    app.add_typer(extra, name="extra-test")
    try:
        assert "hi" in _ok(["extra-test", "hello"])
    finally:
        app.registered_groups = [g for g in app.registered_groups if g.name != "extra-test"]


def test_parsers():
    assert parse_seeds("1..3,7") == (1, 2, 3, 7)
    assert parse_seeds("2-4") == (2, 3, 4)
    assert parse_iters(None) is None and parse_iters("50") == 50
    assert parse_iters("1.75=10,2:20") == {1.75: 10, 2.0: 20}
    with pytest.raises(typer.BadParameter):
        parse_seeds("a..b")
    with pytest.raises(typer.BadParameter):
        parse_iters("many")


def test_convergence_command(tmp_path):
    out = _ok(["synthetic", "convergence", "--p", "2", "--p", "3", "--seeds", "1..3", "--iters", "2=60,3=120",
               "--solver", "cvxpy", "--n-log", "30", "--out", str(tmp_path)])
    assert "wall time" in out and "E1 convergence" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["n_seeds"] == 3 and set(s["per_p"]) == {"2", "3"} and s["per_p"]["3"]["iterations"] == 120
    for f in ("config.json", "report.md", "convergence.png", "convergence_history.csv", "rate.png"):
        assert (tmp_path / f).is_file()


def test_matrix_command(tmp_path):
    out = _ok(["synthetic", "matrix", "--p", "1.75", "--p", "3", "--n-seeds", "2", "--iters", "60",
               "--solver", "cvxpy", "--n-log", "30", "--init", "zeros", "--out", str(tmp_path)])
    assert "E1 matrix" in out and "wall time" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert len(s["table"]) == 4
    assert (tmp_path / "matrix.png").is_file() and (tmp_path / "matrix_final.csv").is_file()


def test_path_and_joint_commands(tmp_path):
    out = _ok(["synthetic", "path", "--iters", "80", "--seed", "2", "--entry", "0,1", "--entry", "2,3",
               "--solver", "cvxpy", "--out", str(tmp_path / "path")])
    assert "E1 path" in out
    s = json.loads((tmp_path / "path" / "summary.json").read_text())
    assert s["seed"] == 2 and s["entries"] == [[0, 1], [2, 3]]
    out = _ok(["synthetic", "joint", "--iters", "1.75=300,2=300,3=300", "--solver", "cvxpy",
               "--out", str(tmp_path / "joint")])
    assert "E2 joint" in out
    s = json.loads((tmp_path / "joint" / "summary.json").read_text())
    assert s["all_match_spec"] is True


def test_bad_options_give_clean_errors(tmp_path):
    res = runner.invoke(app, ["synthetic", "convergence", "--lr", "-1", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "lr must be > 0" in res.output
    res = runner.invoke(app, ["synthetic", "convergence", "--p", "0.5", "--out", str(tmp_path)])
    assert res.exit_code != 0
    res = runner.invoke(app, ["synthetic", "path", "--entry", "1,2"])
    assert res.exit_code != 0


def test_demo_reduced(tmp_path):
    out = _ok(["demo", "--out", str(tmp_path), "--n-seeds", "3", "--iters", "1.75=100,2=100,3=300",
               "--solver", "cvxpy"])
    assert "E2 joint" in out and "wall time" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["e2_tokens_match_spec"] is True and len(s["matrix"]) == 9
    for f in ("report.md", "config.json", "e1/matrix.png", "e1/convergence.png", "path/path.png", "e2/joint.png"):
        assert (tmp_path / f).is_file(), f

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
    for cmd in ("convergence", "matrix", "path", "joint", "kq"):
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
    for bad in ("1_0", "1.0", "1..2.0", "3,1e1"):  # int() accepts "1_0"; none is a seed as written
        with pytest.raises(typer.BadParameter):
            parse_seeds(bad)
    with pytest.raises(typer.BadParameter):
        parse_iters("many")


# ------------------------------------------------------------------ wiring (the experiments stand in)


@pytest.fixture(scope="module")
def tiny():
    """Real results of tiny runs, returned by the stand-ins so the commands print real tables."""
    from attnopt.experiments.synthetic import run_joint, run_kq, run_matrix, run_path

    m = run_matrix(ps=(2.0, 3.0), n_seeds=2, iterations=20, n_log=10)
    return {"run_convergence": m.convergence, "run_matrix": m,
            "run_path": run_path(ps=(1.75,), iterations=20, n_log=10),
            "run_joint": run_joint(ps=(2.0,), iterations=20, n_log=10),
            "run_kq": run_kq(ps=(2.0,), ranks=(3,), n_seeds=2, iterations=20, n_log=10)}


@pytest.fixture
def calls(monkeypatch, tiny):
    """Replace the experiments by stand-ins recording (config, out) and returning ``tiny``'s results."""
    import attnopt.experiments.synthetic as syn
    from attnopt.experiments.synthetic import kq

    seen = {}
    for name, res in tiny.items():
        def fake(cfg, *, out=None, progress=None, name=name, res=res):
            seen[name] = (cfg, out)
            return res
        monkeypatch.setattr(kq if name == "run_kq" else syn, name, fake)
    return seen


def test_convergence_command_wiring(tmp_path, calls):
    out = _ok(["synthetic", "convergence", "--p", "2", "--p", "3", "--seeds", "1..3", "--iters", "2=60,3=120",
               "--solver", "cvxpy", "--n-log", "30", "--step", "published", "--out", str(tmp_path)])
    assert "wall time" in out and "E1 convergence" in out and "rate of the matched divergence" in out
    cfg, rd = calls["run_convergence"]
    assert cfg.ps == (2.0, 3.0) and cfg.seed_list() == (1, 2, 3) and cfg.iterations == {2.0: 60, 3.0: 120}
    assert (cfg.solver, cfg.n_log, cfg.step) == ("cvxpy", 30, "published")
    assert rd.path == tmp_path and json.loads((tmp_path / "config.json").read_text())["config"]["step"] == "published"


def test_matrix_path_joint_kq_wiring(tmp_path, calls):
    out = _ok(["synthetic", "matrix", "--p", "1.75", "--p", "3", "--q", "2", "--n-seeds", "2", "--iters", "60",
               "--init", "zeros", "--alpha-from", "p", "--out", str(tmp_path / "m")])
    assert "E1 matrix" in out
    cfg, _ = calls["run_matrix"]
    assert cfg.ps == (1.75, 3.0) and cfg.qs == (2.0,) and cfg.init == "zeros" and cfg.step == "exact"
    out = _ok(["synthetic", "path", "--iters", "80", "--seed", "2", "--entry", "0,1", "--entry", "2,3",
               "--out", str(tmp_path / "path")])
    cfg, _ = calls["run_path"]
    assert "E1 path" in out and cfg.seed == 2 and cfg.entries == ((0, 1), (2, 3)) and cfg.iterations == 80
    out = _ok(["synthetic", "joint", "--p", "2", "--lr", "0.05", "--out", str(tmp_path / "joint")])
    cfg, _ = calls["run_joint"]
    assert "E2 joint" in out and cfg.ps == (2.0,) and cfg.lr == 0.05
    out = _ok(["synthetic", "kq", "--p", "2", "--rank", "4", "--rank", "10", "--n-seeds", "3",
               "--out", str(tmp_path / "kq")])
    cfg, _ = calls["run_kq"]
    assert "E7" in out and cfg.ranks == (4, 10) and cfg.n_seeds == 3 and cfg.ps == (2.0,)


@pytest.mark.parametrize("args,option", [
    (["synthetic", "convergence", "--lr", "-1"], "lr"),
    (["synthetic", "convergence", "--p", "0.5"], "ps"),
    (["synthetic", "convergence", "--iters", "1.75=0"], "iters"),
    (["synthetic", "convergence", "--step", "fast"], "step"),
    (["synthetic", "matrix", "--alpha-from", "x"], "alpha_from"),
    (["synthetic", "matrix", "--q", "1"], "qs"),
    (["synthetic", "path", "--entry", "1,2"], "entry"),
    (["synthetic", "path", "--entry", "1,20", "--entry", "0,0"], "entry"),
    (["synthetic", "joint", "--init-std", "1"], "init-std"),
    (["synthetic", "joint", "--step", "x"], "step"),
    (["synthetic", "kq", "--rank", "11"], "ranks"),
    (["synthetic", "kq", "--init-std", "-1"], "init_std"),
    (["demo", "--iters", "1.75=0.5"], "iters"),
    (["demo", "--n-seeds", "0"], "n_seeds"),
])
def test_bad_options_are_one_error_line(tmp_path, calls, args, option):
    res = runner.invoke(app, args + ["--out", str(tmp_path / "run")])
    assert res.exit_code == 2, (res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], res.stderr
    assert not calls and "Traceback" not in res.output


@pytest.mark.parametrize("cmd", [["synthetic", "convergence"], ["synthetic", "matrix"], ["synthetic", "path"],
                                 ["synthetic", "joint"], ["synthetic", "kq"], ["demo"]])
def test_out_on_a_file_is_one_error_line(tmp_path, calls, cmd):
    f = tmp_path / "a_file"
    f.write_text("x")
    res = runner.invoke(app, cmd + ["--out", str(f)])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert not calls


def test_ctrl_c_keeps_an_incomplete_folder_and_says_so(tmp_path, monkeypatch):  # issue 19 row 5
    from attnopt.experiments.synthetic import convergence
    from attnopt.report.runs import is_complete

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(convergence, "train_md", interrupt)
    res = runner.invoke(app, ["synthetic", "convergence", "--n-seeds", "2", "--iters", "10", "--out", str(tmp_path)])
    assert res.exit_code == 130
    assert "interrupted" in res.stderr and "not marked complete" in res.stderr and str(tmp_path) in res.stderr
    assert (tmp_path / "config.json").is_file() and not is_complete(tmp_path)


def test_demo_one_p(tmp_path, calls, monkeypatch):  # issue 19 row 9
    import attnopt.experiments.synthetic as syn

    seen = {}

    def fake_demo(cfg, *, out=None, progress=None):
        seen["cfg"] = cfg
        raise KeyboardInterrupt  # the config is what matters here

    monkeypatch.setattr(syn, "run_demo", fake_demo)
    res = runner.invoke(app, ["demo", "--iters", "1.75=30", "--out", str(tmp_path)])
    assert res.exit_code == 130 and seen["cfg"].ps() == (1.75,), res.stderr


def test_demo_reduced(tmp_path):
    out = _ok(["demo", "--out", str(tmp_path), "--n-seeds", "3", "--iters", "1.75=100,2=100,3=300"])
    assert "E2 joint" in out and "wall time" in out
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["e2_tokens_match_spec"] is True and len(s["matrix"]) == 9
    for f in ("report.md", "config.json", "e1/matrix.png", "e1/convergence.png", "path/path.png", "e2/joint.png"):
        assert (tmp_path / f).is_file(), f

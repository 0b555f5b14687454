"""File-system faults end in one line ``error: …`` (exit 1 for a fault of the file system,
2 for a folder the user chose badly), never a traceback, and never leave a run folder marked
complete; a re-run once the fault is gone resumes (training) or redoes (quick runs) cleanly.

Faults are real where the machine allows it (a small tmpfs, mounted read-only or nearly full,
when the tests run as root with mount rights); elsewhere they are injected: ``os.fsync``
raises ``OSError(ENOSPC)`` once the folder holds more than the budget, and a read-only folder
is a ``chmod 0555`` one (which only binds a user that is not root)."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnopt.cli import app
from attnopt.errors import RunFolderError, StorageError, UserError
from attnopt.files import atomic_write_bytes, read_json
from attnopt.report.runs import is_complete, load_run
from tests.imdb_fixtures import TINY, needs_data

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
QUICK = ["synthetic", "convergence", "--p", "2", "--iters", "40", "--seeds", "1..2", "--no-progress"]


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@functools.lru_cache(maxsize=1)
def _can_mount() -> bool:
    probe = Path(tempfile.mkdtemp(prefix="attnopt-mount-probe-"))
    try:
        ok = _mount(probe, "size=4k")
        if ok:
            _umount(probe)
        return ok
    finally:
        probe.rmdir()


@pytest.fixture(params=["tmpfs", "injected"])
def disk_kind(request):
    """Each disk-full test runs on a real small tmpfs (skipped where it cannot be mounted) and
    with the injected fault (everywhere)."""
    if request.param == "tmpfs" and not _can_mount():
        pytest.skip("cannot mount a tmpfs here (not root, or no mount rights)")
    return request.param


@contextmanager
def small_disk(tmp_path: Path, size_kib: int, monkeypatch, kind: str = "tmpfs"):
    """A folder on which writes beyond ``size_kib`` fail with ENOSPC: a real tmpfs of that
    size (``kind="tmpfs"``), or ``os.fsync`` injecting the fault.  Yields (folder, grow):
    ``grow()`` gives it room (remount or stop injecting)."""
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    if kind == "tmpfs" and _mount(folder, f"size={size_kib}k"):
        try:
            yield folder, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
        finally:
            _umount(folder)
        return
    folder.mkdir()
    real_fsync, budget = os.fsync, {"bytes": size_kib * 1024}

    def fsync(fd):
        used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        if used > budget["bytes"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield folder, lambda: budget.update(bytes=1 << 40)


@contextmanager
def read_only(folder: Path):
    """``folder`` (with what it holds) made read-only: a read-only tmpfs copy mounted over it
    where the machine allows, else ``chmod -R a-w`` (skipped as root, which ignores modes)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        staged = folder.parent / f".{folder.name}-copy"
        shutil.copytree(folder, staged)
        if not _mount(folder, "size=16m"):
            pytest.skip("running as root without mount rights: no way to make a folder read-only")
        shutil.copytree(staged, folder, dirs_exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        try:
            yield folder
        finally:
            _umount(folder)
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        yield folder
    finally:
        for p, m in modes.items():
            p.chmod(m)


def one_error_line(result, code: int) -> str:
    text = result.output.strip()
    assert result.exit_code == code, text
    assert "Traceback" not in text and (result.exception is None or isinstance(result.exception, SystemExit)), text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


# ---------------------------------------------------------------------------------------------
# writes and reads, in Python


def test_atomic_write_keeps_the_old_file_and_no_temporary_when_the_disk_is_full(tmp_path, monkeypatch, disk_kind):
    with small_disk(tmp_path, 64, monkeypatch, disk_kind) as (disk, _):
        target = atomic_write_bytes(disk / "a.bin", b"old")
        with pytest.raises(StorageError) as info:
            atomic_write_bytes(target, b"x" * (256 * 1024))
        assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
        assert str(target) in str(info.value) and "No space left" in str(info.value)
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in disk.iterdir()) == ["a.bin"]


def test_read_json_names_the_file_and_what_is_wrong(tmp_path):
    f = tmp_path / "config.json"
    with pytest.raises(UserError, match="config.json does not exist"):
        read_json(f)
    f.write_text('{"config": {')
    with pytest.raises(RunFolderError, match=r"config.json is not valid JSON \(line 1, column 13"):
        read_json(f, RunFolderError)
    f.write_text("")
    with pytest.raises(UserError, match="config.json is empty"):
        read_json(f)
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="is not UTF-8"):
        read_json(f)


def test_load_run_reads_a_run_and_refuses_a_damaged_one(tmp_path):
    assert runner.invoke(app, QUICK + ["--out", str(tmp_path / "run")]).exit_code == 0
    run = load_run(tmp_path / "run")
    assert run.complete and run.experiment == "e1-convergence" and run.meta["attnopt_version"]
    (tmp_path / "run" / "config.json").write_text('{"config": [1, 2')
    with pytest.raises(RunFolderError, match="config.json is not valid JSON"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text('{"meta": {}}')
    with pytest.raises(RunFolderError, match='has no "config" object'):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(RunFolderError, match="holds no config.json"):
        load_run(tmp_path / "run")
    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(tmp_path / "nothing")


@pytest.mark.parametrize("damage", ["invalid", "missing"])
def test_the_example_reader_prints_one_line_for_a_damaged_folder(tmp_path, damage):
    assert runner.invoke(app, QUICK + ["--out", str(tmp_path / "run")]).exit_code == 0
    config = tmp_path / "run" / "config.json"
    config.write_text('{"config": {"experiment": ') if damage == "invalid" else config.unlink()
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "read_run_folder.py"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "config.json" in lines[0], done.stderr


# ---------------------------------------------------------------------------------------------
# the command line


def test_out_on_a_read_only_folder_is_one_line(tmp_path):
    with read_only(tmp_path / "ro") as ro:
        line = one_error_line(runner.invoke(app, QUICK + ["--out", str(ro)]), 2)
        assert "not writable" in line and "--out" in line
        line = one_error_line(runner.invoke(app, QUICK + ["--out", str(ro / "sub")]), 2)
        assert "cannot create run folder" in line and "--out" in line


def test_out_holding_a_finished_run_on_a_read_only_file_system_is_one_line_and_untouched(tmp_path):
    run = tmp_path / "ro"
    assert runner.invoke(app, QUICK + ["--out", str(run)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with read_only(run):
        for extra in ([], ["--overwrite"]):
            line = one_error_line(runner.invoke(app, QUICK + ["--out", str(run)] + extra), 2)
            assert "not writable" in line
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_full_disk_during_a_quick_run_is_one_line_and_a_rerun_with_space_completes(tmp_path, monkeypatch, disk_kind):
    with small_disk(tmp_path, 24, monkeypatch, disk_kind) as (disk, grow):
        out = disk / "run"
        line = one_error_line(runner.invoke(app, QUICK + ["--out", str(out)]), 1)
        assert "No space left on device" in line and "not marked complete" in line
        assert not is_complete(out)
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        grow()
        assert runner.invoke(app, QUICK + ["--out", str(out)]).exit_code == 0
        assert is_complete(out)


def test_a_config_json_damaged_by_hand_is_named_when_the_folder_is_reused(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, QUICK + ["--out", str(out)]).exit_code == 0
    (out / "config.json").write_text("{oops")
    line = one_error_line(runner.invoke(app, QUICK + ["--out", str(out)]), 2)
    assert "config.json is not valid JSON" in line
    assert runner.invoke(app, QUICK + ["--out", str(out), "--overwrite"]).exit_code == 0
    assert is_complete(out)


def test_an_os_error_outside_any_guard_is_one_line_exit_1(monkeypatch, tmp_path):
    """The safety net of the root group: an unexpected file-system fault in any command."""
    import attnopt.experiments.synthetic as synthetic

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "x"))

    monkeypatch.setattr(synthetic, "run_convergence", broken)
    line = one_error_line(runner.invoke(app, QUICK + ["--out", str(tmp_path / "run")]), 1)
    assert "Input/output error" in line and "EIO" in line


# ---------------------------------------------------------------------------------------------
# IMDB: the token cache and a training run


@needs_data
def test_prepare_cache_that_is_a_file_or_read_only_names_the_option(tmp_path):
    args = ["imdb", "prepare", "--dataset", "sst2", "--max-len", "16", "--subset", "40", "--no-progress"]
    (tmp_path / "file").write_text("x")
    line = one_error_line(runner.invoke(app, args + ["--cache", str(tmp_path / "file")]), 2)
    assert "is a file, not a folder" in line and "--cache" in line
    with read_only(tmp_path / "ro") as ro:
        line = one_error_line(runner.invoke(app, args + ["--cache", str(ro)]), 2)
        assert "not writable" in line and "--cache" in line


@needs_data
def test_prepare_on_a_full_disk_is_one_line_and_leaves_no_partial_cache(tmp_path, monkeypatch, disk_kind):
    args = ["imdb", "prepare", "--dataset", "sst2", "--max-len", "32", "--subset", "2000", "--no-progress"]
    with small_disk(tmp_path, 16, monkeypatch, disk_kind) as (disk, grow):
        line = one_error_line(runner.invoke(app, args + ["--cache", str(disk)]), 1)
        assert "No space left" in line and ".npz" in line
        assert list(disk.iterdir()) == []
        grow()
        assert runner.invoke(app, args + ["--cache", str(disk)]).exit_code == 0
        assert len(list(disk.glob("*.npz"))) == 1


def _train_args(out: Path, cache: Path) -> list[str]:
    t = TINY
    return ["imdb", "train", "--dataset", t["dataset"], "--max-len", str(t["max_len"]), "--size", str(t["size"]),
            "--n-embd", "16", "--n-hidden", "32", "--batch-size", "50", "--subset", "200", "--lr", "0.01",
            "--max-epochs", "3", "--target-train-acc", "1", "--device", "cpu", "--no-progress",
            "--out", str(out), "--cache", str(cache)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cache, run folder) of an uninterrupted tiny training run."""
    root = tmp_path_factory.mktemp("reference")
    assert runner.invoke(app, _train_args(root / "run", root / "cache")).exit_code == 0
    return root / "cache", root / "run"


@needs_data
def test_training_on_a_full_disk_stops_with_one_line_and_resumes_to_the_same_run(tmp_path, monkeypatch, disk_kind,
                                                                                  trained):
    cache, reference = trained
    size = (reference / "checkpoint.pt").stat().st_size
    # room for the first checkpoint, not for the second beside it (the write is atomic)
    with small_disk(tmp_path, int(1.5 * size / 1024), monkeypatch, disk_kind) as (disk, grow):
        out = disk / "run"
        line = one_error_line(runner.invoke(app, _train_args(out, cache)), 1)
        # the epoch's checkpoint is written beside the last one first (checkpoint.next.pt), then committed
        assert "checkpoint.next.pt" in line and "No space left" in line and "resumes" in line
        assert not is_complete(out)
        grow()
        assert runner.invoke(app, _train_args(out, cache)).exit_code == 0
        assert is_complete(out)
        ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
        assert ours["epochs"] == theirs["epochs"] == 3
        assert (out / "history.csv").read_text().splitlines()[0] == (reference / "history.csv").read_text().splitlines()[0]
        for a, b in zip(*((d / "history.csv").read_text().splitlines()[1:] for d in (out, reference))):
            assert a.split(",")[:5] == b.split(",")[:5]  # every number but the timings

"""A torchrun rank that used gloo ends without Python's finalisation (attnopt.runtime.skip_finalisation
says why: a gloo worker thread killed mid-destructor at interpreter exit aborts the rank); every
other process ends normally.  Each case runs in its own interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

APP = """
import atexit, sys, typer
from attnopt import runtime
from attnopt.cli._common import new_app, run_app
atexit.register(lambda: print("finalised", flush=True))
app = new_app("t")
@app.command()
def go(code: int = 0, mark: bool = False) -> None:
    sys.stdout.write("unflushed output")  # no newline, no flush: end_process must flush it
    if mark:
        runtime.skip_finalisation()
    raise typer.Exit(code)
@app.command()
def other() -> None:
    pass
run_app(app)
"""


def _run(source: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("code", [0, 3])
def test_a_marked_process_keeps_its_exit_code_and_output_and_skips_finalisation(code):
    res = _run(APP, "go", "--code", str(code), "--mark")
    assert res.returncode == code, res.stderr
    assert res.stdout == "unflushed output"  # flushed, and no atexit handler ran
    assert "Traceback" not in res.stderr


def test_an_unmarked_process_finalises_as_usual():
    res = _run(APP, "go", "--code", "3")
    assert res.returncode == 3 and res.stdout == "unflushed outputfinalised\n"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_tearing_down_a_gloo_group_marks_the_process_and_a_world_of_one_does_not(tmp_path):
    res = _run(f"""
        import torch.distributed as dist
        from attnopt import runtime
        from attnopt.experiments.imdb.execution import Dist, setup_distributed, teardown_distributed
        teardown_distributed(setup_distributed("cpu"))  # no torchrun: nothing to tear down
        print(runtime._EXIT["skip_finalisation"])
        dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
        teardown_distributed(Dist(0, 1, 0, initialised_here=True))
        print(dist.is_initialized(), runtime._EXIT["skip_finalisation"])
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "True"]


SLOW = """
import sys, time
from pathlib import Path
from attnopt.cli._common import guard, new_app, run_app
app = new_app("t")
@app.command()
def go(out: str) -> None:
    with guard(Path(out), resumable=True):
        print("ready", flush=True)
        time.sleep(60)
@app.command()
def other() -> None:
    pass
run_app(app)
"""


@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_terminated_program_takes_ctrl_cs_path(sig, code, word, tmp_path):
    """SIGTERM (a scheduler's stop, `kill`) ends a command as Ctrl-C does: one line saying what
    was kept, no traceback; exit code 128 + the signal's number."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW), "go", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if ours ignores it
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.startswith(f"error: {word}; {tmp_path / 'run'} keeps the unfinished run") and err.count("\n") == 1, err

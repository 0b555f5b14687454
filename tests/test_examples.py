"""The scripts in examples/ run as a user would run them and say what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    return proc.stdout


def test_optimizer_training_loop_resumes_exactly():
    out = _run("optimizer_training_loop.py")
    assert "resumed run identical to the uninterrupted one: True" in out


def test_svm_on_random_data_and_on_a_user_file(tmp_path):
    out = _run("svm_on_your_data.py")
    assert out.count("relative duality gap") == 3 and "decoder SVM" in out
    import numpy as np

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5, 4, 6))
    np.savez(tmp_path / "mine.npz", X=X, Z=rng.normal(size=(5, 6)), Y=np.array([1.0, -1, 1, -1, 1]),
             W=rng.normal(size=(6, 6)), v=rng.normal(size=6))
    out = _run("svm_on_your_data.py", str(tmp_path / "mine.npz"))
    assert "p = 2.0" in out and "optimal" in out


@pytest.mark.parametrize("given", [False, True])
def test_read_run_folder(tmp_path, given):
    if given:
        from attnopt.experiments.synthetic import run_convergence

        run_convergence({"ps": (3.0,), "iterations": 50, "n_seeds": 2, "n_log": 10}, out=tmp_path / "e1")
        out = _run("read_run_folder.py", str(tmp_path / "e1"))
        assert "p = 3:" in out
    else:
        out = _run("read_run_folder.py")
        assert "p = 2:" in out
    assert "experiment 'e1-convergence'" in out and ", complete" in out and "convergence_history.csv" in out

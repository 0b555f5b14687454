"""The documentation site builds with warnings as errors and holds the guide, the API
reference (rendered from the docstrings) and the results pages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="the docs extra (mkdocs) is part of the test extras")


def test_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    index = (site / "index.html").read_text()
    assert "Quick start" in index and "figures/demo_convergence.png" in index  # the README, links rewritten
    optim = (site / "api" / "optim" / "index.html").read_text()
    assert "MirrorDescent" in optim and "mirror_descent" in optim  # rendered from the docstrings
    assert "Differences from torch.optim" in optim and "Steps that change nothing" in optim
    assert (site / "changelog" / "index.html").read_text().count("Unreleased") >= 1
    for page in ("convex_results", "imdb_results", "optim_benchmark", "svm_benchmark"):
        assert (site / page / "index.html").is_file(), page

"""Every number of the docs' results tables, and every number quoted around them, is rebuilt
from the committed records (results/, docs/imdb_h100/) and must equal what the pages say."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnopt.docs_tables import BLOCK, PAGES, check, render, write
from attnopt.docs_tables.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def test_pages_agree_with_the_records():
    problems = check(ROOT)
    assert not problems, "\n".join(problems) + "\n(python -m attnopt.docs_tables --write rewrites the tables)"


def test_every_generator_has_a_block_and_every_block_a_generator():
    shown = {m["name"] for p in PAGES for m in BLOCK.finditer((ROOT / p).read_text(encoding="utf-8"))}
    assert shown == set(render(ROOT)), shown ^ set(render(ROOT))


def test_a_block_without_its_blank_lines_does_not_swallow_the_next_one():
    """Regression: an empty block (``<!-- table:a -->`` then ``<!-- /table -->`` with one blank
    line) matched up to the *next* block's end, so --write deleted the prose between them."""
    page = "<!-- table:a -->\n\n<!-- /table -->\n\nprose kept\n\n<!-- table:b -->\n\n| x |\n\n<!-- /table -->"
    assert [(m["name"], m["body"]) for m in BLOCK.finditer(page)] == [("b", "| x |")]


@pytest.fixture
def copy(tmp_path):
    """The pages and the records in a scratch repository."""
    for rel in ("results", "docs/imdb_h100"):
        shutil.copytree(ROOT / rel, tmp_path / rel)
    for p in PAGES:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / p, tmp_path / p)
    return tmp_path


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def test_a_changed_table_number_is_caught_and_rewritten(copy):
    page = copy / "docs/vision_results.md"
    _edit(page, "| 96.75 ± 0.90 | 97.86 ± 0.58 |", "| 96.76 ± 0.90 | 97.86 ± 0.58 |")
    problems = check(copy)
    assert len(problems) == 1 and "table:vision.accuracy differs" in problems[0] and "96.76" in problems[0]
    assert write(copy) == ["docs/vision_results.md"]
    assert check(copy) == []
    assert page.read_text(encoding="utf-8") == (ROOT / "docs/vision_results.md").read_text(encoding="utf-8")


def test_a_changed_record_is_caught(copy):
    rec = copy / "results/synthetic/e7_kq_exact/summary.json"
    _edit(rec, '"cosine_final_mean": 0.8761898327305536', '"cosine_final_mean": 0.8861898327305536')
    problems = check(copy)
    joined = "\n".join(problems)
    assert "table:synthetic.kq differs" in joined and "table:readme.e7 differs" in joined
    assert "(cosine 0.89–0.98), not to the Frobenius" in joined  # the prose range moved with it


def test_a_changed_prose_number_is_caught(copy):
    _edit(copy / "docs/vision_results.md", "The gap to Adam lr 1e-3 is 181 (Q)", "The gap to Adam lr 1e-3 is 180 (Q)")
    problems = check(copy)
    assert len(problems) == 1 and "The gap to Adam lr 1e-3 is 181 (Q)" in problems[0]


def test_a_table_outside_a_block_is_caught(copy):
    page = copy / "docs/synthetic_results.md"
    text = page.read_text(encoding="utf-8")
    page.write_text(text + "\n| p | a new number |\n|---|---|\n| 2 | 0.123 |\n", encoding="utf-8")
    problems = check(copy)
    assert problems == ["docs/synthetic_results.md: a results table is neither generated nor listed as unrecorded: "
                        "| p | a new number |"]


def test_a_broken_marker_is_caught(copy):
    page = copy / "docs/synthetic_results.md"
    text = page.read_text(encoding="utf-8")
    page.write_text(re.sub(r"\n\n<!-- /table -->", "\n<!-- /table -->", text, count=1), encoding="utf-8")
    assert any("marker is not closed" in p for p in check(copy))


def test_cli_exit_codes(copy, capsys, monkeypatch):
    assert main(["--root", str(ROOT)]) == 0
    _edit(copy / "README.md", "| 1.75 | 10 | **0.9491 ± 0.0456** |", "| 1.75 | 10 | **0.9492 ± 0.0456** |")
    assert main(["--root", str(copy)]) == 1
    assert "table:readme.e7 differs" in capsys.readouterr().out
    assert main(["--root", str(copy), "--write"]) == 0
    assert main(["--root", str(copy / "docs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    (copy / "results/vision/digits/md/seed-2/summary.json").unlink()
    assert main(["--root", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: missing record results/vision/digits/md/seed-2/summary.json under {copy}\n"
    monkeypatch.chdir(copy / "docs")  # found from a subfolder
    assert main([]) == 2


def test_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "attnopt.docs_tables"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_changed_cpu_sweep_record_is_caught(copy):
    hist = copy / "results/imdb-cpu/records/cpu-lr-p1.1-lr0.0004/seed0-init0/history.csv"
    _edit(hist, ",0.534,", ",0.544,")
    problems = check(copy)
    assert len(problems) == 1 and "table:imdb_cpu.sweep differs" in problems[0] and "54.4" in problems[0]


def test_a_changed_cpu_cell_record_is_caught_in_tables_readme_and_prose(copy):
    """One seed's honest accuracy moves: the cell's tables (page and README) and the prose that
    quotes the cell's mean and the l1.1-vs-l2 test all disagree with the records."""
    summary = copy / "results/imdb-cpu/records/cpu-s3-p2/seed0-init0/summary.json"
    text = summary.read_text(encoding="utf-8")
    import json

    s = json.loads(text)
    summary.write_text(json.dumps(s | {"honest_test_acc": s["honest_test_acc"] + 0.05}), encoding="utf-8")
    problems = "\n".join(check(copy))
    for part in ("table:imdb_cpu.e3 differs", "table:imdb_cpu.verdicts differs", "table:readme.imdb_cpu differs",
                 "`cpu-s3-p2` 58.28 ± 2.99 % (n = 5", "ℓ1.1 more accurate than ℓ2 — inconclusive: −1.18 points"):
        assert part in problems, problems


def test_a_quoted_number_must_end_where_the_record_does(copy):
    """Claims are matched in the prose as text: a claim ending in "p = 0.38" must not be
    satisfied by a page saying "p = 0.385"."""
    page = copy / "docs/imdb_results.md"
    claim = "ℓ1.1 more accurate than ℓ2 — inconclusive: +0.76 points [−1.12, +2.64], Welch p = 0.38"
    assert claim in re.sub(r"\s+", " ", page.read_text(encoding="utf-8"))
    _edit(page, "Welch p = 0.38", "Welch p = 0.385", count=-1)
    problems = "\n".join(check(copy))
    assert f"the text {claim!r} (from the records) is not there" in problems, problems

"""``attnopt imdb …``: the wiring of the commands (experiments stood in where the science is
tested elsewhere), the analyses on a tiny real run, and issue 19 rows 1, 6, 14 and 17."""

import json
import re
import shutil

import pytest
import torch
from typer.testing import CliRunner

from attnopt.cli import app
from attnopt.experiments.imdb import train as train_mod
from imdb_fixtures import HAVE_DATA, needs_data

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

TINY_ARGS = ["--dataset", "sst2", "--subset", "120", "--eval-subset", "40", "--max-len", "32", "--size", "1",
             "--n-embd", "32", "--n-hidden", "64", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "20",
             "--device", "cpu", "--no-progress"]


def _one_error_line(res, *parts):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    for p in parts:
        assert p in lines[0], (p, lines[0])
    return lines[0]


@pytest.fixture
def captured(monkeypatch):
    """Stand-ins for run_train / run_ensemble recording what the command asked for."""
    seen = {}

    def fake_train(cfg, *, out, progress, resume, data_root, cache):
        seen.setdefault("train", []).append((cfg, out, resume))
        return train_mod.TrainResult(getattr(out, "path", out), cfg, {"epochs": 0}, [])

    def fake_ensemble(cfg, *, out, progress, resume, data_root, cache):
        seen["ensemble"] = (cfg, out, resume)
        return train_mod.EnsembleResult(out.path, cfg, [train_mod.TrainResult(out.path / n, m, {"epochs": 0}, [])
                                                        for n, m in zip(cfg.names, cfg.members)], {})

    monkeypatch.setattr(train_mod, "run_train", fake_train)
    monkeypatch.setattr(train_mod, "run_ensemble", fake_ensemble)
    return seen


def test_train_options_become_the_config(captured, tmp_path):
    res = runner.invoke(app, ["imdb", "train", "--protocol", "paper", "--p", "3", "--size", "4", "--seed", "5",
                              "--pad", "none", "--init-seed", "2", "--loss", "bce", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    (cfg, out, resume), = captured["train"]
    assert (cfg.protocol, cfg.p, cfg.size, cfg.seed, cfg.pad, cfg.init_seed, cfg.loss) == (
        "paper", 3.0, 4, 5, "none", 2, "bce")
    assert cfg.resolved_lr() == 6e-6 and resume and out.path == tmp_path / "r"
    stored = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert stored["experiment"] == "imdb-train" and stored["p"] == 3.0 and "max_epochs" not in stored


def test_several_seeds_and_ps_train_as_one_ensemble_by_default(captured, tmp_path):
    res = runner.invoke(app, ["imdb", "train", "--p", "1.1", "--p", "2", "--seed", "0", "--seed", "1",
                              "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    cfg, out, _ = captured["ensemble"]
    assert [(m.p, m.seed) for m in cfg.members] == [(1.1, 0), (1.1, 1), (2.0, 0), (2.0, 1)]
    assert cfg.names == ("p1.1-seed0", "p1.1-seed1", "p2-seed0", "p2-seed1")
    assert json.loads((tmp_path / "e" / "config.json").read_text())["config"]["experiment"] == "imdb-ensemble"


def test_no_ensemble_trains_each_seed_in_its_own_folder(captured, tmp_path):
    res = runner.invoke(app, ["imdb", "train", "--optimizer", "adam", "--seed", "3", "--seed", "4", "--no-ensemble",
                              "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert [(c.seed, o.path.name) for c, o, _ in captured["train"]] == [(3, "seed3"), (4, "seed4")]
    assert "ensemble" not in captured


def test_lr_per_p_and_bad_lists(captured, tmp_path):
    res = runner.invoke(app, ["imdb", "train", "--p", "1.5", "--p", "4", "--lr", "1e-3", "--lr", "2e-3",
                              "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert [m.lr for m in captured["ensemble"][0].members] == [1e-3, 2e-3]
    res = runner.invoke(app, ["imdb", "train", "--p", "1.5", "--p", "4", "--lr", "1e-3", "--lr", "2e-3", "--lr", "1",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 2
    _one_error_line(res, "--lr")
    res = runner.invoke(app, ["imdb", "train", "--p", "1.5", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2
    _one_error_line(res, "pass --lr")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
def test_train_out_that_cannot_be_a_folder(tmp_path, where):
    """Issue 19 row 1: ``imdb train --out <an existing file>`` (or a path under a file, /proc/x)."""
    f = tmp_path / "a-file"
    f.write_text("keep me")
    out = {"file": f, "under-file": f / "run", "proc": "/proc/attnopt-x"}[where]
    res = runner.invoke(app, ["imdb", "train", "--optimizer", "adam", "--out", str(out)])
    assert res.exit_code == 2
    _one_error_line(res, str(out))
    assert f.read_text() == "keep me"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """Two tiny real runs trained through the command line (an ensemble of seeds 0 and 1)."""
    if not HAVE_DATA:
        pytest.skip("shared data folder not available")
    root = tmp_path_factory.mktemp("cli")
    res = runner.invoke(app, ["imdb", "train", *TINY_ARGS, "--max-epochs", "2", "--seed", "0", "--seed", "1",
                              "--cache", str(root / "cache"), "--out", str(root / "runs")])
    assert res.exit_code == 0, res.output
    return root


def test_cli_train_writes_member_runs_and_summary(cli_run):
    for s in (0, 1):
        run = cli_run / "runs" / f"seed{s}"
        summ = json.loads((run / "summary.json").read_text())
        assert summ["epochs"] == 2 and summ["stop_reason"] == "max_epochs" and summ["complete"] is True
        assert summ["members"] == 2 and summ["pad"] == "dynamic"
        assert (run / "checkpoint.pt").is_file() and (run / "report.md").is_file()
        assert json.loads((run / "config.json").read_text())["config"]["seed"] == s


def test_cli_table_counts_each_run_once(cli_run, tmp_path):
    res = runner.invoke(app, ["imdb", "table", str(cli_run / "runs"), "--out", str(tmp_path / "table.md"),
                              "--figure", str(tmp_path / "curves.png"), "--csv", str(tmp_path / "t.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "table.md").read_text()
    assert "| sst2 | Adam | 1 |" in text and re.search(r"\| 2 \| \d+\.\d\d ± \d+\.\d\d \|", text)
    # issue 19 row 14: the same run named twice, or a copy of it, is one seed
    seed0 = cli_run / "runs" / "seed0"
    copy = tmp_path / "copy-of-seed0"
    shutil.copytree(seed0, copy)
    res = runner.invoke(app, ["imdb", "table", str(seed0), str(seed0) + "/", str(copy)])
    assert res.exit_code == 0, res.output
    assert re.search(r"\| Adam \| 1 \| 0\.001 \| subset 120, max_len 32 \| 1 \| \d+\.\d\d \|", res.stdout), res.stdout
    assert "Counted once" in res.stdout and "copy-of-seed0" in res.stdout


def test_cli_sparsity(cli_run):
    out = cli_run / "e4"
    res = runner.invoke(app, ["imdb", "sparsity", str(cli_run / "runs" / "seed0"), str(cli_run / "runs" / "seed1"),
                              "--out", str(out), "--levels", "0,0.5,0.9", "--eval-subset", "20",
                              "--cache", str(cli_run / "cache"), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = (out / "sparsity.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 5 and "above_threshold" in rows[0] and "hoyer" in rows[0]
    assert len((out / "pruning.csv").read_text().splitlines()) == 1 + 2 * 3
    assert (out / "weight_histograms.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_cli_attention_map(cli_run):
    out = cli_run / "e5"
    res = runner.invoke(app, ["imdb", "attention-map", str(cli_run / "runs"), "--out", str(out), "--maps", "2",
                              "--text", "A truly wonderful film.", "--no-progress"])
    assert res.exit_code == 0, res.output
    html = (out / "attention.html").read_text()
    assert "wonderful" in html and "Probe score" in html
    assert (out / "attention_01.png").is_file() and not (out / "attention_02.png").exists()
    assert len((out / "probe_scores.csv").read_text().splitlines()) == 1 + 2 * 60
    assert "A higher" in (out / "report.md").read_text()


class Evil:
    """Unpickling this would create a file (a stand-in for running any code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@needs_data
@pytest.mark.parametrize("command", ["sparsity", "attention-map", "train"])
def test_foreign_checkpoint_with_code_is_refused(cli_run, tmp_path, command):
    """Issue 19 row 17: a run folder from someone else whose checkpoint carries a pickled callable
    is refused with one line, nothing runs and no output folder is left behind."""
    run = tmp_path / "theirs"
    shutil.copytree(cli_run / "runs" / "seed0", run)
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(str(marker)), "epoch": 1}, run / "checkpoint.pt")
    if command == "train":
        cfg = json.loads((run / "config.json").read_text())["config"]
        args = ["imdb", "train", *TINY_ARGS, "--max-epochs", "3", "--seed", str(cfg["seed"]),
                "--cache", str(cli_run / "cache"), "--out", str(run)]
    else:
        args = ["imdb", command, str(run), "--out", str(tmp_path / "analysis"), "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    _one_error_line(res, "refuses to load")
    assert not marker.exists() and not (tmp_path / "analysis").exists()


@needs_data
def test_analyses_read_checkpoints_of_the_earlier_format(cli_run, tmp_path):
    """Format-1 checkpoints (numpy's RNG state inside, as plain arrays) still load for E4/E5."""
    import random

    import numpy as np

    from attnopt.experiments.imdb import load_model

    run = tmp_path / "old"
    shutil.copytree(cli_run / "runs" / "seed0", run)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    ck["format"], ck["rng"] = 1, [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                   "python": random.getstate()}]
    torch.save(ck, run / "checkpoint.pt")
    model, cfg = load_model(run)
    assert torch.equal(model.head.weight, ck["model"]["head.weight"]) and cfg.seed == 0


@needs_data
def test_truncated_checkpoint_names_no_resume(cli_run, tmp_path):
    """Issue 19 row 6: a truncated checkpoint.pt, then resume: one line naming --no-resume."""
    run = tmp_path / "run"
    shutil.copytree(cli_run / "runs" / "seed1", run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    args = ["imdb", "train", *TINY_ARGS, "--max-epochs", "3", "--seed", "1", "--cache", str(cli_run / "cache"),
            "--out", str(run)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    _one_error_line(res, "truncated or corrupted", "--no-resume")
    res = runner.invoke(app, args + ["--no-resume"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_non_finite_loss_exits_3_with_one_line(monkeypatch, tmp_path):
    from attnopt.experiments.imdb import NonFiniteLoss

    def nan_run(cfg, **kw):
        raise NonFiniteLoss(4, 7, float("nan"), str(tmp_path / "checkpoint.pt"))

    monkeypatch.setattr(train_mod, "run_train", nan_run)
    res = runner.invoke(app, ["imdb", "train", "--optimizer", "adam", "--out", str(tmp_path / "r")])
    assert res.exit_code == 3
    _one_error_line(res, "epoch 4, step 7", "checkpoint is kept")


def test_table_of_nothing_is_one_line(tmp_path):
    res = runner.invoke(app, ["imdb", "table", str(tmp_path / "nothing")])
    assert res.exit_code == 2
    _one_error_line(res, "no such run folder")


def test_results_table_groups_seeds_and_shows_paper_numbers(tmp_path):
    from attnopt.experiments.imdb import TrainConfig, format_table, results_table
    from attnopt.report.runs import RunDir

    def fake(name, seed, honest, best, **cfg):
        rd = RunDir(tmp_path / name)
        rd.write_config(TrainConfig(seed=seed, **cfg).identity(), "imdb-train")
        rd.write_summary({"epochs": 70, "honest_test_acc": honest, "paper_best_test_acc": best,
                          "last_test_acc": best - 0.01, "stop_reason": "target_train_acc"})

    fake("a", 0, 0.82, 0.83, optimizer="md", p=1.1, size=3)
    fake("b", 1, 0.84, 0.85, optimizer="md", p=1.1, size=3)
    fake("c", 0, 0.80, 0.81, optimizer="adam", size=3)
    fake("d", 0, 0.70, 0.71, optimizer="md", p=1.1, size=3, subset=400)
    fake("e", 0, None, 0.84, optimizer="md", p=1.1, size=3, protocol="paper")
    rows = results_table([tmp_path])
    assert [(r["optimizer"], r["seeds"], r["variant"]) for r in rows] == [
        ("MD p=1.1", 2, ""), ("MD p=1.1", 1, "paper protocol"), ("MD p=1.1", 1, "subset 400"), ("Adam", 1, "")]
    assert rows[0]["honest_mean"] == pytest.approx(83.0) and rows[0]["honest_std"] == pytest.approx(1.41421356, 1e-6)
    assert rows[0]["paper_ref"] == (83.47, 0.09, 82.57, 72) and rows[1]["paper_ref"] == rows[0]["paper_ref"]
    assert rows[2]["paper_ref"] is None
    text = format_table(rows)
    assert "| imdb | MD p=1.1 | 3 | 0.0008 | – | 2 | 83.00 ± 1.41 | 84.00 ± 1.41 |" in text
    assert "| paper protocol | 1 | n/a | 84.00 |" in text and "83.47 ± 0.09 [82.57], 72" in text

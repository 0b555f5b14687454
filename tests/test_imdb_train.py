"""Training on a small, easy sentiment subset: learning, exact resume, NaN stop, DDP, CLI."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnopt.data import reviews
from attnopt.data.shared import data_root
from attnopt.experiments import imdb
from attnopt.experiments.imdb import NonFiniteLoss, TrainConfig, train

HAVE_DATA = (data_root() / reviews.DATASET_FILES["sst2"]).is_file() and (
    data_root() / reviews.TOKENIZER_FILE).is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="shared data folder not available")

POS = {"great", "best", "wonderful", "beautiful", "excellent", "good", "fun", "funny", "enjoyable", "love",
       "charming", "brilliant", "moving", "delightful", "fine"}
NEG = {"bad", "worst", "dull", "boring", "awful", "stupid", "mess", "tedious", "poor", "flat", "lame", "waste",
       "terrible", "unfunny", "pointless"}

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and the CI machine is shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(dataset="sst2", max_len=32, size=1, n_embd=32, n_hidden=64, batch_size=20, device="cpu")


@pytest.fixture(scope="module")
def easy_data():
    """Short SST-2 train sentences whose polarity is carried by one strong sentiment word."""
    if not HAVE_DATA:
        pytest.skip("shared data folder not available")
    tab = reviews.read_table("sst2", columns=["text", "label", "split"])
    pos, neg = [], []
    for text, label, split in zip(*(tab.column(c).to_pylist() for c in ("text", "label", "split"))):
        words = set(re.findall(r"[a-z']+", text.lower()))
        if split != "train" or not 3 <= len(words) <= 12:
            continue
        if label == 1 and words & POS and not words & NEG:
            pos.append(text)
        elif label == 0 and words & NEG and not words & POS:
            neg.append(text)
    rng = np.random.default_rng(0)
    rng.shuffle(pos)
    rng.shuffle(neg)

    def part(a, b):
        return pos[a:b] + neg[a:b], [1] * (b - a) + [0] * (b - a)

    return reviews.review_data_from_texts(part(0, 150), part(150, 200), part(200, 300), max_len=32,
                                          dataset="sst2")


def _model_state(path):
    return torch.load(path / imdb.CHECKPOINT, map_location="cpu", weights_only=False)


OPTIMIZERS = [
    ("md", 1.1, 1e-2), ("md", 2.0, 1e-2), ("md", 3.0, 1e-3), ("adam", 2.0, 1e-3), ("adamw", 2.0, 1e-3),
    ("sgd", 2.0, 1e-3),
]


@needs_data
@pytest.mark.parametrize("opt,p,lr", OPTIMIZERS, ids=[f"{o}-{p:g}" for o, p, _ in OPTIMIZERS])
def test_every_optimizer_learns(easy_data, tmp_path, opt, p, lr):
    cfg = TrainConfig(**TINY, optimizer=opt, p=p, lr=lr, dropout=0.0, max_epochs=10, seed=0)
    s = train(cfg, tmp_path / "run", data=easy_data, log=None)
    # 200 held-out sentences: chance is 0.5 (sd 0.035); require a clear margin
    assert s["honest_test_acc"] >= 0.65, s
    assert s["paper_best_test_acc"] >= s["honest_test_acc"]
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + s["epochs"] and hist[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc")


@needs_data
def test_resume_is_bit_exact(easy_data, tmp_path):
    base = dict(TINY, optimizer="md", p=1.1, lr=1e-3, dropout=0.2, seed=3)
    full = train(TrainConfig(**base, max_epochs=3), tmp_path / "full", data=easy_data, log=None)
    train(TrainConfig(**base, max_epochs=1), tmp_path / "split", data=easy_data, log=None)
    assert _model_state(tmp_path / "split")["epoch"] == 1
    resumed = train(TrainConfig(**base, max_epochs=3), tmp_path / "split", data=easy_data, log=None)
    a, b = _model_state(tmp_path / "full"), _model_state(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    drop = {"train_time_s", "epoch_time_s", "train_reviews_per_s"}
    strip = lambda h: [{k: v for k, v in row.items() if k not in drop} for row in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert full["honest_test_acc"] == resumed["honest_test_acc"]
    # finished runs are not re-trained; a changed setting is refused
    again = train(TrainConfig(**base, max_epochs=3), tmp_path / "split", data=easy_data, log=None)
    assert again["epochs"] == 3
    with pytest.raises(ValueError, match="configuration differs.*lr"):
        train(TrainConfig(**(base | {"lr": 2e-3}), max_epochs=4), tmp_path / "split", data=easy_data, log=None)


@needs_data
def test_stop_file_finishes_cleanly_and_resume_continues(easy_data, tmp_path):
    base = dict(TINY, optimizer="adam", lr=1e-3, seed=1)
    out = tmp_path / "run"

    def hook(epoch, step, loss):  # a user touching OUT/STOP during epoch 2
        if (epoch, step) == (2, 1):
            (out / imdb.STOP_FILE).touch()
        return loss

    s = train(TrainConfig(**base, max_epochs=5), out, data=easy_data, log=None, _loss_hook=hook)
    assert s["epochs"] == 2 and s["stop_reason"] == "stop_file" and not s["running"]
    assert _model_state(out)["epoch"] == 2
    assert (out / "report.md").is_file() and json.loads((out / "summary.json").read_text())["stop_reason"] == "stop_file"
    # resuming removes the stale STOP file and trains on to the epoch limit
    s = train(TrainConfig(**base, max_epochs=4), out, data=easy_data, log=None)
    assert s["epochs"] == 4 and s["stop_reason"] == "max_epochs" and not (out / imdb.STOP_FILE).exists()


@needs_data
@pytest.mark.parametrize("opt", ["sgd", "md"])
def test_nan_loss_stops_cleanly_and_keeps_checkpoint(easy_data, tmp_path, opt):

    def hook(epoch, step, loss):
        return loss * float("nan") if (epoch, step) == (2, 3) else loss

    cfg = TrainConfig(**TINY, optimizer=opt, lr=1e-3, max_epochs=4, nan_check_every=2)
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 3") as info:
        train(cfg, tmp_path / "run", data=easy_data, log=None, _loss_hook=hook)
    assert "checkpoint is kept" in str(info.value) and "non-finite training loss" in str(info.value)
    ck = _model_state(tmp_path / "run")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    summ = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summ["stop_reason"] == "non_finite_loss" and "epoch 2, step 3" in summ["error"]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ValueError, match="p > 1"):
        TrainConfig(optimizer="md", p=1.0)
    with pytest.raises(ValueError, match="pass --lr"):
        TrainConfig(optimizer="md", p=1.5).resolved_lr()
    assert TrainConfig(optimizer="md", p=3, size=4).resolved_lr() == 6e-6
    assert TrainConfig(optimizer="sgd-momentum").optimizer == "sgd"
    assert TrainConfig(optimizer="adamw").resolved_weight_decay() == 0.01


@needs_data
def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) trains the same model as one process (dropout off)."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not found")
    args = ["train", "--dataset", "sst2", "--subset", "80", "--eval-subset", "20", "--max-len", "24", "--size", "1",
            "--n-embd", "16", "--n-hidden", "32", "--dropout", "0", "--optimizer", "sgd", "--lr", "1e-3",
            "--batch-size", "20", "--max-epochs", "2", "--device", "cpu", "--no-progress",
            "--cache", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "attnopt.cli.imdb"]
    res = subprocess.run(cmd + args + ["--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res1 = CliRunner().invoke(_app(), args + ["--out", str(tmp_path / "one")])
    assert res1.exit_code == 0, res1.output
    a, b = _model_state(tmp_path / "ddp"), _model_state(tmp_path / "one")
    assert len(a["rng"]) == 2 and len(b["rng"]) == 1
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for ra, rb in zip(a["history"], b["history"]):
        assert ra["train_acc"] == rb["train_acc"] and ra["test_acc"] == rb["test_acc"]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)


def _app():
    from attnopt.cli.imdb import app

    return app


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One tiny run trained through the CLI (real SST-2 subset), shared by the analysis tests."""
    if not HAVE_DATA:
        pytest.skip("shared data folder not available")
    root = tmp_path_factory.mktemp("cli")
    res = CliRunner().invoke(_app(), [
        "train", "--dataset", "sst2", "--subset", "120", "--eval-subset", "40", "--max-len", "32", "--size", "1",
        "--n-embd", "32", "--n-hidden", "64", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "20",
        "--max-epochs", "2", "--seed", "0", "--seed", "1", "--device", "cpu", "--no-progress",
        "--cache", str(root / "cache"), "--out", str(root / "runs")])
    assert res.exit_code == 0, res.output
    return root


def test_cli_train_writes_runs_and_summary(cli_run):
    for s in (0, 1):
        run = cli_run / "runs" / f"seed{s}"
        summ = json.loads((run / "summary.json").read_text())
        assert summ["epochs"] == 2 and summ["stop_reason"] == "max_epochs" and not summ["running"]
        assert (run / "checkpoint.pt").is_file() and (run / "report.md").is_file()
        assert json.loads((run / "config.json").read_text())["config"]["seed"] == s


def test_cli_table(cli_run):
    res = CliRunner().invoke(_app(), ["table", str(cli_run / "runs"), "--out", str(cli_run / "table.md"),
                                      "--figure", str(cli_run / "curves.png")])
    assert res.exit_code == 0, res.output
    assert (cli_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    text = (cli_run / "table.md").read_text()
    assert "| sst2 | Adam | 1 |" in text and "honest" in text and "paper" in text
    assert re.search(r"\| 2 \| \d+\.\d\d ± \d+\.\d\d \|", text)


def test_cli_sparsity(cli_run):
    out = cli_run / "e4"
    res = CliRunner().invoke(_app(), ["sparsity", str(cli_run / "runs" / "seed0"), str(cli_run / "runs" / "seed1"),
                                      "--out", str(out), "--levels", "0,0.5,0.9", "--eval-subset", "20",
                                      "--cache", str(cli_run / "cache")])
    assert res.exit_code == 0, res.output
    rows = (out / "sparsity.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 5 and "above_threshold" in rows[0] and "hoyer" in rows[0]
    prune = (out / "pruning.csv").read_text().splitlines()
    assert len(prune) == 1 + 2 * 3
    assert (out / "weight_histograms.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_attention_map(cli_run):
    out = cli_run / "e5"
    res = CliRunner().invoke(_app(), ["attention-map", str(cli_run / "runs"), "--out", str(out), "--maps", "2",
                                      "--text", "A truly wonderful film."])
    assert res.exit_code == 0, res.output
    html = (out / "attention.html").read_text()
    assert "wonderful" in html and "Probe score" in html
    assert (out / "attention_01.png").is_file() and not (out / "attention_02.png").exists()
    scores = (out / "probe_scores.csv").read_text().splitlines()
    assert len(scores) == 1 + 2 * 60
    assert "A higher" in (out / "report.md").read_text()


def test_cli_bad_input(tmp_path):
    runner = CliRunner()
    res = runner.invoke(_app(), ["train", "--no-such-option"])
    assert res.exit_code == 2 and "No such option" in res.output
    res = runner.invoke(_app(), ["train", "--optimizer", "lion"])
    assert res.exit_code == 2 and "unknown optimizer" in res.output
    res = runner.invoke(_app(), ["train", "--dataset", "sst2", "--optimizer", "adam", "--data", str(tmp_path),
                                 "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code == 2 and "data file not found" in res.output
    assert not (tmp_path / "r").exists()
    res = runner.invoke(_app(), ["table", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no such run folder" in res.output


def test_run_histories_reads_every_run(cli_run):
    from attnopt.experiments.imdb import run_histories

    hists = run_histories([cli_run / "runs"])
    assert len(hists) == 2 and all("seed" in label for label in hists)
    for h in hists.values():
        assert list(h["epoch"]) == list(range(1, len(h["epoch"]) + 1))
        assert ((h["test_acc"] >= 0) & (h["test_acc"] <= 1)).all()


def test_results_table_groups_seeds_and_shows_paper_numbers(tmp_path):
    from attnopt.experiments.imdb import format_table, results_table
    from attnopt.report.runs import RunDir

    def fake(name, seed, honest, best, **cfg):
        rd = RunDir(tmp_path / name)
        rd.write_config(TrainConfig(seed=seed, **cfg).to_dict() | {"resolved_lr": 1.0})
        rd.write_json("summary.json", {"epochs": 70, "honest_test_acc": honest, "paper_best_test_acc": best,
                                       "last_test_acc": honest - 0.01, "stop_reason": "target_train_acc",
                                       "running": False})

    fake("a", 0, 0.82, 0.83, optimizer="md", p=1.1, size=3)
    fake("b", 1, 0.84, 0.85, optimizer="md", p=1.1, size=3)
    fake("c", 0, 0.80, 0.81, optimizer="adam", size=3)
    fake("d", 0, 0.70, 0.71, optimizer="md", p=1.1, size=3, subset=400)
    rows = results_table([tmp_path])
    assert [(r["optimizer"], r["seeds"], r["variant"]) for r in rows] == [
        ("MD p=1.1", 2, ""), ("MD p=1.1", 1, "subset 400"), ("Adam", 1, "")]
    assert rows[0]["honest_mean"] == pytest.approx(83.0) and rows[0]["honest_std"] == pytest.approx(1.41421356, 1e-6)
    assert rows[0]["paper_ref"] == (83.47, 0.09, 82.57, 72) and rows[1]["paper_ref"] is None
    text = format_table(rows)
    assert "| imdb | MD p=1.1 | 3 | 0.0008 | – | 2 | 83.00 ± 1.41 | 84.00 ± 1.41 |" in text
    assert "83.47 ± 0.09 [82.57], 72" in text

"""Training on a small, easy sentiment subset: learning, the experiment contract, exact resume,
STOP files, NaN stops, checkpoints loaded as plain data, DDP."""

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from attnopt.errors import CheckpointError, RunFolderError, UserError
from attnopt.experiments import imdb
from attnopt.experiments.imdb import NonFiniteLoss, TrainConfig, run_train
from imdb_fixtures import TINY, easy_data, model_state, needs_data  # noqa: F401  (easy_data: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIMIZERS = [
    ("md", 1.1, 1e-2), ("md", 2.0, 1e-2), ("md", 3.0, 1e-3), ("adam", 2.0, 1e-3), ("adamw", 2.0, 1e-3),
    ("sgd", 2.0, 1e-3),
]


@needs_data
@pytest.mark.parametrize("opt,p,lr", OPTIMIZERS, ids=[f"{o}-{p:g}" for o, p, _ in OPTIMIZERS])
def test_every_optimizer_learns(easy_data, tmp_path, opt, p, lr):
    cfg = TrainConfig(**TINY, optimizer=opt, p=p, lr=lr, dropout=0.0, max_epochs=10, seed=0)
    res = run_train(cfg, out=tmp_path / "run", data=easy_data)
    s = res.summary
    # 200 held-out sentences: chance is 0.5 (sd 0.035); require a clear margin
    assert s["honest_test_acc"] >= 0.65, s
    assert s["paper_best_test_acc"] >= s["honest_test_acc"]
    assert res.out == tmp_path / "run" and len(res.history) == s["epochs"]
    hist = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + s["epochs"] and hist[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["complete"] is True


@needs_data
def test_the_experiment_contract(easy_data, tmp_path, capsys):
    """out=None writes nothing; progress reports increments; nothing printed; globals restored."""
    calls = []
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    random.seed(5)
    py_state = random.getstate()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = run_train(dict(TINY, optimizer="adam", lr=1e-3, max_epochs=2), data=easy_data,
                        progress=lambda label, adv, total: calls.append((label, adv, total)))
    finally:
        os.chdir(cwd)
    assert res.out is None and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""
    assert [c for c in calls if c[0] == "epochs"] == [("epochs", 1, 2)] * 2
    steps = [c for c in calls if c[0] == "steps"]
    assert len(steps) == 2 * 15 and all(a == 1 and t == 15 for _, a, t in steps)  # 300 reviews / 20
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)
    assert random.getstate() == py_state
    assert res.summary["epochs"] == 2 and res.history[-1]["epoch"] == 2


@needs_data
def test_resume_is_bit_exact(easy_data, tmp_path):
    base = dict(TINY, optimizer="md", p=1.1, lr=1e-3, dropout=0.2, seed=3)
    full = run_train(TrainConfig(**base, max_epochs=3), out=tmp_path / "full", data=easy_data)
    run_train(TrainConfig(**base, max_epochs=1), out=tmp_path / "split", data=easy_data)
    assert model_state(tmp_path / "split")["epoch"] == 1
    resumed = run_train(TrainConfig(**base, max_epochs=3), out=tmp_path / "split", data=easy_data)
    assert any("resuming" in n for n in resumed.notes)
    a, b = model_state(tmp_path / "full"), model_state(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    drop = {"train_time_s", "epoch_time_s", "train_reviews_per_s"}
    strip = lambda h: [{k: v for k, v in row.items() if k not in drop} for row in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert full.summary["honest_test_acc"] == resumed.summary["honest_test_acc"]
    # finished runs are not re-trained; a changed setting is refused, naming it
    again = run_train(TrainConfig(**base, max_epochs=3), out=tmp_path / "split", data=easy_data)
    assert again.summary["epochs"] == 3 and any("already finished" in n for n in again.notes)
    with pytest.raises(RunFolderError, match=r"another configuration \(lr: 0.001 -> 0.002\).*--overwrite"):
        run_train(TrainConfig(**(base | {"lr": 2e-3}), max_epochs=4), out=tmp_path / "split", data=easy_data)
    # --no-resume starts the same configuration over
    fresh = run_train(TrainConfig(**base, max_epochs=1), out=tmp_path / "split", data=easy_data, resume=False)
    assert fresh.summary["epochs"] == 1 and model_state(tmp_path / "split")["epoch"] == 1


@needs_data
def test_stop_file_finishes_cleanly_and_resume_continues(easy_data, tmp_path):
    base = dict(TINY, optimizer="adam", lr=1e-3, seed=1)
    out = tmp_path / "run"

    def hook(epoch, step, loss):  # a user touching OUT/STOP during epoch 2
        if (epoch, step) == (2, 1):
            (out / imdb.STOP_FILE).touch()
        return loss

    s = run_train(TrainConfig(**base, max_epochs=5), out=out, data=easy_data, _loss_hook=hook).summary
    assert s["epochs"] == 2 and s["stop_reason"] == "stop_file" and not s["running"]
    assert model_state(out)["epoch"] == 2
    assert (out / "report.md").is_file() and json.loads((out / "summary.json").read_text())["stop_reason"] == "stop_file"
    # resuming removes the stale STOP file and trains on to the epoch limit
    res = run_train(TrainConfig(**base, max_epochs=4), out=out, data=easy_data)
    assert res.summary["epochs"] == 4 and res.summary["stop_reason"] == "max_epochs"
    assert not (out / imdb.STOP_FILE).exists() and any("removed" in n for n in res.notes)


@needs_data
@pytest.mark.parametrize("opt", ["sgd", "md"])
def test_nan_loss_stops_cleanly_and_keeps_checkpoint(easy_data, tmp_path, opt):

    def hook(epoch, step, loss):
        return loss * float("nan") if (epoch, step) == (2, 3) else loss

    cfg = TrainConfig(**TINY, optimizer=opt, lr=1e-3, max_epochs=4, nan_check_every=2)
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 3") as info:
        run_train(cfg, out=tmp_path / "run", data=easy_data, _loss_hook=hook)
    assert "checkpoint is kept" in str(info.value) and "non-finite training loss" in str(info.value)
    assert isinstance(info.value, UserError) and info.value.exit_code == 3
    ck = model_state(tmp_path / "run")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    summ = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summ["stop_reason"] == "non_finite_loss" and "epoch 2, step 3" in summ["error"]
    assert summ["complete"] is False


@needs_data
def test_checkpoints_hold_plain_data_and_refuse_code(easy_data, tmp_path):
    """Issue 19 rows 6 and 17: checkpoints load with weights_only=True; a truncated one or one
    carrying a pickled callable stops with one line, before anything runs."""
    out = tmp_path / "run"
    base = dict(TINY, optimizer="md", p=1.1, lr=1e-3)
    run_train(TrainConfig(**base, max_epochs=1), out=out, data=easy_data)
    torch.load(out / imdb.CHECKPOINT, weights_only=True)  # plain data only
    good = (out / imdb.CHECKPOINT).read_bytes()
    (out / imdb.CHECKPOINT).write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted.*--no-resume") as info:
        run_train(TrainConfig(**base, max_epochs=2), out=out, data=easy_data)
    assert "\n" not in str(info.value)
    marker = tmp_path / "pwned"
    torch.save({"model": Evil(str(marker))}, out / imdb.CHECKPOINT)
    with pytest.raises(CheckpointError, match="refuses to load"):
        run_train(TrainConfig(**base, max_epochs=2), out=out, data=easy_data)
    assert not marker.exists() and len((out / "history.csv").read_text().splitlines()) == 2  # nothing ran


class Evil:
    """Unpickling this would create a file (a stand-in for running any code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_config_validation():
    from attnopt.config import ConfigError

    with pytest.raises(ConfigError, match="unknown optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="p > 1"):
        TrainConfig(optimizer="md", p=1.0)
    with pytest.raises(imdb.NoDefaultLearningRate, match="pass --lr"):
        TrainConfig(optimizer="md", p=1.5).resolved_lr()
    with pytest.raises(ConfigError, match="pad.*sdpa"):
        TrainConfig(pad="none", attn_impl="explicit")
    with pytest.raises(ConfigError, match="TrainConfig: dataset"):
        TrainConfig(dataset="mnist")
    assert TrainConfig(optimizer="md", p=3, size=4).resolved_lr() == 6e-6
    assert TrainConfig(optimizer="sgd-momentum").optimizer == "sgd"
    assert TrainConfig(optimizer="adamw").resolved_weight_decay() == 0.01
    assert TrainConfig.from_dict(TrainConfig(p=2.0, seed=4).to_dict()) == TrainConfig(p=2.0, seed=4)


def test_make_optimizer_uses_only_the_public_optimizer_api():
    from attnopt.optim import MirrorDescent

    params = [torch.nn.Parameter(torch.randn(3))]
    opt = imdb.make_optimizer(TrainConfig(optimizer="md", p=3.0, size=3), params)
    assert isinstance(opt, MirrorDescent) and opt.param_groups[0]["p"] == 3.0 and opt.param_groups[0]["lr"] == 4e-6
    assert isinstance(imdb.make_optimizer(TrainConfig(optimizer="adamw"), params), torch.optim.AdamW)


def _run_logged(cmd, env, timeout=900):
    """Run ``cmd``; on failure or timeout the assertion shows the tail of its output."""
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-3000:], (exc.stderr or b"")[-3000:]
        pytest.fail(f"{' '.join(cmd[:4])} … did not finish in {timeout} s:\n{out}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@needs_data
def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) trains the same model as one process (dropout off).

    Both runs are separate processes with one thread each, so that nothing a test before this
    one left in the pytest process (threads, flags) reaches the reference, and the limit is
    generous: under a loaded 2-core machine the torchrun part took 4-5 times its quiet 11 s."""
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not found")
    args = ["train", "--dataset", "sst2", "--subset", "80", "--eval-subset", "20", "--max-len", "24", "--size", "1",
            "--n-embd", "16", "--n-hidden", "32", "--dropout", "0", "--optimizer", "sgd", "--lr", "1e-3",
            "--batch-size", "20", "--max-epochs", "2", "--device", "cpu", "--no-progress",
            "--cache", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    module = ["-m", "attnopt", "imdb"]  # what the README shows: torchrun … -m attnopt imdb train …
    _run_logged([sys.executable] + module + args + ["--out", str(tmp_path / "one")], env)  # also fills the cache
    _run_logged([torchrun, "--standalone", "--nproc-per-node", "2"] + module + args + ["--out", str(tmp_path / "ddp")],
                env)
    a, b = model_state(tmp_path / "ddp"), model_state(tmp_path / "one")
    assert len(a["rng"]) == 2 and len(b["rng"]) == 1
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    for ra, rb in zip(a["history"], b["history"]):
        assert ra["train_acc"] == rb["train_acc"] and ra["test_acc"] == rb["test_acc"]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2


def test_summaries_have_no_honest_number_when_validation_is_trained_on():
    from attnopt.experiments.imdb import summarize_history

    hist = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_acc": v, "test_acc": t, "epoch_time_s": 1.0}
            for e, (v, t) in enumerate([(0.6, 0.7), (0.9, 0.65), (0.8, 0.75)], 1)]
    honest = summarize_history(hist)
    assert honest["honest_test_acc"] == 0.65 and honest["best_val_epoch"] == 2
    assert honest["paper_best_test_acc"] == 0.75 and honest["paper_best_test_epoch"] == 3
    paper = summarize_history(hist, held_out_val=False)
    assert paper["honest_test_acc"] is None and paper["paper_best_test_acc"] == 0.75
    assert np.isclose(paper["mean_epoch_time_s"], 1.0)

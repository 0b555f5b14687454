"""Seed ensembles trained in one process reproduce the single runs; the paper protocol preset."""

import json

import pytest
import torch

from attnopt.config import ConfigError
from attnopt.experiments.imdb import EnsembleConfig, TrainConfig, run_ensemble, run_train
from attnopt.experiments.imdb.engine import member_losses
from imdb_fixtures import TINY, easy_data, model_state, needs_data  # noqa: F401  (easy_data: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _close(member, single):
    for a, b in zip(member.history, single.history):
        for key in ("train_acc", "val_acc", "test_acc"):
            assert a[key] == b[key], (key, a["epoch"])
        for key in ("train_loss", "val_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a["epoch"])
    assert len(member.history) == len(single.history)


@needs_data
@pytest.mark.parametrize("pad", ["none", "dynamic"])
def test_member_k_reproduces_the_single_run_with_its_seed(easy_data, tmp_path, pad):
    """Issue 17: each member has its own init, data order and stop rule; per-epoch accuracies
    equal the single run's, losses within 1e-4 relative (dropout 0: the members share one
    dropout stream, so with dropout they match the single runs only in distribution)."""
    base = dict(TINY, optimizer="md", p=1.1, lr=1e-2, dropout=0.0, pad=pad, max_epochs=3, target_train_acc=0.9)
    members = [TrainConfig(**base, seed=s) for s in (0, 1, 2)]
    ens = run_ensemble(EnsembleConfig(members=members), out=tmp_path / "ens", data=easy_data)
    assert [m.out.name for m in ens.members] == ["seed0", "seed1", "seed2"]
    for cfg, member in zip(members, ens.members):
        single = run_train(cfg, data=easy_data)
        _close(member, single)
        assert member.summary["stop_reason"] == single.summary["stop_reason"]
        assert json.loads((member.out / "summary.json").read_text())["complete"] is True
        assert (member.out / "checkpoint.pt").is_file() and (member.out / "report.md").is_file()
    assert json.loads((tmp_path / "ens" / "summary.json").read_text())["complete"] is True
    epochs = [m.summary["epochs"] for m in ens.members]
    assert len(set(epochs)) > 1 or all(m.summary["stop_reason"] == "max_epochs" for m in ens.members), epochs


@needs_data
def test_members_may_differ_in_p_and_lr_and_resume_together(easy_data, tmp_path):
    base = dict(TINY, optimizer="md", dropout=0.1, max_epochs=2)
    members = [TrainConfig(**base, p=1.1, lr=1e-2, seed=0), TrainConfig(**base, p=3.0, lr=1e-3, seed=0)]
    cfg = EnsembleConfig(members=members)
    assert cfg.names == ("p1.1-lr0.01-seed0", "p3-lr0.001-seed0")
    full = run_ensemble(cfg, out=tmp_path / "full", data=easy_data)
    short = EnsembleConfig(members=[m.replace(max_epochs=1) for m in members])
    run_ensemble(short, out=tmp_path / "split", data=easy_data)
    resumed = run_ensemble(cfg, out=tmp_path / "split", data=easy_data)
    for a, b, name in zip(full.members, resumed.members, cfg.names):
        sa, sb = model_state(tmp_path / "full" / name), model_state(tmp_path / "split" / name)
        assert sa["epoch"] == sb["epoch"] == 2
        for k in sa["model"]:
            assert torch.equal(sa["model"][k], sb["model"][k]), (name, k)
        assert a.summary["paper_best_test_acc"] == b.summary["paper_best_test_acc"]
    opt = model_state(tmp_path / "full" / cfg.names[1])["optimizer"]
    assert opt["param_groups"][0]["p"] == 3.0 and opt["param_groups"][0]["lr"] == 1e-3


@needs_data
def test_a_member_with_a_nan_loss_stops_alone(easy_data, tmp_path):
    def hook(epoch, step, losses):
        return losses * torch.tensor([1.0, float("nan")]) if (epoch, step) == (2, 2) else losses

    base = dict(TINY, optimizer="adam", lr=1e-3, max_epochs=3, nan_check_every=3)
    cfg = EnsembleConfig(members=[TrainConfig(**base, seed=0), TrainConfig(**base, seed=1)])
    res = run_ensemble(cfg, out=tmp_path / "ens", data=easy_data, _loss_hook=hook)
    ok, bad = res.members
    assert ok.error is None and ok.summary["epochs"] == 3
    assert bad.error is not None and "seed1: non-finite training loss" in str(bad.error) and "step 2" in str(bad.error)
    assert bad.summary["stop_reason"] == "non_finite_loss" and model_state(bad.out)["epoch"] == 1
    assert json.loads((tmp_path / "ens" / "summary.json").read_text())["failed"] == ["seed1"]


@needs_data
def test_a_stop_file_in_the_ensemble_folder_stops_every_member(easy_data, tmp_path):
    out = tmp_path / "ens"

    def hook(epoch, step, losses):
        if (epoch, step) == (1, 2):
            (out / "STOP").touch()
        return losses

    base = dict(TINY, optimizer="adam", lr=1e-3, max_epochs=4)
    cfg = EnsembleConfig(members=[TrainConfig(**base, seed=0), TrainConfig(**base, seed=1)])
    res = run_ensemble(cfg, out=out, data=easy_data, _loss_hook=hook)
    assert [(m.summary["epochs"], m.summary["stop_reason"]) for m in res.members] == [(1, "stop_file")] * 2
    again = run_ensemble(cfg, out=out, data=easy_data)  # resumes both, the stale STOP removed
    assert [m.summary["epochs"] for m in again.members] == [4, 4] and not (out / "STOP").exists()


def test_ensemble_members_must_share_data_and_model():
    with pytest.raises(ConfigError, match=r"members\[1\] differs from members\[0\] in size"):
        EnsembleConfig(members=[TrainConfig(seed=0), TrainConfig(seed=1, size=4)])
    with pytest.raises(ConfigError, match=r"members\[1\] repeats members\[0\]"):
        EnsembleConfig(members=[TrainConfig(seed=0), TrainConfig(seed=0)])
    cfg = EnsembleConfig(members=[TrainConfig(seed=0), TrainConfig(seed=1)])
    assert EnsembleConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_protocol_preset():
    paper = TrainConfig(protocol="paper", seed=3)
    assert paper.resolved_val_in_train() and paper.resolved_loss() == "authors"
    assert paper.resolved_init_seed() == 0 and paper.replace(seed=7).resolved_init_seed() == 0
    assert paper.resolved_precision("cuda") == "fp32" and paper.resolved_pad("cuda") == "none"
    honest = TrainConfig(seed=3)
    assert not honest.resolved_val_in_train() and honest.resolved_loss() == "bce"
    assert honest.resolved_init_seed() == 3 and honest.resolved_precision("cuda") == "bf16"
    assert honest.resolved_pad("cpu") == "dynamic"
    with pytest.raises(ConfigError, match="val_in_train"):
        TrainConfig(protocol="paper", val_in_train=False)
    with pytest.raises(ConfigError, match="protocol"):
        TrainConfig(protocol="fast")


@needs_data
def test_paper_protocol_trials_share_their_initial_weights(easy_data):
    a = run_train(dict(TINY, protocol="paper", optimizer="adam", lr=1e-3, max_epochs=1, seed=1), data=easy_data)
    b = run_train(dict(TINY, protocol="paper", optimizer="adam", lr=1e-3, max_epochs=1, seed=2), data=easy_data)
    c = run_train(dict(TINY, protocol="paper", optimizer="adam", lr=1e-3, max_epochs=1, seed=2, init_seed=5),
                  data=easy_data)
    assert a.summary["honest_test_acc"] is None and a.summary["init_seed"] == b.summary["init_seed"] == 0
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]  # other data order and dropout
    assert c.summary["init_seed"] == 5 and c.history[0]["train_loss"] != b.history[0]["train_loss"]


def test_authors_loss_vanishes_for_confidently_wrong_reviews():
    logits = torch.tensor([[30.0, -1.0, 2.0]], requires_grad=True)
    y = torch.tensor([[0.0, 0.0, 1.0]])
    authors = member_losses(logits, y, "authors", "sum")
    authors.sum().backward()
    g_authors = logits.grad.clone()
    logits.grad = None
    member_losses(logits, y, "bce", "sum").sum().backward()
    assert g_authors[0, 0] == 0.0 and logits.grad[0, 0] == pytest.approx(1.0)  # sigmoid(30) rounds to 1 in fp32
    assert authors.item() == pytest.approx(100 + 0.31326 + 0.12693, rel=1e-4)  # log clamped at -100
    torch.testing.assert_close(g_authors[0, 1:], logits.grad[0, 1:])


DROPOUT_DEFECT = pytest.mark.xfail(strict=True, reason=(
    "known defect: the members of an ensemble share one dropout stream, so with dropout a trial's result depends "
    "on the other members (measured: max |dw| 0.054 after 2 epochs of the tiny model); campaigns group trials by "
    "claim timing, so concurrent workers are not reproducible per trial with dropout > 0"))


GRADIENT_DEFECT = pytest.mark.xfail(strict=True, reason=(
    "known defect: a member's gradient depends on its partner by a few ulp (measured: member 0's gradients at "
    "step 30 of this run differ by up to 6e-8 between partners 1 and 2 while every weight before that step is "
    "identical). Cause: a packed batch pads every member's row to N, the longest member's token count, and the "
    "weight gradients are GEMM reductions over those N rows; padded rows add exact zeros, but the GEMM's blocking, "
    "and so its rounding, depends on N (measured: dW = dY^T X over 173 rows against 213 rows with 40 zero-gradient "
    "rows differ by 1.9e-5, by 0 with 7 or 200). Before the masked writes of issue 25 no rounded weight happened to "
    "change here; now one qkv entry does (1 ulp)"))


@needs_data
@pytest.mark.parametrize("dropout", [pytest.param(0.0, marks=GRADIENT_DEFECT), pytest.param(0.1, marks=DROPOUT_DEFECT)])
def test_a_member_is_the_same_with_any_partner(easy_data, tmp_path, dropout):
    base = dict(TINY, optimizer="md", p=1.1, lr=1e-2, dropout=dropout, max_epochs=2)
    states = []
    for partner in (1, 2):
        members = [TrainConfig(**base, seed=0), TrainConfig(**base, seed=partner)]
        ens = run_ensemble(EnsembleConfig(members=members), out=tmp_path / f"with{partner}", data=easy_data)
        states.append(model_state(ens.members[0].out)["model"])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k

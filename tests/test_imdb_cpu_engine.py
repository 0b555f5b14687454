"""The CPU training engine of issue 24: the counter-based dropout (kernel against its torch
reference, bit for bit; its distribution; its gradient) and the final test pass of the
validation-selected weights (kept across a resume); the hybrid batch layout (the same training
as padding without dropout, resumable with counter dropout)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnopt.experiments.imdb import TrainConfig, run_train
from attnopt.models import dropout as D
from attnopt.models.encoder import EncoderClassifier, EncoderConfig, Padded, ensemble_logits
from imdb_fixtures import TINY, easy_data, model_state, needs_data  # noqa: F401 (fixture)


@pytest.mark.parametrize("n", [1, 2, 7, 4096, 4097, 70001])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.01])
def test_counter_kernel_equals_its_torch_reference_bitwise(n, p):
    x = torch.randn(n)
    seed = 0x123456789ABCDEF % (2**63)
    out = D.apply_mask(x, p, seed)
    keep = D.counter_mask(n, seed, p)
    assert torch.equal(out, torch.where(keep, x * torch.tensor(1.0 / (1.0 - p)), torch.zeros(())))
    assert D._kernel() is not None  # the C kernel ran (a compiler is on every machine we test on)


def test_counter_mask_rate_thread_count_and_eval():
    x = torch.ones(1_000_000)
    torch.manual_seed(0)
    y = D.dropout(x, 0.2, True, "counter")
    kept = float((y != 0).float().mean())
    assert abs(kept - 0.8) < 5 * (0.2 * 0.8 / 1e6) ** 0.5  # 5 standard errors
    assert torch.all((y == 0) | (y == 1.25))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = D.apply_mask(x, 0.2, 42)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, D.apply_mask(x, 0.2, 42))  # a function of (seed, i) alone
    assert D.dropout(x, 0.2, False, "counter") is x and D.dropout(x, 0.0, True, "counter") is x
    with pytest.raises(ValueError, match="dropout impl"):
        D.dropout(x, 0.2, True, "fast")


def test_counter_gradient_is_the_same_mask_and_seeded_by_torch():
    x = torch.randn(5000, requires_grad=True)
    torch.manual_seed(7)
    y = D.dropout(x, 0.3, True, "counter")
    g = torch.randn(5000)
    y.backward(g)
    keep = y.detach() != 0
    assert torch.allclose(x.grad, torch.where(keep, g / 0.7, torch.zeros(())), rtol=1e-6, atol=0)
    torch.manual_seed(7)
    assert torch.equal(D.dropout(x.detach(), 0.3, True, "counter"), y.detach())  # same torch seed, same mask


def test_encoder_with_counter_dropout_matches_torch_dropout_without_dropout():
    """Only the masks differ: in eval mode (and with p = 0) both implementations give the same logits."""
    cfg = EncoderConfig(vocab_size=50, n_embd=16, n_hidden=32, n_blocks=2, n_heads=2, dropout=0.2)
    torch.manual_seed(0)
    a = EncoderClassifier(cfg)
    b = EncoderClassifier(dataclasses.replace(cfg, dropout_impl="counter"))
    b.load_state_dict(a.state_dict())
    ids = torch.randint(1, 50, (4, 9))
    ids[1, 6:] = 0
    a.eval(), b.eval()
    assert torch.allclose(a(ids), b(ids), atol=1e-6)
    b.train()
    torch.manual_seed(1)
    y1 = ensemble_logits([b], Padded(ids[None]), training=True)
    torch.manual_seed(1)
    y2 = ensemble_logits([b], Padded(ids[None]), training=True)
    assert torch.equal(y1, y2) and not torch.allclose(y1, a(ids))


@needs_data
@pytest.mark.parametrize("pad", ["dynamic", "hybrid"])
def test_final_test_scores_the_validation_selected_weights_and_survives_resume(easy_data, tmp_path, pad):
    data = dataclasses.replace(easy_data, final=easy_data.test)
    base = dict(TINY, optimizer="md", p=1.1, lr=1e-3, dropout=0.2, seed=3, final_test=200,
                dropout_impl="counter", target_train_acc=1.0, pad=pad)
    full = run_train(TrainConfig(**base, max_epochs=3), out=tmp_path / "full", data=data)
    s = full.summary
    assert s["final_test_n"] == 200 and s["honest_test_acc"] == s["final_test_acc"]
    assert s["final_test_epoch"] == s["best_val_epoch"]
    # the validation-selected epoch's per-epoch test number on the same reviews is the same pass
    assert s["honest_epoch_test_acc"] == pytest.approx(s["final_test_acc"], abs=1e-12)
    run_train(TrainConfig(**base, max_epochs=1), out=tmp_path / "split", data=data)
    resumed = run_train(TrainConfig(**base, max_epochs=3), out=tmp_path / "split", data=data)
    a, b = model_state(tmp_path / "full"), model_state(tmp_path / "split")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed.summary["final_test_acc"] == s["final_test_acc"]
    assert a["best_epoch"] == b["best_epoch"] and a["final"] == b["final"]


@needs_data
@pytest.mark.parametrize("optimizer,p", [("md", 1.1), ("md", 3.0), ("adam", 2.0)])
def test_hybrid_layout_trains_as_padding_does_without_dropout(easy_data, tmp_path, optimizer, p):
    """Issue 24 §1: the hybrid layout changes where the arithmetic runs, not what it computes:
    three epochs of a 2-member ensemble (fp32, dropout 0) end with the padded run's losses and
    weights within 1e-5."""
    base = dict(TINY, optimizer=optimizer, p=p, lr=1e-3 if optimizer == "md" else 3e-3, dropout=0.0,
                target_train_acc=1.0, max_epochs=3, dropout_impl="counter")
    from attnopt.experiments.imdb import EnsembleConfig, run_ensemble

    runs = {}
    for pad in ("dynamic", "hybrid"):
        cfgs = [TrainConfig(**base, seed=s, pad=pad) for s in (0, 1)]
        runs[pad] = run_ensemble(EnsembleConfig(cfgs, names=("seed0", "seed1")), out=tmp_path / pad, data=easy_data)
    for a, b in zip(runs["dynamic"].members, runs["hybrid"].members):
        assert len(a.history) == len(b.history) == 3
        for ea, eb in zip(a.history, b.history):
            assert abs(ea["train_loss"] - eb["train_loss"]) <= 1e-5 * abs(ea["train_loss"])
            assert ea["val_acc"] == eb["val_acc"] and ea["train_acc"] == eb["train_acc"]
    for name in ("seed0", "seed1"):
        wa, wb = model_state(tmp_path / "dynamic" / name)["model"], model_state(tmp_path / "hybrid" / name)["model"]
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)


def test_final_test_needs_held_out_validation():
    with pytest.raises(Exception, match="final_test"):
        TrainConfig(protocol="paper", final_test=5000)
    with pytest.raises(Exception, match="pad"):
        TrainConfig(pad="none", dropout_impl="counter")
    assert TrainConfig(pad="hybrid", dropout_impl="counter", attn_impl="explicit").resolved_pad("cpu") == "hybrid"
    assert TrainConfig(dropout_impl="counter").resolved_pad("cuda") == "dynamic"


def test_evaluation_runs_without_dropout():
    """Regression: evaluate_members built a fresh EncoderEnsemble, in training mode, so every
    evaluation drew dropout masks; it is now deterministic and equal to the eval-mode logits."""
    from attnopt.data.reviews import TokenizedSplit
    from attnopt.experiments.imdb import DeviceSplit, evaluate

    torch.manual_seed(0)
    model = EncoderClassifier(EncoderConfig(vocab_size=50, n_embd=16, n_hidden=32, n_blocks=1, n_heads=1,
                                            dropout=0.5))
    ids = torch.randint(1, 50, (64, 12))
    split = DeviceSplit(TokenizedSplit.from_lists([list(map(int, r)) for r in ids], [int(i % 2) for i in range(64)],
                                                  max_len=12), torch.device("cpu"))
    torch.manual_seed(1)
    a = evaluate(model, split, loss="bce")
    torch.manual_seed(2)
    b = evaluate(model, split, loss="bce")
    assert a == b and model.training

"""E6 training on reduced sizes: ensemble members reproduce single runs, an interrupted run
resumes bit for bit, the run folders, the analysis and the comparison table."""

from __future__ import annotations

import json

import pytest
import torch

from attnopt.errors import UserError
from attnopt.experiments.vision import VisionConfig, run_compare, run_vision
from attnopt.experiments.vision.analysis import magnitude_prune_
from attnopt.experiments.vision.train import CHECKPOINT, random_crop_flip, resolve_precision
from attnopt.files import load_checkpoint
from attnopt.models.vit import EnsembleViT, ViTConfig
from attnopt.report.runs import is_complete

TINY = dict(dataset="digits", image_size=8, patch=4, width=8, depth=1, heads=2, mlp=16, epochs=2, subset=120,
            batch_size=40, threads=1, prune_levels=(0.0, 0.5))


def _same_history(ha: list[dict], hb: list[dict]) -> None:
    """Every epoch: accuracies equal, losses within 1e-4 relative."""
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        for k in ("train_acc", "val_acc", "test_acc"):
            assert ra[k] == rb[k], k
        for k in ("train_loss", "val_loss", "test_loss"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4), k


@pytest.mark.parametrize("optimizer", ["md", "adam"])
def test_ensemble_member_reproduces_single_run(optimizer):
    team = run_vision(dict(TINY, optimizer=optimizer, seeds=(1, 2, 3)))
    solo = run_vision(dict(TINY, optimizer=optimizer, seeds=(2,)))
    one_by_one = run_vision(dict(TINY, optimizer=optimizer, seeds=(1, 2, 3), ensemble=False))
    for res in (solo, one_by_one):
        a, b = team.members[1], res.members[-2 if res is one_by_one else 0]
        assert a["seed"] == b["seed"] == 2
        for key in ("honest_test_acc", "best_test_acc", "last_test_acc", "final_train_acc"):
            assert a[key] == b[key], key
        assert a["final_train_loss"] == pytest.approx(b["final_train_loss"], rel=1e-4)
        assert a["weights"]["Q"]["above_threshold"] == b["weights"]["Q"]["above_threshold"]
        assert len(team.histories[2]) == 2
        _same_history(team.histories[2], res.histories[2])
    # the members differ from each other (own init, data order and dropout)
    assert len({m["final_train_loss"] for m in team.members}) == 3


def test_interrupted_run_resumes_bit_identically(tmp_path):
    cfg = dict(TINY, optimizer="md", seeds=(1, 2), epochs=3)
    run_vision(cfg, out=tmp_path / "full")

    steps = {"n": 0}

    def stop_in_epoch_two(label, advance, total):
        if label.startswith("training"):
            steps["n"] += advance
            if steps["n"] > 2 * 3 + 2:  # 3 steps of 2 members per epoch; stop inside epoch 2
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_vision(cfg, out=tmp_path / "cut", progress=stop_in_epoch_two)
    assert not is_complete(tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / "seed-1" / CHECKPOINT)["epoch"] == 1
    run_vision(cfg, out=tmp_path / "cut")
    assert is_complete(tmp_path / "cut")
    for seed in (1, 2):
        a = load_checkpoint(tmp_path / "full" / f"seed-{seed}" / CHECKPOINT)
        b = load_checkpoint(tmp_path / "cut" / f"seed-{seed}" / CHECKPOINT)
        assert a["epoch"] == b["epoch"] == 3
        for n in a["model"]:
            assert torch.equal(a["model"][n], b["model"][n]), n
        assert torch.equal(a["drop_gen"], b["drop_gen"]) and torch.equal(a["data_gen"], b["data_gen"])
        strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in h]  # noqa: E731
        assert strip(a["history"]) == strip(b["history"])


def test_run_folders_and_rerun(tmp_path):
    out = tmp_path / "run"
    res = run_vision(dict(TINY, optimizer="adam", seeds=(4, 5)), out=out)
    assert res.out == out and is_complete(out)
    for s in (4, 5):
        member = out / f"seed-{s}"
        assert is_complete(member)
        assert json.loads((member / "config.json").read_text())["config"]["seeds"] == [s]
        assert (member / "history.csv").read_text().count("\n") == 3 and (member / "report.md").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["honest_test_acc"][2] == 2 and summary["members"] == ["seed-4", "seed-5"]
    assert list(summary)[-1] == "complete"
    assert summary["weights_init"]["Q"]["entries"] == summary["weights"]["Q"]["entries"] == 64
    again = run_vision(dict(TINY, optimizer="adam", seeds=(4, 5)), out=out)  # finished: read back, not retrained
    assert again.summary["honest_test_acc"] == pytest.approx(summary["honest_test_acc"])


def test_no_output_and_globals_restored():
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    res = run_vision(dict(TINY, optimizer="sgd", seeds=(0,), epochs=1))
    assert res.out is None and torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)


def test_normalised_md_trains_members_one_by_one():
    assert not VisionConfig(optimizer="md", md_normalize=True, seeds=(1, 2)).batched_members()
    assert VisionConfig(optimizer="adamw", seeds=(1, 2)).batched_members()
    res = run_vision(dict(TINY, optimizer="md", md_normalize=True, seeds=(1, 2), epochs=1))
    assert [m["seed"] for m in res.members] == [1, 2]


def test_diverging_run_is_a_user_error():
    with pytest.raises(UserError, match="non-finite training loss"):
        run_vision(dict(TINY, optimizer="sgd", lr=1e30, seeds=(0,), epochs=1))


def test_magnitude_pruning_per_member():
    m = EnsembleViT(ViTConfig(image_size=8, channels=1, patch=4, width=8, depth=1, heads=2, mlp=16), seeds=[1, 2])
    magnitude_prune_(m, 0.5)
    q = m.blocks[0]["q"]
    assert [(q[k] == 0).sum().item() for k in range(2)] == [32, 32]


def test_compare_table_and_figure(tmp_path):
    run_vision(dict(TINY, optimizer="md", seeds=(1, 2)), out=tmp_path / "md")
    run_vision(dict(TINY, optimizer="adam", seeds=(1, 2)), out=tmp_path / "adam")
    res = run_compare([tmp_path / "md", tmp_path / "adam"], out=tmp_path / "cmp")
    assert [r["optimizer"] for r in res.rows] == ["ℓ1.1-MD (lr 0.05)", "Adam (lr 0.0001)"]
    assert all(r["n"] == 2 for r in res.rows)
    assert (tmp_path / "cmp" / "vision_hist.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "vision_curves.png").stat().st_size > 1000
    assert "± " in (tmp_path / "cmp" / "compare.md").read_text()
    with pytest.raises(UserError, match="not a finished"):
        run_compare([tmp_path / "cmp"])


def test_training_learns_digits_and_pruning_starts_from_the_final_model():
    res = run_vision(dict(TINY, optimizer="adam", lr=3e-3, seeds=(0,), epochs=4, subset=None, width=16, mlp=32,
                          prune_levels=(0.0, 0.9)))
    h = res.histories[0]
    losses = [r["train_loss"] for r in h]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert h[-1]["test_acc"] > 0.5  # chance is 0.1
    m = res.members[0]
    assert m["pruning"]["test_acc"][0] == m["last_test_acc"]  # level 0 is the trained model itself
    assert m["pruning"]["test_acc"][1] < m["last_test_acc"]


def test_random_crop_flip():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    same = random_crop_flip(x, torch.tensor([False, False]), torch.tensor([[1, 1], [1, 1]]), 1)
    assert torch.equal(same, x)  # offset = pad: no shift
    out = random_crop_flip(x, torch.tensor([True, False]), torch.tensor([[1, 1], [0, 2]]), 1)
    assert torch.equal(out[0], x[0].flip(-1))
    # image 1 shifted down by one row and left by one column: zeros enter at the top and right
    want = torch.zeros(3, 3)
    want[1:, :2] = x[1, 0, :2, 1:]
    assert torch.equal(out[1, 0], want)


def test_ensemble_member_reproduces_single_run_with_augmentation():
    cfg = dict(TINY, optimizer="adamw", augment="crop-flip", crop_pad=1, epochs=1)
    team, solo = run_vision(dict(cfg, seeds=(1, 2))), run_vision(dict(cfg, seeds=(2,)))
    _same_history(team.histories[2], solo.histories[2])
    plain = run_vision(dict(cfg, augment="none", seeds=(2,)))
    assert plain.histories[2][0]["train_loss"] != solo.histories[2][0]["train_loss"]


def test_bf16_autocast_on_cpu():
    cfg = dict(TINY, optimizer="md", precision="bf16", epochs=1)
    team, solo = run_vision(dict(cfg, seeds=(1, 2))), run_vision(dict(cfg, seeds=(2,)))
    _same_history(team.histories[2], solo.histories[2])
    fp32 = run_vision(dict(cfg, precision="fp32", seeds=(2,)))
    a, b = solo.histories[2][0]["train_loss"], fp32.histories[2][0]["train_loss"]
    assert a != b and a == pytest.approx(b, rel=2e-2)  # bf16 products: close to fp32, not equal
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"

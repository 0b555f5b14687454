"""The weight-sparsity helpers shared by IMDB E4 and vision E6 (attnopt.models.sparsity),
against float64 NumPy references, and the IMDB model's pruning that uses them."""

import numpy as np
import pytest
import torch

from attnopt.experiments.imdb.sparsity import magnitude_prune_ as imdb_prune_
from attnopt.experiments.imdb.sparsity import weight_stats as imdb_weight_stats
from attnopt.models.encoder import EncoderClassifier, EncoderConfig
from attnopt.models.sparsity import abs_stats, magnitude_prune_


def _reference_prune(a: np.ndarray, fraction: float) -> np.ndarray:
    """Zero every entry with |w| <= the k-th smallest |w|, k = round(f N) (NumPy, float64)."""
    k = int(round(fraction * a.size))
    if k == 0:
        return a.copy()
    cut = np.sort(np.abs(a).ravel())[k - 1]
    return np.where(np.abs(a) <= cut, 0.0, a)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.9, 0.99])
def test_prune_whole_and_per_group_match_reference(dtype, fraction):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 7, 5, generator=g).to(dtype)
    whole, grouped = w.clone(), w.clone()
    magnitude_prune_([whole], fraction)
    magnitude_prune_([grouped], fraction, groups=1)
    a = w.double().numpy()
    np.testing.assert_array_equal(whole.double().numpy(), _reference_prune(a, fraction))
    for k in range(3):  # each member is pruned on its own entries
        np.testing.assert_array_equal(grouped[k].double().numpy(), _reference_prune(a[k], fraction))
    assert whole.dtype == dtype


def test_prune_ties_at_the_cut_and_zeros():
    w = torch.tensor([[0.0, 0.5, -0.5], [0.5, 2.0, -3.0]])
    magnitude_prune_([w], 0.34)  # k = 2: cut = 0.5, every ±0.5 goes
    assert w.tolist() == [[0.0, 0.0, 0.0], [0.0, 2.0, -3.0]]


def test_prune_a_view_changes_its_base_and_nothing_else():
    w = torch.arange(1.0, 13.0).reshape(4, 3)
    magnitude_prune_([w[2:]], 0.5)  # rows 2..3: 7..12, the three smallest go
    assert w[:2].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert w[2:].tolist() == [[0.0, 0.0, 0.0], [10.0, 11.0, 12.0]]


def test_prune_rejects_a_bad_fraction_and_k_zero_keeps_all():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="pruning fraction"):
            magnitude_prune_([torch.ones(2, 2)], bad)
    w = torch.randn(2, 3)
    before = w.clone()
    magnitude_prune_([w], 0.05)  # round(0.3) = 0
    assert torch.equal(w, before)


def test_abs_stats_against_float64():
    w = torch.tensor([0.0, -1e-4, 2e-3, -0.07, 0.5, -2.0], dtype=torch.float32)
    s = abs_stats(w, threshold=0.06, near_zero=1e-3)
    a = np.abs(w.double().numpy())
    assert s["entries"] == 6 and s["above_threshold"] == 3 and s["frac_near_zero"] == pytest.approx(2 / 6)
    assert s["max_abs"] == 2.0 and s["mean_abs"] == pytest.approx(a.mean(), rel=1e-7)
    assert (s["threshold"], s["near_zero"]) == (0.06, 1e-3)


def test_imdb_prunes_q_k_v_separately():
    m = EncoderClassifier(EncoderConfig(vocab_size=50, max_len=16, n_embd=8, n_hidden=16, n_blocks=1, n_heads=2))
    qkv = m.blocks[0].attn.qkv.weight
    with torch.no_grad():  # Q tiny, K medium, V large: a pooled cut would zero all of Q and none of V
        qkv[:8].mul_(1e-3)
        qkv[16:].mul_(1e3)
    imdb_prune_(m, 0.5)
    assert [int((qkv[i * 8:(i + 1) * 8] == 0).sum()) for i in range(3)] == [32, 32, 32]
    stats = imdb_weight_stats(m)
    assert set(stats) == {"Q", "K", "V", "O", "MLP"} and "hoyer" in stats["Q"]
    assert stats["Q"]["entries"] == 64 and stats["Q"]["frac_near_zero"] >= 0.5

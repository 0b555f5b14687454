"""The encoder classifier: fused attention equals the explicit softmax, padding invariance, the
padding-free (packed) layout equals the padded one, and K stacked members equal K models."""

import numpy as np
import pytest
import torch

from attnopt.config import ConfigError
from attnopt.data.reviews import TokenizedSplit
from attnopt.experiments.imdb.batching import DeviceSplit, eval_batches, packed_batch, padded_batch
from attnopt.experiments.imdb.engine import member_losses
from attnopt.models.encoder import (EncoderClassifier, EncoderConfig, EncoderEnsemble, ensemble_logits,
                                    explicit_attention)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(n_embd=24, n_hidden=48, n_blocks=2, n_heads=3, vocab_size=500, max_len=64)


def _batch(lengths, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(103, 500, (len(lengths), T), generator=g)
    ids[:, 0] = 101
    for i, n in enumerate(lengths):
        ids[i, n:] = 0
    return ids


@pytest.mark.parametrize("norm,pool", [("post", "cls"), ("pre", "cls"), ("post", "mean"), ("pre", "mean")])
def test_sdpa_equals_explicit_softmax(norm, pool):
    torch.manual_seed(0)
    fused = EncoderClassifier(EncoderConfig(**TINY, norm=norm, pool=pool, dropout=0.0)).double()
    explicit = EncoderClassifier(EncoderConfig(**TINY, norm=norm, pool=pool, dropout=0.0,
                                               attn_impl="explicit")).double()
    explicit.load_state_dict(fused.state_dict())
    ids = _batch([20, 7, 1, 13], 20)
    for m in (fused, explicit):
        m.eval()
    torch.testing.assert_close(fused(ids), explicit(ids), rtol=1e-12, atol=1e-12)
    # gradients agree too (dropout off)
    fused.train(), explicit.train()
    fused(ids).sum().backward()
    explicit(ids).sum().backward()
    for (n, a), (_, b) in zip(fused.named_parameters(), explicit.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=n)


def test_explicit_attention_masks_pad_keys():
    q = torch.randn(2, 1, 5, 4, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    _, probs = explicit_attention(q, q, q, keep, return_probs=True)
    assert torch.all(probs[0, :, :, 3:] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 1, 5, dtype=torch.float64))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_dynamic_padding_equals_padding_to_max(pool):
    torch.manual_seed(1)
    m = EncoderClassifier(EncoderConfig(**TINY, pool=pool)).double().eval()
    ids = _batch([9, 3, 12], 12)
    padded = torch.nn.functional.pad(ids, (0, 64 - 12))
    torch.testing.assert_close(m(ids), m(padded), rtol=1e-12, atol=1e-12)


def test_attention_probs_and_weight_matrices():
    torch.manual_seed(2)
    m = EncoderClassifier(EncoderConfig(**TINY)).eval()
    ids = _batch([6, 10], 10)
    maps = m.attention_probs(ids)
    assert len(maps) == 2 and maps[-1].shape == (2, 3, 10, 10)
    assert torch.all(maps[-1][0, :, :, 6:] == 0)
    w = m.weight_matrices()
    assert [t.shape for t in w["Q"]] == [(24, 24)] * 2 and w["MLP_in"][0].shape == (48, 24)
    torch.testing.assert_close(torch.cat([w["Q"][0], w["K"][0], w["V"][0]]), m.blocks[0].attn.qkv.weight)


def test_paper_sizes_and_counts():
    m = EncoderClassifier(EncoderConfig.size(3))
    assert m.num_parameters() == 17_228_160
    assert all(p is None for name, p in m.named_parameters() if name.endswith("bias"))
    assert not any(name.endswith("bias") for name, _ in m.named_parameters())
    m6 = EncoderClassifier(EncoderConfig.size(6))
    assert sum(t.numel() for t in m6.weight_matrices()["K"]) == 884_736  # the paper's E4 count
    with pytest.raises(ConfigError, match="EncoderConfig: n_embd=384 is not divisible"):
        EncoderConfig(n_embd=384, n_heads=5)
    with pytest.raises(ConfigError, match="EncoderConfig: norm"):
        EncoderConfig(norm="sandwich")


def _split(lengths, vocab=500, seed=0):
    """Token ids with [CLS] first and the given lengths, as a device split (labels alternate)."""
    rng = np.random.default_rng(seed)
    ids = [[101] + list(rng.integers(103, vocab, size=n - 1)) for n in lengths]
    return DeviceSplit(TokenizedSplit.from_lists(ids, np.arange(len(lengths)) % 2, max_len=64), torch.device("cpu"))


def _no_dropout(cfg):
    return cfg.replace(dropout=0.0)


@pytest.mark.parametrize("norm,pool", [("post", "cls"), ("pre", "mean")])
def test_packed_equals_padded_loss_and_gradients_fp32(norm, pool):
    """Issue 17: padding-free batches give the padded model's loss and gradients (fp32, dropout 0)."""
    lengths = [64, 1, 37, 5, 64, 12, 29, 2, 50, 17]
    split = _split(lengths)
    cfg = _no_dropout(EncoderConfig(**TINY, norm=norm, pool=pool))
    torch.manual_seed(3)
    model = EncoderClassifier(cfg).train()
    idx = [torch.tensor([3, 0, 7, 1, 9, 4, 8, 2, 6, 5])]
    grads = {}
    for name, (batch, y) in {"packed": packed_batch(split, idx, 8), "padded": padded_batch(split, idx, "max", 8),
                             "dynamic": padded_batch(split, idx, "dynamic", 8),
                             "hybrid": packed_batch(split, idx, 8, padded_attention=True)}.items():
        model.zero_grad()
        loss = member_losses(ensemble_logits([model], batch, training=True), y, "bce", "sum")[0]
        loss.backward()
        grads[name] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert packed_batch(split, idx, 8)[0].real is not None  # the stream was rounded up: a tail was gathered out
    for ref, other in (("packed", "padded"), ("packed", "dynamic"), ("hybrid", "dynamic"), ("hybrid", "packed")):
        assert (grads[ref][0] - grads[other][0]).abs().item() <= 1e-5
        for n, g in grads[ref][1].items():
            assert (g - grads[other][1][n]).abs().max().item() <= 1e-5, (ref, other, n)
    assert float(grads["packed"][1]["pos_emb.weight"][60:].abs().sum()) > 0  # long reviews reach far positions


def test_packed_layout_positions_and_boundaries():
    split = _split([4, 2, 3])
    batch, y = packed_batch(split, [torch.tensor([2, 0]), torch.tensor([1, 0])], 4)
    assert batch.ids.shape == (2, 8)  # longest member: 3 + 4 = 7 tokens, rounded up to 8
    assert batch.pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 3, 0, 0]]
    assert batch.cu.tolist() == [0, 3, 7, 9, 13] and batch.cls.tolist() == [[0, 3], [0, 2]]
    assert batch.ids[:, 0].tolist() == [101, 101] and batch.ids[0, 3].item() == 101
    assert batch.real.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13] and batch.n_real == 13
    assert y.tolist() == [[0.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize("layout", ["packed", "hybrid", "padded"])
def test_stacked_members_equal_separate_models(layout):
    """K models in one forward pass give each model's own logits (float64, bit for bit up to 1e-12)."""
    split = _split([9, 30, 3, 17, 40, 22, 8, 1])
    models = []
    for k in range(3):
        torch.manual_seed(k)
        models.append(EncoderClassifier(_no_dropout(EncoderConfig(**TINY))).double().train())
    idx = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 1])]
    batch, _ = {"packed": lambda: packed_batch(split, idx, 8),
                "hybrid": lambda: packed_batch(split, idx, 8, padded_attention=True),
                "padded": lambda: padded_batch(split, idx, "dynamic", 8)}[layout]()
    if layout == "hybrid":
        assert batch.attn_width == 40 and batch.real is not None
    together = EncoderEnsemble(models)(batch)
    for k, m in enumerate(models):
        alone, _ = split.batch(idx[k], "max", 8)
        torch.testing.assert_close(together[k], m(alone), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attn_impl", ["sdpa", "explicit"])
def test_hybrid_layout_trains_with_counter_dropout(attn_impl):
    """The hybrid layout takes what the jagged one refuses (counter dropout, the explicit
    softmax); with dropout its logits are another sample than the padded layout's, and
    without it the same (fp64, 1e-12)."""
    split = _split([9, 30, 3, 17, 40, 22, 8, 1])
    idx = [torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])]
    cfg = EncoderConfig(**TINY, dropout=0.2, dropout_impl="counter", attn_impl=attn_impl)
    models = [EncoderClassifier(cfg).double().train() for _ in range(2)]
    with pytest.raises(ValueError, match="jagged attention needs"):
        ensemble_logits(models, packed_batch(split, idx, 8)[0], training=True)
    hybrid, _ = packed_batch(split, idx, 8, padded_attention=True)
    torch.manual_seed(0)
    z = ensemble_logits(models, hybrid, training=True)
    z.sum().backward()
    assert torch.isfinite(z).all() and all(torch.isfinite(p.grad).all() for p in models[0].parameters())
    torch.manual_seed(0)
    assert not torch.equal(z, ensemble_logits(models, hybrid, training=False))
    plain = [EncoderClassifier(_no_dropout(cfg)).double() for _ in range(2)]
    torch.testing.assert_close(ensemble_logits(plain, hybrid, training=True),
                               ensemble_logits(plain, padded_batch(split, idx, "dynamic", 8)[0], training=True),
                               rtol=1e-12, atol=1e-12)


def test_length_sorted_evaluation_batches_pad_little():
    lengths = list(np.random.default_rng(1).integers(1, 65, size=40))
    split = _split(lengths)
    seen, widths = [], []
    for batch, _ in eval_batches(split, 8, 8):
        real = (batch.ids != 0).sum(1)
        seen += real.tolist()
        widths.append(batch.ids.shape[1])
        assert batch.ids.shape[1] - int(real.max()) < 8  # each batch padded only to its own longest review
    assert seen == sorted(lengths, reverse=True) and widths == sorted(widths, reverse=True)

"""The encoder classifier: fused attention equals the explicit softmax, padding invariance."""

import pytest
import torch

from attnopt.models.encoder import EncoderClassifier, EncoderConfig, explicit_attention

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
    fused = EncoderClassifier(EncoderConfig(**TINY, norm=norm, pool=pool)).double()
    explicit = EncoderClassifier(EncoderConfig(**TINY, norm=norm, pool=pool, attn_impl="explicit")).double()
    explicit.load_state_dict(fused.state_dict())
    ids = _batch([20, 7, 1, 13], 20)
    for m in (fused, explicit):
        m.eval()
    torch.testing.assert_close(fused(ids), explicit(ids), rtol=1e-12, atol=1e-12)
    # gradients agree too (dropout off)
    fused.train(), explicit.train()
    for m in (fused, explicit):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
            if hasattr(mod, "dropout") and isinstance(mod.dropout, float):
                mod.dropout = 0.0
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
    with pytest.raises(ValueError, match="divisible"):
        EncoderConfig(n_embd=384, n_heads=5)
    with pytest.raises(ValueError, match="norm"):
        EncoderConfig(norm="sandwich")

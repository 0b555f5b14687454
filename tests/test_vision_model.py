"""The batched-member ViT: shapes, patch order, a float64 reference of one member, members
independent of their companions, dropout streams per member, saturated softmax."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnopt.config import ConfigError
from attnopt.models.vit import EnsembleViT, MemberDropout, ViTConfig, patchify

SMALL = ViTConfig(image_size=8, channels=3, patch=2, width=16, depth=2, heads=4, mlp=24, dropout=0.1)


def test_authors_shape_and_config_checks():
    cfg = ViTConfig()
    shape = (cfg.image_size, cfg.patch, cfg.width, cfg.depth, cfg.heads, cfg.mlp, cfg.dropout)
    assert shape == (48, 4, 512, 6, 8, 512, 0.1)
    assert cfg.n_patches == 144
    m = EnsembleViT(cfg.replace(depth=1), seeds=[0])
    assert m(torch.randn(2, 3, 48, 48)).shape == (1, 2, 10)
    with pytest.raises(ConfigError, match="heads"):
        ViTConfig(width=10, heads=4)
    with pytest.raises(ConfigError, match="patch"):
        ViTConfig(image_size=10, patch=4)


def test_patchify_order():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 4, 12)
    # patch 1 = rows 0-1, columns 2-3; entries ordered (row, column, channel)
    want = torch.stack([x[0, c, r, 2 + s] for r in range(2) for s in range(2) for c in range(3)])
    assert torch.equal(p[0, 1], want)


def _reference(m: EnsembleViT, k: int, x: torch.Tensor) -> torch.Tensor:
    """Member k in float64, written head by head without batching."""
    cfg = m.cfg
    P = {n: v[k].double() for n, v in m.named_parameters()}
    z = patchify(x.double(), cfg.patch) @ P["patch_w"] + P["patch_b"]
    z = torch.cat([P["cls"].expand(x.shape[0], 1, -1), z], 1) + P["pos"]
    dh = cfg.width // cfg.heads
    for i in range(cfg.depth):
        b = lambda n: P[f"blocks.{i}.{n}"]  # noqa: E731
        u = F.layer_norm(z, (cfg.width,), b("ln1_w"), b("ln1_b"))
        outs = []
        for h in range(cfg.heads):
            sl = slice(h * dh, (h + 1) * dh)
            q, kk, v = u @ b("q")[:, sl], u @ b("k")[:, sl], u @ b("v")[:, sl]
            outs.append(torch.softmax(q @ kk.transpose(1, 2) / math.sqrt(dh), -1) @ v)
        z = z + torch.cat(outs, -1) @ b("o_w") + b("o_b")
        u = F.layer_norm(z, (cfg.width,), b("ln2_w"), b("ln2_b"))
        z = z + F.gelu(u @ b("fc1_w") + b("fc1_b")) @ b("fc2_w") + b("fc2_b")
    return F.layer_norm(z[:, 0], (cfg.width,), P["ln_w"], P["ln_b"]) @ P["head_w"] + P["head_b"]


def test_matches_float64_reference_per_member():
    m = EnsembleViT(SMALL, seeds=[3, 4]).eval()
    x = torch.randn(5, 3, 8, 8)
    out = m(x)
    assert out.shape == (2, 5, 10)
    for k in range(2):
        torch.testing.assert_close(out[k].double(), _reference(m, k, x), rtol=1e-5, atol=1e-5)
    m64 = EnsembleViT(SMALL, seeds=[3, 4]).double().eval()
    torch.testing.assert_close(m64(x.double())[1], _reference(m64, 1, x), rtol=1e-12, atol=1e-12)


def test_member_is_independent_of_its_companions():
    solo, team = EnsembleViT(SMALL, seeds=[7]), EnsembleViT(SMALL, seeds=[5, 7, 9])
    for (n, a), (_, b) in zip(solo.named_parameters(), team.named_parameters()):
        assert torch.equal(a[0], b[1]), n
    x = torch.randn(3, 4, 3, 8, 8)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    out_team = team(x, MemberDropout([g(1), g(2), g(3)]))
    out_solo = solo(x[1:2], MemberDropout([g(2)]))
    torch.testing.assert_close(out_team[1:2], out_solo, rtol=1e-6, atol=1e-6)
    # train mode with dropout differs from eval mode; eval mode ignores the generators
    assert not torch.allclose(out_solo, solo.eval()(x[1:2]))
    torch.testing.assert_close(solo(x[1:2], MemberDropout([g(5)])), solo(x[1:2]))


def test_saturated_softmax_stays_finite():
    m = EnsembleViT(SMALL, seeds=[0]).eval()
    with torch.no_grad():
        for blk in m.blocks:
            blk["q"].mul_(1e4)
            blk["k"].mul_(1e4)
    out = m(torch.randn(2, 3, 8, 8) * 10)
    assert torch.isfinite(out).all()

r"""A Vision Transformer whose every parameter carries a leading *member* axis, so that E
independent models (one per seed) train together in one process as one batched model.

Architecture (the common pre-norm ViT; the authors' E6 shape by default: 48 px images,
patch 4 → 144 patches + [CLS], width 512, depth 6, 8 heads, MLP 512, dropout 0.1)::

    z_0 = [x_cls; P(x) W_e + b_e] + E_pos,   dropout          P: non-overlapping patches
    z'  = z + Attn(LN(z)),   z = z' + MLP(LN(z'))             (depth blocks)
    logits = LN(z_L)[CLS] W_h + b_h

    Attn(u) = concat_h softmax(q_h k_h^T / sqrt(d_h)) v_h  W_o + b_o,
              q = u W_q, k = u W_k, v = u W_v (no bias), d_h = width / heads
    MLP(u)  = GELU(u W_1 + b_1) W_2 + b_2

Dropout (rate ``dropout``) acts on the embeddings, the attention probabilities, the
attention output, the MLP hidden layer and the MLP output.  Its masks are drawn from one
:class:`torch.Generator` per member (:class:`MemberDropout`), so member k of an ensemble
draws exactly the random numbers that a model trained alone with k's seed draws.

Initialisation, per member from its own generator: linear weights and biases
U(−1/√fan_in, 1/√fan_in) (PyTorch's default for ``nn.Linear``), LayerNorm 1 / 0, the [CLS]
token and position embeddings N(0, 0.02²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnopt.config import ConfigMixin, check_float, check_int, config_error


@dataclass(frozen=True)
class ViTConfig(ConfigMixin):
    image_size: int = 48
    channels: int = 3
    patch: int = 4
    width: int = 512
    depth: int = 6
    heads: int = 8
    mlp: int = 512
    classes: int = 10
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch", "width", "depth", "heads", "mlp"):
            object.__setattr__(self, name, check_int(self, name, getattr(self, name), 1))
        object.__setattr__(self, "classes", check_int(self, "classes", self.classes, 2))
        object.__setattr__(self, "dropout", check_float(self, "dropout", self.dropout, ge=0.0, lt=1.0))
        if self.image_size % self.patch:
            raise config_error(self, f"patch ({self.patch}) must divide image_size ({self.image_size})")
        if self.width % self.heads:
            raise config_error(self, f"heads ({self.heads}) must divide width ({self.width})")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch) ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch * self.patch


class MemberDropout:
    """Dropout masks for E members, member k's drawn from ``generators[k]``.

    ``apply(x, rate)`` multiplies ``x`` (shape (E, …)) by Bernoulli(1 − rate)/(1 − rate)
    masks; member k's mask is ``torch.rand(x[k].shape, generator=generators[k]) >= rate``
    (float32 uniforms).
    """

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def apply(self, x: torch.Tensor, rate: float) -> torch.Tensor:
        if rate == 0.0:
            return x
        if x.shape[0] != len(self.generators):
            raise ValueError(f"dropout: {x.shape[0]} members in the input, {len(self.generators)} generators")
        # float32 draws whatever x's dtype (bfloat16 under autocast would round the uniforms)
        u = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device, dtype=torch.float32)
                         for g in self.generators])
        return x * (u >= rate).to(x.dtype) / (1.0 - rate)


def _uniform(shape: tuple[int, ...], fan_in: int, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """U(−1/√fan_in, 1/√fan_in) entries, member k's from ``gens[k]``."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.stack([(torch.rand(shape, generator=g) * 2 - 1) * bound for g in gens])


def _normal(shape: tuple[int, ...], std: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) * std for g in gens])


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Per member ``x[e] @ w[e] (+ b[e])`` for x (E, …, in), w (E, in, out): one batched GEMM."""
    E = x.shape[0]
    y = torch.bmm(x.reshape(E, -1, x.shape[-1]), w) if b is None else \
        torch.baddbmm(b.unsqueeze(1), x.reshape(E, -1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], w.shape[-1])


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:]) * w.reshape(shape) + b.reshape(shape)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(…, C, H, W) → (…, (H/p)(W/p), p·p·C): non-overlapping patches in row-major order,
    each flattened as (row in patch, column in patch, channel)."""
    *lead, C, H, W = images.shape
    x = images.reshape(*lead, C, H // patch, patch, W // patch, patch)
    n = len(lead)
    x = x.permute(*range(n), n + 1, n + 3, n + 2, n + 4, n)
    return x.reshape(*lead, (H // patch) * (W // patch), patch * patch * C)


class EnsembleViT(nn.Module):
    """E independent ViTs (:class:`ViTConfig`) with parameters stacked on a leading axis.

    ``forward(images, dropout=None)``: images (E, B, C, H, W) (one batch per member) or
    (B, C, H, W) (the same batch for every member) → logits (E, B, classes).  ``dropout``
    (a :class:`MemberDropout`) is used in train mode; eval mode never drops.
    Member k is initialised from ``torch.Generator().manual_seed(seeds[k])``.
    """

    def __init__(self, cfg: ViTConfig, seeds: Sequence[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.seeds = tuple(int(s) for s in seeds)
        E, D, M = len(self.seeds), cfg.width, cfg.mlp
        if E < 1:
            raise ValueError("EnsembleViT needs at least one member")
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        P = nn.Parameter
        self.patch_w = P(_uniform((cfg.patch_dim, D), cfg.patch_dim, gens))
        self.patch_b = P(_uniform((D,), cfg.patch_dim, gens))
        self.cls = P(_normal((1, D), 0.02, gens))
        self.pos = P(_normal((cfg.n_patches + 1, D), 0.02, gens))
        self.blocks = nn.ModuleList()
        for _ in range(cfg.depth):
            blk = nn.ParameterDict({
                "ln1_w": P(torch.ones(E, D)), "ln1_b": P(torch.zeros(E, D)),
                "q": P(_uniform((D, D), D, gens)), "k": P(_uniform((D, D), D, gens)),
                "v": P(_uniform((D, D), D, gens)),
                "o_w": P(_uniform((D, D), D, gens)), "o_b": P(_uniform((D,), D, gens)),
                "ln2_w": P(torch.ones(E, D)), "ln2_b": P(torch.zeros(E, D)),
                "fc1_w": P(_uniform((D, M), D, gens)), "fc1_b": P(_uniform((M,), D, gens)),
                "fc2_w": P(_uniform((M, D), M, gens)), "fc2_b": P(_uniform((D,), M, gens)),
            })
            self.blocks.append(blk)
        self.ln_w, self.ln_b = P(torch.ones(E, D)), P(torch.zeros(E, D))
        self.head_w = P(_uniform((D, cfg.classes), D, gens))
        self.head_b = P(_uniform((cfg.classes,), D, gens))

    @property
    def members(self) -> int:
        return len(self.seeds)

    def _drop(self, x: torch.Tensor, dropout: MemberDropout | None) -> torch.Tensor:
        if not self.training or dropout is None:
            return x
        return dropout.apply(x, self.cfg.dropout)

    def _attention(self, u: torch.Tensor, blk: nn.ParameterDict, dropout: MemberDropout | None) -> torch.Tensor:
        E, B, T, D = u.shape
        H = self.cfg.heads

        def heads(w: torch.Tensor) -> torch.Tensor:
            return _linear(u, w).reshape(E, B, T, H, D // H).transpose(2, 3)  # (E, B, H, T, d_h)

        q, k, v = heads(blk["q"]), heads(blk["k"]), heads(blk["v"])
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
        y = (self._drop(att, dropout) @ v).transpose(2, 3).reshape(E, B, T, D)
        return self._drop(_linear(y, blk["o_w"], blk["o_b"]), dropout)

    def forward(self, images: torch.Tensor, dropout: MemberDropout | None = None) -> torch.Tensor:
        E, cfg = self.members, self.cfg
        if images.dim() == 4:
            images = images.unsqueeze(0).expand(E, *images.shape)
        if images.dim() != 5 or images.shape[0] != E or tuple(images.shape[2:]) != (
                cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"expected images ({E}, B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}) or "
                             f"(B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), got {tuple(images.shape)}")
        B = images.shape[1]
        z = _linear(patchify(images, cfg.patch), self.patch_w, self.patch_b)
        z = torch.cat([self.cls.unsqueeze(1).expand(E, B, 1, cfg.width), z], dim=2) + self.pos.unsqueeze(1)
        z = self._drop(z, dropout)
        for blk in self.blocks:
            z = z + self._attention(_layer_norm(z, blk["ln1_w"], blk["ln1_b"]), blk, dropout)
            h = F.gelu(_linear(_layer_norm(z, blk["ln2_w"], blk["ln2_b"]), blk["fc1_w"], blk["fc1_b"]))
            z = z + self._drop(_linear(self._drop(h, dropout), blk["fc2_w"], blk["fc2_b"]), dropout)
        cls = _layer_norm(z[:, :, 0], self.ln_w, self.ln_b)
        return _linear(cls, self.head_w, self.head_b)

    def attention_matrices(self) -> dict[str, list[torch.Tensor]]:
        """Per matrix type, the (E, in, out) weights of every block: Q, K, V, O, MLP (fc1 and fc2)."""
        out: dict[str, list[torch.Tensor]] = {"Q": [], "K": [], "V": [], "O": [], "MLP": []}
        for blk in self.blocks:
            out["Q"].append(blk["q"])
            out["K"].append(blk["k"])
            out["V"].append(blk["v"])
            out["O"].append(blk["o_w"])
            out["MLP"] += [blk["fc1_w"], blk["fc2_w"]]
        return out


__all__ = ["ViTConfig", "EnsembleViT", "MemberDropout", "patchify"]

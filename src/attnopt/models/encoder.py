"""The transformer-encoder sentiment classifier of the paper's IMDB experiment (E3).

Token + learned position embeddings, ``n_blocks`` encoder blocks, a read-out of the
``[CLS]`` position (or a masked mean over the review's tokens) through ``Linear(n_embd, 1)``;
the model returns the *logit*, the probability is ``sigmoid(logit)``.  Defaults follow the
paper's code: n_embd 384, MLP 1536 with GELU, no biases anywhere (LayerNorms have a weight
only), dropout 0.2 on the attention probabilities, after the attention output projection
and after the MLP, and post-LayerNorm blocks::

    x = LN(x + Attn(x));  x = LN(x + MLP(x))            (norm="post", the paper)
    x = x + Attn(LN(x));  x = x + MLP(LN(x)); final LN  (norm="pre", an option)

Query, key and value come from one ``Linear(n_embd, 3 n_embd)`` (``attn.qkv``) as in the
paper, so initialisation (PyTorch defaults) matches; :meth:`EncoderClassifier.weight_matrices`
splits it into Q, K and V for the sparsity analysis.

Padding keys (id 0) are masked.  Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with a boolean key mask
(``attn_impl="sdpa"``, fused kernels on GPU) or through an explicit softmax
(``attn_impl="explicit"``, the paper's formulation); both compute the same function.  Queries
at padding positions are never read (their keys are masked and the read-out ignores them),
so padding a batch to its longest review gives the same logits as padding to 512.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD_ID = 0

#: "size" s of the paper's IMDB model = number of blocks = number of heads.
PAPER_SIZES = (3, 4, 6)


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    max_len: int = 512
    n_embd: int = 384
    n_hidden: int = 1536
    n_blocks: int = 3
    n_heads: int = 3
    dropout: float = 0.2
    bias: bool = False
    norm: str = "post"          # "post" (paper) | "pre"
    pool: str = "cls"           # "cls" (paper) | "mean" (masked mean over non-pad tokens)
    attn_impl: str = "sdpa"     # "sdpa" | "explicit"

    def __post_init__(self) -> None:
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', got {self.norm!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.attn_impl not in ("sdpa", "explicit"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'explicit', got {self.attn_impl!r}")
        for name in ("vocab_size", "max_len", "n_embd", "n_hidden", "n_blocks", "n_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_heads:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def size(cls, s: int, **overrides) -> "EncoderConfig":
        """The paper's size-``s`` model: ``s`` blocks with ``s`` heads each."""
        return cls(n_blocks=int(s), n_heads=int(s), **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **kw) -> "EncoderConfig":
        return replace(self, **kw)


def key_padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """``True`` where the token is real (not ``[PAD]``), shape (B, T)."""
    return ids != PAD_ID


def explicit_attention(q, k, v, keep: torch.Tensor, dropout_p: float = 0.0, training: bool = False,
                       return_probs: bool = False):
    """softmax(q kᵀ / √d + mask) v with masked keys at −∞ (the paper's formulation).

    ``keep`` is a boolean (B, T) key mask.  Returns the output (and the probabilities).
    """
    scale = 1.0 / math.sqrt(q.size(-1))
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    dropped = F.dropout(probs, dropout_p, training=training) if dropout_p > 0 else probs
    out = dropped @ v
    return (out, probs) if return_probs else out


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout
        self.impl = cfg.attn_impl
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, return_probs: bool = False):
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)
        k = k.view(B, T, H, C // H).transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        probs = None
        if self.impl == "explicit" or return_probs:
            y, probs = explicit_attention(q, k, v, keep, p, self.training, return_probs=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)
        y = self.resid_dropout(self.proj(y))
        return (y, probs) if return_probs else y


class FeedForward(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.n_hidden, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.n_hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, return_probs: bool = False):
        if self.pre:
            a = self.attn(self.ln1(x), keep, return_probs)
            a, probs = a if return_probs else (a, None)
            x = x + a
            x = x + self.mlp(self.ln2(x))
        else:
            a = self.attn(x, keep, return_probs)
            a, probs = a if return_probs else (a, None)
            x = self.ln1(x + a)
            x = self.ln2(x + self.mlp(x))
        return (x, probs) if return_probs else x


class EncoderClassifier(nn.Module):
    """Binary sentiment classifier; ``forward(ids)`` returns logits of shape (B,)."""

    def __init__(self, cfg: EncoderConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = (cfg or EncoderConfig()).with_(**overrides) if overrides else (cfg or EncoderConfig())
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_blocks)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, 1, bias=cfg.bias)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_len {self.cfg.max_len}")
        pos = torch.arange(T, device=ids.device)
        return self.tok_emb(ids) + self.pos_emb(pos)

    def _pool(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if self.cfg.pool == "cls":
            return x[:, 0]
        w = keep.to(x.dtype).unsqueeze(-1)
        return (x * w).sum(1) / w.sum(1).clamp_min(1.0)

    def forward(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        keep = key_padding_mask(ids) if keep is None else keep
        x = self._embed(ids)
        for blk in self.blocks:
            x = blk(x, keep)
        x = self.ln_f(x)
        return self.head(self._pool(x, keep)).squeeze(-1)

    @torch.no_grad()
    def attention_probs(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Attention probabilities of every block, each (B, H, T, T), from an explicit softmax.

        Computed in the model's current mode (call ``eval()`` first for dropout-free maps).
        """
        keep = key_padding_mask(ids) if keep is None else keep
        x = self._embed(ids)
        maps = []
        for blk in self.blocks:
            x, probs = blk(x, keep, return_probs=True)
            maps.append(probs)
        return maps

    def weight_matrices(self) -> dict[str, list[torch.Tensor]]:
        """Weight matrices grouped by type, one entry per block: Q, K, V, O, MLP_in, MLP_out."""
        C = self.cfg.n_embd
        out: dict[str, list[torch.Tensor]] = {k: [] for k in ("Q", "K", "V", "O", "MLP_in", "MLP_out")}
        for blk in self.blocks:
            w = blk.attn.qkv.weight
            out["Q"].append(w[:C])
            out["K"].append(w[C:2 * C])
            out["V"].append(w[2 * C:])
            out["O"].append(blk.attn.proj.weight)
            out["MLP_in"].append(blk.mlp.fc1.weight)
            out["MLP_out"].append(blk.mlp.fc2.weight)
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_example(self, seq_len: int, backward: bool = True) -> float:
        """Matmul FLOPs of one example of length ``seq_len`` (2 per multiply-add; ×3 with backward).

        Counts the projections, the MLP and the two attention matmuls; ignores embeddings,
        norms, softmax and the 1-output head (all small).
        """
        C, Hd, T = self.cfg.n_embd, self.cfg.n_hidden, seq_len
        per_block = 2 * T * (4 * C * C + 2 * C * Hd) + 2 * 2 * T * T * C
        total = self.cfg.n_blocks * per_block
        return float(total * (3 if backward else 1))


__all__ = ["EncoderConfig", "EncoderClassifier", "PAPER_SIZES", "explicit_attention", "key_padding_mask"]

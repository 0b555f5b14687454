"""The transformer-encoder sentiment classifier of the paper's IMDB experiment (E3).

Token + learned position embeddings, ``n_blocks`` encoder blocks, a read-out of the
``[CLS]`` position (or a masked mean over the review's tokens) through ``Linear(n_embd, 1)``;
the model returns the *logit*, the probability is ``sigmoid(logit)``.  Defaults follow the
paper's code: n_embd 384, MLP 1536 with GELU, no biases anywhere (LayerNorms have a weight
only), dropout 0.2 on the attention probabilities, after the attention output projection
and after the MLP, and post-LayerNorm blocks::

    x = LN(x + Attn(x));  x = LN(x + MLP(x))            (norm="post", the paper)
    x = x + Attn(LN(x));  x = x + MLP(LN(x)); final LN  (norm="pre", an option)

with ``Attn(x) = concat_h softmax(q_h k_hᵀ/√d_h + mask) v_h · W_O`` and ``q, k, v = x W_qkv``
from one ``Linear(n_embd, 3 n_embd)`` (``attn.qkv``) as in the paper, so initialisation
(PyTorch defaults) matches; :meth:`EncoderClassifier.weight_matrices` splits it into Q, K, V.

One functional forward, :func:`ensemble_logits`, computes the logits of K models with the same
architecture at once (their parameters stacked along a leading member axis; K = 1 is a single
model, and :meth:`EncoderClassifier.forward` is that case) for two input layouts:

* :class:`Padded` — reviews padded to a common width with ``[PAD]`` (id 0); padding keys are
  masked, so padding to the batch's longest review or to 512 gives the same logits;
* :class:`Packed` — padding-free: each member's reviews back to back in one token stream,
  position ids restarting at every review, attention computed per review by
  ``scaled_dot_product_attention`` over a jagged nested tensor (FlashAttention's varlen
  kernel on CUDA in bf16, the memory-efficient one in fp32, a per-review math path on CPU);
  or, when the batch has an ``attn_index`` (the ``hybrid`` layout, faster on CPU), by the
  padded layout's attention on the reviews scattered into a (K·B, attn_width) grid and
  gathered back — every other operation still sees no padding.

Attention runs through ``scaled_dot_product_attention`` (``attn_impl="sdpa"``) or an explicit
softmax (``attn_impl="explicit"``, the paper's formulation; not with jagged attention); both compute
the same function.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnopt.config import ConfigMixin, check_bool, check_choice, check_float, check_int
from attnopt.models.dropout import IMPLS as DROPOUT_IMPLS, dropout

PAD_ID = 0

#: "size" s of the paper's IMDB model = number of blocks = number of heads.
PAPER_SIZES = (3, 4, 6)


@dataclass(frozen=True)
class EncoderConfig(ConfigMixin):
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
    dropout_impl: str = "torch"  # "torch" | "counter" (attnopt.models.dropout: other masks, faster on CPU)

    def __post_init__(self) -> None:
        check_choice(self, "norm", self.norm, ("post", "pre"))
        check_choice(self, "pool", self.pool, ("cls", "mean"))
        check_choice(self, "attn_impl", self.attn_impl, ("sdpa", "explicit"))
        check_choice(self, "dropout_impl", self.dropout_impl, DROPOUT_IMPLS)
        for name in ("vocab_size", "max_len", "n_embd", "n_hidden", "n_blocks", "n_heads"):
            object.__setattr__(self, name, check_int(self, name, getattr(self, name), lo=1))
        object.__setattr__(self, "dropout", check_float(self, "dropout", self.dropout, ge=0.0, lt=1.0))
        check_bool(self, "bias", self.bias)
        if self.n_embd % self.n_heads:
            from attnopt.config import config_error

            raise config_error(self, f"n_embd={self.n_embd} is not divisible by n_heads={self.n_heads}")

    @classmethod
    def size(cls, s: int, **overrides) -> "EncoderConfig":
        """The paper's size-``s`` model: ``s`` blocks with ``s`` heads each."""
        return cls(n_blocks=int(s), n_heads=int(s), **overrides)


# --------------------------------------------------------------------------- inputs


@dataclass
class Padded:
    """Reviews padded with ``[PAD]``: ``ids`` (K, B, T), or (B, T) shared by every member.
    ``keep`` (same shape) marks real tokens (default ``ids != PAD_ID``)."""

    ids: torch.Tensor
    keep: torch.Tensor | None = None


@dataclass
class Packed:
    """Padding-free batch: member k's B reviews back to back in row k of ``ids`` (K, N).

    ``pos`` (K, N): position within the review (restarting at 0); ``cu`` (K·B + 1,): the review
    boundaries in the stream of real tokens (members one after the other); ``real`` (R,): the
    flat index (into K·N) of each real token, or None when every token is real (K = 1 and no
    tail); ``cls`` (K, B): each review's first position in its row; ``lengths`` (K, B);
    ``max_seqlen``: an upper bound of the review lengths (sizes the attention kernel's grid);
    ``n_real``: the number of real tokens R (known on the host, so nothing waits on the device);
    ``attn_index`` (R,) and ``attn_keep`` (K·B, W): None (jagged attention), or, for the hybrid
    layout, each real token's flat index in the (K·B, W) grid of padded reviews (members after
    one another, as in ``cu``) and the grid's key mask; W (``attn_width``) is at least the
    longest review.
    """

    ids: torch.Tensor
    pos: torch.Tensor
    cu: torch.Tensor
    real: torch.Tensor | None
    cls: torch.Tensor
    lengths: torch.Tensor
    max_seqlen: int
    n_real: int
    attn_index: torch.Tensor | None = None
    attn_keep: torch.Tensor | None = None

    @property
    def attn_width(self) -> int | None:
        return None if self.attn_keep is None else int(self.attn_keep.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.cls.shape[0]), int(self.cls.shape[1])


def key_padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """``True`` where the token is real (not ``[PAD]``)."""
    return ids != PAD_ID


# --------------------------------------------------------------------------- attention kernels


def explicit_attention(q, k, v, keep: torch.Tensor, dropout_p: float = 0.0, training: bool = False,
                       return_probs: bool = False, dropout_impl: str = "torch"):
    """softmax(q kᵀ / √d + mask) v with masked keys at −∞ (the paper's formulation).

    ``keep`` is a boolean (B, T) key mask.  Returns the output (and the probabilities).
    """
    scale = 1.0 / math.sqrt(q.size(-1))
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    dropped = dropout(probs, dropout_p, training, dropout_impl)
    out = dropped @ v
    return (out, probs) if return_probs else out


def jagged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_seqlen: int,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Attention within each segment ``cu[i]:cu[i+1]`` of token streams q, k, v (R, H, d):
    ``scaled_dot_product_attention`` on jagged nested tensors, no mask and no padding."""

    def nested(t: torch.Tensor) -> torch.Tensor:
        return torch.nested.nested_tensor_from_jagged(t, offsets=cu, max_seqlen=max_seqlen).transpose(1, 2)

    if q.is_cuda:
        y = F.scaled_dot_product_attention(nested(q), nested(k), nested(v), dropout_p=dropout_p)
    else:
        with warnings.catch_warnings():
            # off CUDA, torch's own fallback goes through the older strided nested tensors and warns about them
            warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
            y = F.scaled_dot_product_attention(nested(q), nested(k), nested(v), dropout_p=dropout_p)
    return y.transpose(1, 2).values()


# --------------------------------------------------------------------------- modules (parameters)


class SelfAttention(nn.Module):
    """Parameters of one attention layer: ``qkv`` (W_Q; W_K; W_V stacked) and ``proj`` (W_O)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)


class FeedForward(nn.Module):
    """Parameters of one MLP: ``fc1`` (n_embd → n_hidden), GELU, ``fc2`` (back)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.n_hidden, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.n_hidden, cfg.n_embd, bias=cfg.bias)


class Block(nn.Module):
    """Parameters of one encoder block (the arithmetic is in :func:`ensemble_logits`)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = FeedForward(cfg)


class EncoderClassifier(nn.Module):
    """Binary sentiment classifier; ``forward(ids)`` returns logits of shape (B,)."""

    def __init__(self, cfg: EncoderConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = (cfg or EncoderConfig()).replace(**overrides) if overrides else (cfg or EncoderConfig())
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_blocks)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias) if cfg.norm == "pre" else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, 1, bias=cfg.bias)

    def forward(self, ids: torch.Tensor | Packed, keep: torch.Tensor | None = None) -> torch.Tensor:
        batch = ids if isinstance(ids, Packed) else Padded(ids[None], None if keep is None else keep[None])
        return ensemble_logits([self], batch, training=self.training)[0]

    @torch.no_grad()
    def attention_probs(self, ids: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Attention probabilities of every block, each (B, H, T, T), from an explicit softmax.

        Computed in the model's current mode (call ``eval()`` first for dropout-free maps).
        """
        maps: list[torch.Tensor] = []
        ensemble_logits([self], Padded(ids[None], None if keep is None else keep[None]), training=self.training,
                        probs_out=maps)
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


class EncoderEnsemble(nn.Module):
    """K classifiers of one architecture run as one: ``forward(batch)`` gives logits (K, B).

    The members keep their own parameters (and optimisers); the forward stacks them along a
    leading member axis so that every layer is one batched matrix product."""

    def __init__(self, members: Sequence[EncoderClassifier]) -> None:
        super().__init__()
        if not members:
            raise ValueError("EncoderEnsemble needs at least one member")
        if len({m.cfg for m in members}) != 1:
            raise ValueError("EncoderEnsemble members must share one EncoderConfig")
        self.members = nn.ModuleList(members)

    def forward(self, batch: Padded | Packed) -> torch.Tensor:
        return ensemble_logits(list(self.members), batch, training=self.training)


# --------------------------------------------------------------------------- the forward


class _Stacked:
    """The members' parameters by name; ``[name]`` stacks them on a new leading axis (a view
    when K = 1) and gives None for a parameter the architecture does not have (a bias)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        self.params = [dict(m.named_parameters()) for m in members]

    def __getitem__(self, name: str) -> torch.Tensor | None:
        if name not in self.params[0]:
            return None
        if len(self.params) == 1:
            return self.params[0][name].unsqueeze(0)
        return torch.stack([p[name] for p in self.params])


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (K, M, in) · w(K, out, in)ᵀ (+ b): member k's rows times member k's weight."""
    y = torch.matmul(x, w.transpose(-1, -2))
    return y if b is None else y + b.unsqueeze(1)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """LN(x) = (x − mean)/√(var + 1e-5) · w (+ b), per member's w and b."""
    y = F.layer_norm(x, x.shape[-1:]) * w.unsqueeze(1)
    return y if b is None else y + b.unsqueeze(1)


def _embed(members: Sequence[EncoderClassifier], batch: Padded | Packed) -> torch.Tensor:
    """Token + position embeddings, (K, M, C) with M = B·T (padded) or N (packed)."""
    rows = []
    for k, m in enumerate(members):
        if isinstance(batch, Packed):
            ids, pos = batch.ids[k], batch.pos[k]
        else:
            ids = batch.ids if batch.ids.dim() == 2 else batch.ids[k]
            pos = torch.arange(ids.shape[-1], device=ids.device)
        rows.append((F.embedding(ids, m.tok_emb.weight) + F.embedding(pos, m.pos_emb.weight)).flatten(0, -2))
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


def _attention(x: torch.Tensor, w: dict, batch: Padded | Packed, keep: torch.Tensor | None, H: int, p: float,
               training: bool, explicit: bool, probs_out: list | None, dropout_impl: str) -> torch.Tensor:
    """Multi-head self-attention of every member: (K, M, C) → (K, M, C), before W_O; a packed
    batch with an ``attn_index`` (hybrid layout) runs it on its grid of padded reviews."""
    K, M, C = x.shape
    d = C // H
    qkv = _linear(x, w["qkv"], w.get("qkv_b"))
    if isinstance(batch, Packed):
        flat = qkv.reshape(K * M, 3 * C)
        if batch.real is not None:
            flat = flat.index_select(0, batch.real)
        if batch.attn_index is not None:
            where, keep2 = batch.attn_index, batch.attn_keep
            KB, T = keep2.shape
            padded = flat.new_zeros(KB * T, 3 * C).index_copy(0, where, flat)
            y = _padded_attention(padded.view(1, KB * T, 3 * C), keep2, 1, KB, T, H, d, p, training, explicit,
                                  None, dropout_impl)
            y = y.reshape(KB * T, C).index_select(0, where)
        else:
            q, k_, v = flat.view(-1, 3, H, d).movedim(1, 0).contiguous().unbind(0)
            y = jagged_attention(q, k_, v, batch.cu, batch.max_seqlen, p if training else 0.0).reshape(-1, C)
        if batch.real is not None:
            y = y.new_zeros(K * M, C).index_copy(0, batch.real, y)
        return y.view(K, M, C)
    T = keep.shape[-1]
    B = M // T
    return _padded_attention(qkv, keep.reshape(K * B, T), K, B, T, H, d, p, training, explicit, probs_out,
                             dropout_impl)


def _padded_attention(qkv: torch.Tensor, keep2: torch.Tensor, K: int, B: int, T: int, H: int, d: int, p: float,
                      training: bool, explicit: bool, probs_out: list | None, dropout_impl: str) -> torch.Tensor:
    """Attention of padded reviews: qkv (K, B·T, 3C), key mask (K·B, T) → (K, B·T, C)."""
    C = H * d
    q, k_, v = (t.reshape(K * B, T, H, d).transpose(1, 2) for t in qkv.split(C, dim=-1))
    # torch's attention kernels draw their own dropout masks: the counter-based dropout of the
    # probabilities goes through the explicit softmax (what SDPA's CPU math path computes anyway)
    if explicit or probs_out is not None or (dropout_impl != "torch" and training and p > 0):
        y, probs = explicit_attention(q, k_, v, keep2, p, training, return_probs=True, dropout_impl=dropout_impl)
        if probs_out is not None:
            probs_out.append(probs.view(K, B, H, T, T)[0] if K == 1 else probs.view(K, B, H, T, T))
    else:
        y = F.scaled_dot_product_attention(q, k_, v, attn_mask=keep2[:, None, None, :],
                                           dropout_p=p if training else 0.0)
    return y.transpose(1, 2).reshape(K, B * T, C)


def _keep(batch: Padded, K: int) -> torch.Tensor:
    keep = key_padding_mask(batch.ids) if batch.keep is None else batch.keep
    return keep.expand(K, *keep.shape) if keep.dim() == 2 else keep


def ensemble_logits(members: Sequence[EncoderClassifier], batch: Padded | Packed, *, training: bool,
                    probs_out: list | None = None) -> torch.Tensor:
    """Logits (K, B) of K same-architecture classifiers on their inputs (see the module docstring).

    Member k's arithmetic touches only member k's parameters and inputs: the stacked matrix
    products, layer norms and per-review attention never mix members, so the gradient of
    Σ_k loss_k with respect to member k's parameters is the gradient of loss_k alone.
    ``probs_out`` (padded layout) collects each block's attention probabilities.
    """
    cfg = members[0].cfg
    K, H, p, impl = len(members), cfg.n_heads, cfg.dropout, cfg.dropout_impl
    if isinstance(batch, Packed):
        if probs_out is not None:
            raise ValueError("attention probabilities need the padded layout")
        if batch.attn_index is None and (cfg.attn_impl == "explicit" or (impl != "torch" and training and p > 0)):
            raise ValueError("the packed (padding-free) layout with jagged attention needs attn_impl='sdpa' and, "
                             "in training with dropout, dropout_impl='torch' (or the hybrid layout)")
        keep, (_, B), T = None, batch.shape, None
    else:
        keep = _keep(batch, K)
        T = keep.shape[-1]
        B = keep.shape[-2]
        if T > cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_len {cfg.max_len}")
    P = _Stacked(members)
    x = _embed(members, batch)
    for i in range(cfg.n_blocks):
        pre = f"blocks.{i}."
        w = {"qkv": P[pre + "attn.qkv.weight"], "qkv_b": P[pre + "attn.qkv.bias"]}
        ln1, ln2 = (P[pre + "ln1.weight"], P[pre + "ln1.bias"]), (P[pre + "ln2.weight"], P[pre + "ln2.bias"])
        proj = (P[pre + "attn.proj.weight"], P[pre + "attn.proj.bias"])
        fc1, fc2 = (P[pre + "mlp.fc1.weight"], P[pre + "mlp.fc1.bias"]), (P[pre + "mlp.fc2.weight"], P[pre + "mlp.fc2.bias"])

        def attn(h):
            a = _attention(h, w, batch, keep, H, p, training, cfg.attn_impl == "explicit", probs_out, impl)
            return dropout(_linear(a, *proj), p, training, impl)

        def mlp(h):
            return dropout(_linear(F.gelu(_linear(h, *fc1)), *fc2), p, training, impl)

        if cfg.norm == "pre":
            x = x + attn(_layer_norm(x, *ln1))
            x = x + mlp(_layer_norm(x, *ln2))
        else:
            x = _layer_norm(x + attn(x), *ln1)
            x = _layer_norm(x + mlp(x), *ln2)
    if cfg.norm == "pre":
        x = _layer_norm(x, P["ln_f.weight"], P["ln_f.bias"])
    pooled = _pool(x, batch, keep, cfg.pool, K, B, T)
    return _linear(pooled, P["head.weight"], P["head.bias"]).squeeze(-1)


def _pool(x: torch.Tensor, batch: Padded | Packed, keep: torch.Tensor | None, pool: str, K: int, B: int,
          T: int | None) -> torch.Tensor:
    """(K, B, C): the [CLS] position, or the mean over each review's real tokens."""
    C = x.shape[-1]
    if isinstance(batch, Packed):
        M = x.shape[1]
        flat = x.reshape(K * M, C)
        if pool == "cls":
            base = torch.arange(K, device=x.device).unsqueeze(1) * M
            return flat[(batch.cls + base).flatten()].view(K, B, C)
        doc = torch.repeat_interleave(torch.arange(K * B, device=x.device), batch.lengths.flatten(),
                                      output_size=batch.n_real)
        tokens = flat if batch.real is None else flat.index_select(0, batch.real)
        sums = tokens.new_zeros(K * B, C).index_add_(0, doc, tokens)
        return (sums / batch.lengths.flatten().clamp_min(1).unsqueeze(1).to(sums.dtype)).view(K, B, C)
    x = x.view(K, B, T, C)
    if pool == "cls":
        return x[:, :, 0]
    wgt = keep.to(x.dtype).unsqueeze(-1)
    return (x * wgt).sum(2) / wgt.sum(2).clamp_min(1.0)


__all__ = ["EncoderConfig", "EncoderClassifier", "EncoderEnsemble", "Padded", "Packed", "PAPER_SIZES",
           "ensemble_logits", "explicit_attention", "jagged_attention", "key_padding_mask"]

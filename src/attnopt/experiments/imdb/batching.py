"""Batches of reviews for the encoder: padded (to the batch's longest review or to max_len) or
packed (padding-free), for K ensemble members at once, and length-sorted evaluation batches.

A split lives on the device as one padded id matrix; the review lengths are also kept on
the host, so every size a batch needs (its width, its token count) is known without waiting
for the device, and the index tensors of a packed batch are built by a few vectorised
device operations (no Python loop over reviews).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from attnopt.data.reviews import TokenizedSplit
from attnopt.models.encoder import Packed, Padded


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


class DeviceSplit:
    """A tokenised split held on the device: ids (N, L) int32, labels float; lengths on both sides."""

    def __init__(self, split: TokenizedSplit, device: torch.device) -> None:
        self.ids = torch.from_numpy(np.ascontiguousarray(split.ids, dtype=np.int32)).to(device)
        self.labels = torch.from_numpy(split.labels.astype(np.float32)).to(device)
        self.lengths = torch.from_numpy(split.lengths.astype(np.int64))
        self.lengths_dev = self.lengths.to(device)
        self.n = len(split)
        self.max_len = split.max_len
        self.device = device

    def batch(self, idx: torch.Tensor, pad: str, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, W), labels (B,)) of the reviews ``idx`` (a host tensor), padded to W."""
        width = self.width([idx], pad, multiple)
        dev_idx = idx.to(self.device, non_blocking=True)
        return self.ids[dev_idx, :width], self.labels[dev_idx]

    def width(self, idx: Sequence[torch.Tensor], pad: str, multiple: int) -> int:
        if pad == "max":
            return self.max_len
        longest = max((int(self.lengths[i].max()) if len(i) else 1) for i in idx)
        return min(self.max_len, round_up(longest, multiple))


def padded_batch(split: DeviceSplit, idx: Sequence[torch.Tensor], pad: str,
                 multiple: int) -> tuple[Padded, torch.Tensor]:
    """Member k's reviews ``idx[k]`` (equal counts) as (K, B, W) ids padded to one width W."""
    width = split.width(idx, pad, multiple)
    dev = torch.stack(list(idx)).to(split.device, non_blocking=True)
    return Padded(split.ids[dev, :width]), split.labels[dev]


def packed_batch(split: DeviceSplit, idx: Sequence[torch.Tensor], multiple: int,
                 padded_attention: bool = False) -> tuple[Packed, torch.Tensor]:
    """Member k's reviews ``idx[k]`` back to back in row k of a (K, N) token stream.

    N is the longest member's token count rounded up to ``multiple`` (few distinct shapes for
    compiled code).  Position ids restart at every review; ``cu`` delimits the reviews in the
    stream of real tokens (member after member), which is what the jagged attention reads.
    ``padded_attention`` (the ``hybrid`` layout): attention instead runs on the reviews padded
    to the longest one of every member's batch, rounded up to ``multiple`` (``Packed.attn_width``);
    the grid's index and key mask come from the same review / position tensors as the stream.
    """
    K, B = len(idx), len(idx[0])
    lens_host = torch.stack([split.lengths[i] for i in idx])              # (K, B) on the host
    per_member = lens_host.sum(1)                                          # (K,)
    n_real = int(per_member.sum())
    N = round_up(int(per_member.max()), multiple)
    dev = split.device
    rows = torch.stack(list(idx)).to(dev, non_blocking=True)               # (K, B) review numbers
    lens = lens_host.to(dev, non_blocking=True)
    flat_lens = lens.flatten()
    cu = torch.zeros(K * B + 1, dtype=torch.int64, device=dev)
    torch.cumsum(flat_lens, 0, out=cu[1:])
    doc = torch.repeat_interleave(torch.arange(K * B, device=dev), flat_lens, output_size=n_real)
    t = torch.arange(n_real, device=dev)
    pos = t - cu[doc]                                                      # position within the review
    tokens = split.ids[rows.flatten()[doc], pos]
    starts = lens.cumsum(1) - lens                                         # (K, B) first position per row
    labels = split.labels[rows]
    grid = (None, None)
    if padded_attention:
        width = min(split.max_len, round_up(int(lens_host.max()), multiple))
        grid = (doc * width + pos, torch.arange(width, device=dev) < flat_lens.unsqueeze(1))
    if K == 1 and N == n_real:
        return Packed(tokens.unsqueeze(0), pos.unsqueeze(0), cu, None, starts, lens, split.max_len, n_real,
                      *grid), labels
    member_start = torch.zeros(K, dtype=torch.int64)
    member_start[1:] = per_member.cumsum(0)[:-1]
    member = doc // B
    real = member * N + (t - member_start.to(dev, non_blocking=True)[member])
    ids = torch.zeros(K * N, dtype=tokens.dtype, device=dev).index_copy_(0, real, tokens)
    pos_full = torch.zeros(K * N, dtype=pos.dtype, device=dev).index_copy_(0, real, pos)
    return Packed(ids.view(K, N), pos_full.view(K, N), cu, real, starts, lens, split.max_len, n_real,
                  *grid), labels


def member_batch(split: DeviceSplit, idx: Sequence[torch.Tensor], pad: str, multiple: int):
    """``packed_batch`` for ``pad="none"`` or ``"hybrid"``, else ``padded_batch``."""
    if pad in ("none", "hybrid"):
        return packed_batch(split, idx, multiple, padded_attention=pad == "hybrid")
    return padded_batch(split, idx, pad, multiple)


def eval_batches(split: DeviceSplit, batch_size: int, multiple: int, rank: int = 0,
                 world: int = 1) -> Iterator[tuple[Padded, torch.Tensor]]:
    """Length-sorted evaluation batches (longest first), each padded only to its own longest
    review: (shared ids (B, W) for every member, labels (B,)).  With torchrun each process
    takes every ``world``-th review of the sorted order."""
    order = torch.argsort(split.lengths, descending=True, stable=True)[rank::world]
    for b in range(0, len(order), batch_size):
        ids, y = split.batch(order[b:b + batch_size], "dynamic", multiple)
        yield Padded(ids), y


__all__ = ["DeviceSplit", "padded_batch", "packed_batch", "member_batch", "eval_batches", "round_up"]

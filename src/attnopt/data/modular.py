"""Modular division data: all equations ``a / b = c`` with ``c = a · b⁻¹ mod p``, ``b ≠ 0``.

Tokens: the residues ``0 … p−1``, then ``/`` (id ``p``) and ``=`` (id ``p+1``); a sequence is
``[a, /, b, =]`` and the target is ``c``.  For ``p = 97`` there are ``97 · 96 = 9,312``
equations.  :func:`split_equations` draws a seeded train/test split by fraction.
"""

from __future__ import annotations

import dataclasses
import numbers

import torch

from attnopt.errors import UserError


class ModularDataError(UserError, ValueError):
    """Arguments the modular-division data cannot be built from (a modulus that is not prime,
    a train fraction outside (0, 1))."""


def is_prime(p: int) -> bool:
    """Whether the integer ``p`` is prime (trial division; moduli here are small)."""
    if p < 2:
        return False
    k = 2
    while k * k <= p:
        if p % k == 0:
            return False
        k += 1
    return True


@dataclasses.dataclass
class ModularData:
    """``tokens (E, 4)`` long, ``labels (E,)`` long, ``p``; ``train_idx``/``test_idx`` index rows."""

    tokens: torch.Tensor
    labels: torch.Tensor
    p: int
    train_idx: torch.Tensor
    test_idx: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return self.p + 2

    @property
    def num_equations(self) -> int:
        return self.tokens.shape[0]


def division_equations(p: int = 97) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(a, b)`` with ``b ≠ 0``: ``tokens (p(p−1), 4)``, ``labels (p(p−1),)``."""
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or not is_prime(int(p)):
        raise ModularDataError(f"modulus p must be prime (division needs inverses), got {p}")
    p = int(p)
    a = torch.arange(p).repeat_interleave(p - 1)
    b = torch.arange(1, p).repeat(p)
    inv = torch.tensor([pow(int(x), p - 2, p) for x in range(1, p)])  # Fermat: b^(p-2) = b^-1
    c = (a * inv[b - 1]) % p
    tokens = torch.stack([a, torch.full_like(a, p), b, torch.full_like(a, p + 1)], dim=1)
    return tokens, c


def split_equations(p: int = 97, train_fraction: float = 0.5, seed: int = 0) -> ModularData:
    """Seeded random split of all equations; ``0 < train_fraction < 1``."""
    if not 0.0 < train_fraction < 1.0:
        raise ModularDataError(f"train_fraction must be in (0, 1), got {train_fraction}")
    tokens, labels = division_equations(p)
    E = tokens.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(E, generator=g)
    k = max(1, min(E - 1, int(round(train_fraction * E))))
    return ModularData(tokens=tokens, labels=labels, p=p, train_idx=perm[:k].sort().values,
                       test_idx=perm[k:].sort().values)

"""A CIFAR-10-format folder for the vision tests (the real data set cannot be downloaded here)."""

from __future__ import annotations

import pickle

import numpy as np

from attnopt.data.vision import CIFAR_TEST, CIFAR_TRAIN


def write_cifar(folder, n=4, labels=None, data=None, skip=()):
    """CIFAR-10 python batches of ``n`` random images each (batch i holds labels (i + j) % 10)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i, name in enumerate(CIFAR_TRAIN + (CIFAR_TEST,)):
        if name in skip:
            continue
        d = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8) if data is None else data
        lab = [(i + j) % 10 for j in range(n)] if labels is None else labels
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": b"fixture", b"data": d, b"labels": lab}, fh, protocol=2)
    return folder

"""E6 data: scikit-learn's digits, CIFAR-10 python batches (a fixture written here), and the
one-line DataError for absent, incomplete, malformed or tampered batches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from vision_cifar_fixture import write_cifar

from attnopt.data.vision import CIFAR_TEST, CIFAR_TRAIN, load_cifar10, load_digits_splits, load_images
from attnopt.errors import UserError


def test_digits_splits_cover_the_set():
    tr, te = load_digits_splits(0.2, seed=0)
    assert tr.images.shape[1:] == (1, 8, 8) and tr.images.dtype == np.uint8
    assert len(tr) + len(te) == 1797 and len(te) == 359
    assert set(np.unique(tr.labels)) == set(range(10)) and tr.images.max() == 16
    d = load_images("digits", val_fraction=0.1, data_seed=0)
    assert d.sizes() == {"train": 1294, "val": 144, "test": 359} and d.scale == 16.0
    assert d.mean.shape == (1,) and 0 < d.mean[0] < 1


def test_cifar_fixture_layout_and_split(tmp_path):
    root = write_cifar(tmp_path / "c", n=4)
    train, test = load_cifar10(root)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    with open(root / CIFAR_TRAIN[0], "rb") as fh:
        raw = pickle.load(fh)[b"data"]
    # rows are channel-major: 1024 red, 1024 green, 1024 blue, each row by row
    assert train.images[0, 1, 0, 0] == raw[0, 1024] and train.images[0, 2, 31, 31] == raw[0, 3071]
    d = load_images("cifar10", root, val_fraction=0.1, data_seed=3)
    assert d.sizes() == {"train": 18, "val": 2, "test": 4} and d.scale == 255.0
    # the batches inside the usual subfolder are found too
    sub = write_cifar(tmp_path / "d" / "cifar-10-batches-py")
    assert len(load_cifar10(tmp_path / "d")[1]) == 4


@pytest.mark.parametrize("case,needle", [
    ("absent", "CIFAR-10 not found"),
    ("incomplete", "missing data_batch_3"),
    ("label", "labels must be 0–9"),
    ("shape", "shape (N, 3072)"),
    ("count", "labels of shape"),
    ("garbage", "not a CIFAR-10 python batch"),
    ("evil", "refusing to load"),
    ("none", "needs --data"),
])
def test_bad_cifar_is_one_line_user_error(tmp_path, case, needle):
    root = tmp_path / "c"
    if case == "incomplete":
        write_cifar(root, skip=("data_batch_3",))
    elif case == "label":
        write_cifar(root, labels=[0, 1, 2, 10])
    elif case == "shape":
        write_cifar(root, data=np.zeros((4, 1024), np.uint8))
    elif case == "count":
        write_cifar(root, labels=[0, 1])
    elif case in ("garbage", "evil"):
        write_cifar(root)
        if case == "garbage":
            (root / CIFAR_TEST).write_bytes(b"not a pickle at all")
        else:  # a pickle that would call os.system when loaded by pickle.load
            (root / CIFAR_TEST).write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(UserError) as exc:
        load_images("cifar10", None if case == "none" else root)
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg, msg
    assert not (tmp_path / "pwned").exists()

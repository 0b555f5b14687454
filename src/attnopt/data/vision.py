"""Image classification data for the E6 ViT experiment: CIFAR-10 from its python batches, and
scikit-learn's bundled 8×8 digits (offline).

Images are kept as uint8 arrays (N, C, H, W) with int64 labels; :attr:`ImageData.mean` /
:attr:`ImageData.std` are per-channel statistics of the training split (pixel scale 0–1),
used by the experiment to standardise inputs.

CIFAR-10 (``data_batch_1`` … ``data_batch_5``, ``test_batch`` under the folder given, or its
``cifar-10-batches-py`` subfolder): each batch is a pickle of a dict with ``b"data"``
(10000 × 3072 uint8, channel-major rows of 32 × 32) and ``b"labels"``.  A pickle can run code
when loaded; :class:`_ArrayUnpickler` refuses every global except the handful numpy needs to
rebuild an array, so a tampered batch fails with :class:`DataError` instead of running.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnopt.data.shared import DataError

CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_SUBFOLDER = "cifar-10-batches-py"
DATASETS = ("cifar10", "digits")

#: the only globals a CIFAR batch may reference (numpy's array reconstruction)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


@dataclass
class ImageSplit:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ImageData:
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    mean: np.ndarray  # (C,) on the 0–1 pixel scale, from the training split
    std: np.ndarray
    scale: float      # pixel value of full intensity (255 for CIFAR, 16 for digits)
    classes: int = 10
    meta: dict = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds builtins and numpy arrays and refuses any other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = path.read_bytes()
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # any unpickling failure: the file is not a CIFAR batch
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (holds a {type(obj).__name__}, not a dict)")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {what}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0–9, found {int(labels.min())}..{int(labels.max())}")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10_folder(root: str | os.PathLike) -> Path:
    """The folder holding the CIFAR-10 batches: ``root`` or ``root/cifar-10-batches-py``."""
    root = Path(root)
    for folder in (root, root / CIFAR_SUBFOLDER):
        if (folder / CIFAR_TEST).is_file():
            return folder
    raise DataError(f"CIFAR-10 not found at {root}: expected the python batches {', '.join(CIFAR_TRAIN)}, "
                    f"{CIFAR_TEST} there or in {root / CIFAR_SUBFOLDER} (pass --data)")


def load_cifar10(root: str | os.PathLike) -> tuple[ImageSplit, ImageSplit]:
    """(train, test) from the CIFAR-10 python batches under ``root`` (checked; see module doc)."""
    folder = cifar10_folder(root)
    missing = [n for n in CIFAR_TRAIN if not (folder / n).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 at {folder} is incomplete: missing {', '.join(missing)}")
    parts = [_read_batch(folder / n) for n in CIFAR_TRAIN]
    test = ImageSplit(*_read_batch(folder / CIFAR_TEST))
    train = ImageSplit(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, test


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """scikit-learn's 8×8 digits (1,797 images, values 0–16), split into (train, test) by a
    seeded permutation (``test_fraction`` of the images are test)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("--dataset digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    images = d.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = d.target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    te, tr = order[:n_test], order[n_test:]
    return ImageSplit(images[tr], labels[tr]), ImageSplit(images[te], labels[te])


def load_images(dataset: str, root: str | os.PathLike | None = None, *, val_fraction: float = 0.1,
                data_seed: int = 0, subset: int | None = None) -> ImageData:
    """Train / validation / test splits of ``dataset`` ("cifar10" or "digits").

    The validation split is the last ``val_fraction`` of a seeded permutation of the training
    images (``data_seed``); ``subset`` keeps only that many training images (after the split).
    ``root`` is the CIFAR-10 folder (required for cifar10; unused for digits).
    """
    if dataset == "cifar10":
        if root is None:
            raise DataError("--dataset cifar10 needs --data: the folder of the CIFAR-10 python batches")
        train, test = load_cifar10(root)
        scale = 255.0
    elif dataset == "digits":
        train, test = load_digits_splits(seed=data_seed)
        scale = 16.0
    else:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    order = np.random.RandomState(data_seed).permutation(len(train))
    n_val = int(round(val_fraction * len(train)))
    tr, va = order[:len(order) - n_val], order[len(order) - n_val:]
    if subset is not None:
        tr = tr[:subset]
    train, val = ImageSplit(train.images[tr], train.labels[tr]), ImageSplit(train.images[va], train.labels[va])
    if len(train) == 0:
        raise DataError(f"{dataset}: the training split is empty")
    pix = train.images.astype(np.float64) / scale
    mean, std = pix.mean(axis=(0, 2, 3)), pix.std(axis=(0, 2, 3))
    return ImageData(train, val, test, mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32), scale,
                     meta={"dataset": dataset, "root": None if root is None else str(root)})


__all__ = ["ImageData", "ImageSplit", "load_images", "load_cifar10", "load_digits_splits", "cifar10_folder",
           "DATASETS", "DataError"]

"""E6 configuration: the ViT, the optimiser and the training protocol of one ``vision train``.

The defaults are the authors' CIFAR-10 setting (48 px, patch 4, width 512, depth 6, 8 heads,
MLP 512, dropout 0.1, mean cross-entropy, batch 100, 1,000 epochs, ℓ1.1 mirror descent with
lr 5e-2 not normalised; Adam lr 1e-4).  ``seeds`` lists the members; ``ensemble`` trains them
together as one batched model (:class:`attnopt.models.vit.EnsembleViT`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnopt.config import (ConfigMixin, check_bool, check_choice, check_float, check_int, check_p, check_seeds,
                            check_sequence, config_error)
from attnopt.data.vision import DATASETS
from attnopt.models.vit import ViTConfig

OPTIMIZERS = ("md", "adam", "adamw", "sgd")
#: training-image augmentations: random crops after zero padding by ``crop_pad``, left-right flips
AUGMENTATIONS = ("none", "crop", "flip", "crop-flip")
#: default learning rates: MD and Adam are the paper's E6 values; AdamW takes Adam's with
#: weight decay 0.01; SGD-momentum's 1e-2 (momentum 0.9, mean loss) is our choice, not the paper's.
DEFAULT_LR = {"md": 5e-2, "adam": 1e-4, "adamw": 1e-4, "sgd": 1e-2}
#: image side per dataset when ``image_size`` is not given (CIFAR-10 is resized 32 → 48, as the authors did)
DEFAULT_IMAGE_SIZE = {"cifar10": 48, "digits": 8}
CHANNELS = {"cifar10": 3, "digits": 1}
#: the paper's E4 |w| threshold, reused for the ViT's Q/K/V counts
THRESHOLD = 0.06
PRUNE_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def _label(optimizer: str, p: float, normalize: bool) -> str:
    if optimizer == "md":
        return f"ℓ{p:g}-MD" + (" (normalised)" if normalize else "")
    return {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD-momentum"}[optimizer]


@dataclass(frozen=True)
class VisionConfig(ConfigMixin):
    # data
    dataset: str = "cifar10"
    data_dir: str | None = None
    val_fraction: float = 0.1
    data_seed: int = 0
    subset: int | None = None
    augment: str = "none"
    crop_pad: int = 4
    # model
    image_size: int | None = None
    patch: int = 4
    width: int = 512
    depth: int = 6
    heads: int = 8
    mlp: int = 512
    dropout: float = 0.1
    # optimisation
    optimizer: str = "md"
    p: float = 1.1
    lr: float | None = None
    md_normalize: bool = False
    momentum: float = 0.9
    weight_decay: float | None = None
    batch_size: int = 100
    epochs: int = 1000
    # members and execution
    seeds: tuple[int, ...] = (0,)
    ensemble: bool = True
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    eval_batch_size: int = 500
    # analysis
    threshold: float = THRESHOLD
    near_zero: float = 1e-3
    prune_levels: tuple[float, ...] = PRUNE_LEVELS

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("dataset", check_choice(self, "dataset", self.dataset, DATASETS))
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            s("data_dir", str(self.data_dir))
        if self.data_dir is not None and self.dataset == "digits":
            raise config_error(self, "data_dir is only read for dataset cifar10 (digits ships with scikit-learn); "
                                     "drop --data")
        s("val_fraction", check_float(self, "val_fraction", self.val_fraction, ge=0.0, lt=1.0))
        s("data_seed", check_int(self, "data_seed", self.data_seed, 0))
        if self.subset is not None:
            s("subset", check_int(self, "subset", self.subset, 1))
        s("augment", check_choice(self, "augment", self.augment, AUGMENTATIONS))
        s("crop_pad", check_int(self, "crop_pad", self.crop_pad, 0))
        if self.image_size is not None:
            s("image_size", check_int(self, "image_size", self.image_size, 1))
        s("optimizer", check_choice(self, "optimizer", str(self.optimizer).lower(), OPTIMIZERS))
        s("p", check_p(self, "p", self.p))
        if self.lr is not None:
            s("lr", check_float(self, "lr", self.lr, gt=0.0))
        s("md_normalize", check_bool(self, "md_normalize", self.md_normalize))
        s("momentum", check_float(self, "momentum", self.momentum, ge=0.0, lt=1.0))
        if self.weight_decay is not None:
            s("weight_decay", check_float(self, "weight_decay", self.weight_decay, ge=0.0))
        for k in ("batch_size", "epochs", "eval_batch_size"):
            s(k, check_int(self, k, getattr(self, k), 1))
        s("seeds", check_seeds(self, "seeds", self.seeds))
        s("ensemble", check_bool(self, "ensemble", self.ensemble))
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or self.device.startswith("cuda:")):
            raise config_error(self, f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        s("precision", check_choice(self, "precision", self.precision, ("auto", "fp32", "bf16")))
        if self.threads is not None:
            s("threads", check_int(self, "threads", self.threads, 1))
        s("threshold", check_float(self, "threshold", self.threshold, gt=0.0))
        s("near_zero", check_float(self, "near_zero", self.near_zero, gt=0.0))
        s("prune_levels", check_sequence(self, "prune_levels", self.prune_levels,
                                         lambda o, n, v: check_float(o, n, v, ge=0.0, lt=1.0)))
        self.model_config()  # validates the model fields together

    def model_config(self) -> ViTConfig:
        return ViTConfig(image_size=self.image_size or DEFAULT_IMAGE_SIZE[self.dataset],
                         channels=CHANNELS[self.dataset], patch=self.patch, width=self.width, depth=self.depth,
                         heads=self.heads, mlp=self.mlp, classes=10, dropout=self.dropout)

    def resolved_lr(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 0.01 if self.optimizer == "adamw" else 0.0

    def label(self) -> str:
        return _label(self.optimizer, self.p, self.md_normalize)

    def member(self, seed: int) -> "VisionConfig":
        """The configuration of the single run of ``seed`` (what its own run folder records)."""
        return self.replace(seeds=(int(seed),))

    def batched_members(self) -> bool:
        """Whether members may share one batched model: every optimiser here acts entry by
        entry except normalised MD (it divides by each tensor's ℓq norm, which would mix members)."""
        return self.ensemble and len(self.seeds) > 1 and not (self.optimizer == "md" and self.md_normalize)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


__all__ = ["VisionConfig", "OPTIMIZERS", "AUGMENTATIONS", "DEFAULT_LR", "DEFAULT_IMAGE_SIZE", "THRESHOLD",
           "PRUNE_LEVELS",
           "steps_per_epoch"]

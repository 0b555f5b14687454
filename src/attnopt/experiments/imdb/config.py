"""The configuration of an IMDB / SST-2 training run (E3, E6) and of a seed ensemble.

Two protocols (``protocol``):

* ``honest`` (default): train on the 20,000 reviews of the official train split outside the
  fixed 5,000-review validation subset, select the epoch on validation accuracy and report
  the test accuracy there (and, labelled, the paper's best-over-epochs number); every seed
  has its own initialisation; bf16 autocast on a GPU.
* ``paper`` — the authors' code (GitHub aaronk2002/AttentionMD, ``real-data/train.py``):
  train on all 25,000 train reviews (no held-out validation), float32 weights and activations
  (TF32 matmuls on a GPU), one shared initialisation for every trial (``init_seed``; the
  authors deep-copy one initial model, so their ± is over data order and dropout only), the
  loss ``BCELoss(reduction="sum")`` on ``sigmoid(logit)`` (``loss="authors"``), and the best
  test accuracy over epochs as the headline number.

Fields left at None (``val_in_train``, ``init_seed``, ``loss``) and ``precision="auto"`` follow
the protocol; the ``resolved_*`` methods give the values a run uses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from attnopt.config import (ConfigError, ConfigMixin, check_bool, check_choice, check_float, check_int,
                            config_error)
from attnopt.data.reviews import check_dataset
from attnopt.models.encoder import EncoderConfig

OPTIMIZERS = ("md", "adam", "adamw", "sgd")
PROTOCOLS = ("honest", "paper")
LOSSES = ("bce", "authors")
PADS = ("auto", "none", "hybrid", "dynamic", "max")

#: The paper's learning rates for plain ℓp mirror descent on IMDB, by p and model size.
PAPER_LR: dict[float, dict[int, float]] = {
    1.1: {3: 8e-4, 4: 6e-4, 6: 1e-3},
    2.0: {3: 4e-4, 4: 4e-4, 6: 1e-3},
    3.0: {3: 4e-6, 4: 6e-6, 6: 1e-5},
}
#: Baseline learning rates.  Adam's 1e-4 is the paper's ViT setting (E6); AdamW uses the
#: same with weight decay 0.01; the SGD-momentum rate (momentum 0.9, summed loss) is our
#: choice, scaled so that its effective step matches ℓ2-MD's 4e-4 — not from the paper.
BASELINE_LR = {"adam": 1e-4, "adamw": 1e-4, "sgd": 4e-5}

#: The paper's E3 table: (best test acc mean, std, last-epoch test acc, epochs to stop), in %.
PAPER_E3: dict[tuple[float, int], tuple[float, float, float, int]] = {
    (1.1, 3): (83.47, 0.09, 82.57, 72), (1.1, 4): (83.36, 0.13, 82.93, 87), (1.1, 6): (82.57, 0.15, 78.07, 150),
    (2.0, 3): (81.66, 0.09, 80.61, 80), (2.0, 4): (81.05, 0.17, 79.97, 88), (2.0, 6): (81.03, 0.18, 80.11, 58),
    (3.0, 3): (82.57, 0.10, 81.33, 162), (3.0, 4): (82.40, 0.12, 80.91, 135), (3.0, 6): (80.65, 0.13, 79.47, 95),
}

#: Config fields that may change when a run is resumed (they do not change the arithmetic
#: on CPU, or only change where/how fast it runs, or how long it goes on).
RESUME_MUTABLE = frozenset({"max_epochs", "device", "compile", "eval_batch_size", "nan_check_every",
                            "checkpoint_every", "md_impl", "md_nonfinite"})

#: Fields in which the members of one ensemble may differ (everything else — data, model,
#: batching, precision — is shared, since the members run in one forward pass).
MEMBER_FIELDS = frozenset({"seed", "init_seed", "optimizer", "p", "lr", "momentum", "weight_decay", "md_normalize",
                           "md_impl", "md_nonfinite", "max_epochs", "target_train_acc"})


class NoDefaultLearningRate(ConfigError):
    """Mirror descent with a (p, size) the paper's table does not cover and no ``lr``."""


@dataclass
class TrainConfig(ConfigMixin):
    # protocol
    protocol: str = "honest"
    # data
    dataset: str = "imdb"
    max_len: int = 512
    subset: int | None = None
    eval_subset: int | None = None
    final_test: int | None = None
    data_seed: int = 0
    val_in_train: bool | None = None
    clean_html: bool = False
    # model (n_blocks / n_heads default to ``size``)
    size: int = 3
    n_blocks: int | None = None
    n_heads: int | None = None
    n_embd: int = 384
    n_hidden: int = 1536
    dropout: float = 0.2
    norm: str = "post"
    pool: str = "cls"
    attn_impl: str = "sdpa"
    dropout_impl: str = "torch"
    # optimisation
    optimizer: str = "md"
    p: float = 1.1
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    md_normalize: bool = False
    md_impl: str = "auto"
    md_nonfinite: str = "auto"
    batch_size: int = 100
    loss: str | None = None
    loss_reduction: str = "sum"
    max_epochs: int = 1000
    target_train_acc: float = 0.995
    seed: int = 0
    init_seed: int | None = None
    # execution
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    pad: str = "auto"
    pad_multiple: int = 8
    eval_batch_size: int = 500
    nan_check_every: int = 20
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        self.protocol = check_choice(self, "protocol", str(self.protocol).lower(), PROTOCOLS)
        try:
            self.dataset = check_dataset(self.dataset)
        except ValueError as exc:
            raise config_error(self, f"dataset: {exc}") from None
        opt = str(self.optimizer).lower().replace("-", "").replace("_", "")
        opt = "sgd" if opt in ("sgdm", "sgdmomentum") else opt
        if opt not in OPTIMIZERS:
            raise config_error(self, f"optimizer: unknown optimizer {self.optimizer!r}; choose one of "
                                     f"{', '.join(OPTIMIZERS)}")
        self.optimizer = opt
        self.p = check_float(self, "p", self.p)
        if self.optimizer == "md" and self.p <= 1.0:
            raise config_error(self, f"p: mirror descent needs p > 1, got p={self.p:g}")
        if self.val_in_train is not None:
            check_bool(self, "val_in_train", self.val_in_train)
        if self.protocol == "paper" and self.val_in_train is False:
            raise config_error(self, "val_in_train: the paper protocol trains on train + validation "
                                     "(25,000 reviews); leave val_in_train unset")
        for name in ("clean_html", "md_normalize", "compile"):
            check_bool(self, name, getattr(self, name))
        if self.loss is not None:
            check_choice(self, "loss", self.loss, LOSSES)
        check_choice(self, "loss_reduction", self.loss_reduction, ("sum", "mean"))
        check_choice(self, "precision", self.precision, ("auto", "fp32", "bf16"))
        check_choice(self, "pad", self.pad, PADS)
        check_choice(self, "md_impl", self.md_impl, ("auto", "single", "foreach", "compiled", "fused"))
        check_choice(self, "md_nonfinite", self.md_nonfinite, ("auto", "raise", "ignore"))
        for name, lo, hi in (("batch_size", 1, None), ("max_epochs", 1, None), ("max_len", 2, 512),
                             ("pad_multiple", 1, None), ("eval_batch_size", 1, None), ("nan_check_every", 1, None),
                             ("checkpoint_every", 1, None), ("seed", 0, None), ("data_seed", 0, None),
                             ("size", 1, None)):
            setattr(self, name, check_int(self, name, getattr(self, name), lo, hi))
        for name in ("subset", "eval_subset", "final_test", "n_blocks", "n_heads", "init_seed"):
            if getattr(self, name) is not None:
                setattr(self, name, check_int(self, name, getattr(self, name), 0 if name == "init_seed" else 1))
        self.target_train_acc = check_float(self, "target_train_acc", self.target_train_acc, gt=0.0, le=1.0)
        self.momentum = check_float(self, "momentum", self.momentum, ge=0.0, lt=1.0)
        if self.lr is not None:
            self.lr = check_float(self, "lr", self.lr, gt=0.0)
        if self.weight_decay is not None:
            self.weight_decay = check_float(self, "weight_decay", self.weight_decay, ge=0.0)
        if self.pad == "none" and self.attn_impl == "explicit":
            raise config_error(self, "pad: the padding-free layout (pad none) runs attention through "
                                     "scaled_dot_product_attention; use attn_impl sdpa or pad dynamic/max")
        if self.pad == "none" and self.dropout_impl != "torch" and self.dropout > 0:
            raise config_error(self, "pad: the padding-free layout (pad none) draws its attention dropout inside "
                                     "scaled_dot_product_attention; use dropout_impl torch or pad dynamic/max")
        if self.final_test is not None and self.resolved_val_in_train():
            raise config_error(self, "final_test: the final test pass scores the validation-selected weights, "
                                     "which needs held-out validation (val_in_train off, not the paper protocol)")
        self.model_config()  # validates the model fields

    # -- derived settings
    def model_config(self) -> EncoderConfig:
        # 512 learned positions whatever the data's max_len, as in the paper (same init).
        try:
            return EncoderConfig(
                max_len=512, n_embd=self.n_embd, n_hidden=self.n_hidden, n_blocks=self.n_blocks or self.size,
                n_heads=self.n_heads or self.size, dropout=self.dropout, norm=self.norm, pool=self.pool,
                attn_impl=self.attn_impl, dropout_impl=self.dropout_impl,
            )
        except ConfigError as exc:
            raise config_error(self, str(exc).split(": ", 1)[-1]) from None

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        if self.optimizer == "md":
            table = PAPER_LR.get(round(self.p, 6))
            if table is None or self.size not in table:
                raise NoDefaultLearningRate(
                    f"TrainConfig: lr: no default learning rate for mirror descent with p={self.p:g} and size "
                    f"{self.size} (the paper's table covers p in {{1.1, 2, 3}} and sizes {{3, 4, 6}}); pass --lr")
            return table[self.size]
        return BASELINE_LR[self.optimizer]

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 0.01 if self.optimizer == "adamw" else 0.0

    def resolved_val_in_train(self) -> bool:
        return self.protocol == "paper" if self.val_in_train is None else bool(self.val_in_train)

    def resolved_init_seed(self) -> int:
        """The seed of the initial weights: ``init_seed``, else the run's seed (honest) or 0 (paper)."""
        if self.init_seed is not None:
            return self.init_seed
        return 0 if self.protocol == "paper" else self.seed

    def resolved_loss(self) -> str:
        return self.loss if self.loss is not None else ("authors" if self.protocol == "paper" else "bce")

    def resolved_precision(self, device_type: str) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if device_type == "cuda" and self.protocol == "honest" else "fp32"

    def resolved_pad(self, device_type: str) -> str:
        """``auto``: padding-free (``none``) on a GPU, ``dynamic`` elsewhere (see docs/imdb_speed.md)."""
        if self.pad != "auto":
            return self.pad
        packable = self.attn_impl == "sdpa" and (self.dropout_impl == "torch" or self.dropout == 0)
        return "none" if device_type == "cuda" and packable else "dynamic"

    def optimizer_label(self) -> str:
        if self.optimizer == "md":
            return f"MD p={self.p:g}" + (" (normalised)" if self.md_normalize else "")
        return {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD-momentum"}[self.optimizer]

    def identity(self) -> dict:
        """What makes two runs the same run: every field except those a resume may change."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_MUTABLE}

    def run_name(self) -> str:
        """A short folder name for this run inside an ensemble or a multi-seed run."""
        return f"seed{self.seed}"


@dataclass
class EnsembleConfig(ConfigMixin):
    """K training runs that share data, model shape and batching, trained together in one
    process (one forward pass over stacked parameters, one optimiser per member).

    ``members`` are :class:`TrainConfig` s (or mappings) differing only in
    :data:`MEMBER_FIELDS`; ``names`` are their folder names inside the ensemble's run folder
    (default ``seed<N>``, with ``p<p>-`` / ``lr<lr>-`` prefixes where members differ in p or lr).
    """

    members: tuple = ()
    names: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.members, (list, tuple)) or not self.members:
            raise config_error(self, "members must be a non-empty list of training configurations")
        self.members = tuple(TrainConfig.coerce(m) for m in self.members)
        base = self.members[0]
        for i, m in enumerate(self.members[1:], 1):
            diff = sorted(f.name for f in fields(TrainConfig)
                          if f.name not in MEMBER_FIELDS and getattr(m, f.name) != getattr(base, f.name))
            if diff:
                raise config_error(self, f"members[{i}] differs from members[0] in {', '.join(diff)}; ensemble "
                                         f"members may differ only in {', '.join(sorted(MEMBER_FIELDS))}")
        ids = [_member_key(m) for m in self.members]
        for i, key in enumerate(ids):
            if key in ids[:i]:
                raise config_error(self, f"members[{i}] repeats members[{ids.index(key)}] (same seed and settings)")
        self.names = tuple(self.names) if self.names is not None else default_names(self.members)
        if len(self.names) != len(self.members) or len(set(self.names)) != len(self.names):
            raise config_error(self, "names must give one distinct folder name per member")

    def to_dict(self) -> dict:
        return {"members": [m.to_dict() for m in self.members], "names": list(self.names)}


def _member_key(m: TrainConfig) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in m.to_dict().items() if k not in RESUME_MUTABLE))


def default_names(members) -> tuple[str, ...]:
    """``seed<N>``, prefixed with ``p<p>-`` / ``lr<lr>-`` / the optimizer where members differ in it."""
    def varies(get):
        return len({get(m) for m in members}) > 1

    def name(m: TrainConfig) -> str:
        parts = []
        if varies(lambda x: x.optimizer):
            parts.append(m.optimizer)
        if varies(lambda x: x.p):
            parts.append(f"p{m.p:g}")
        if varies(lambda x: x.lr):
            parts.append(f"lr{m.resolved_lr():g}")
        if varies(lambda x: x.resolved_init_seed()) and m.init_seed is not None:
            parts.append(f"init{m.init_seed}")
        return "-".join(parts + [f"seed{m.seed}"])

    return tuple(name(m) for m in members)


__all__ = ["TrainConfig", "EnsembleConfig", "NoDefaultLearningRate", "PAPER_LR", "BASELINE_LR", "PAPER_E3",
           "OPTIMIZERS", "PROTOCOLS", "LOSSES", "PADS", "RESUME_MUTABLE", "MEMBER_FIELDS", "default_names"]

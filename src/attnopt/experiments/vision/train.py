"""E6 training: E members (one per seed) of the ViT trained together as one batched model.

Per epoch, member k draws its own permutation of the training images (its data generator),
its own dropout masks (its dropout generator) and takes one optimiser step per batch of
``batch_size`` images on the **mean** cross-entropy
``L_k = (1/B) Σ_i −log softmax(f_k(x_i))_{y_i}``; the ensemble minimises ``Σ_k L_k``, whose
gradient in member k's parameters is ∇L_k.  Every optimiser here (Adam, AdamW, SGD-momentum,
plain ℓp-MD) acts entry by entry, so a step on the stacked parameters is the step of each
member alone: member k reproduces the run of its seed trained alone (up to the rounding of
batched matrix products).  Normalised MD divides by a whole-tensor norm, so its members are
trained one after another instead.

After each epoch: validation and test loss/accuracy (eval mode), one row of history.csv and
an atomic checkpoint per member (its slice of the weights and optimiser state, its
generators' states, its history) in its own run folder ``seed-<s>/``; rerunning the same
command resumes from the checkpoints bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from attnopt.data.vision import ImageData, ImageSplit
from attnopt.errors import UserError
from attnopt.experiments.vision.config import VisionConfig, steps_per_epoch
from attnopt.files import atomic_torch_save, load_checkpoint
from attnopt.models.vit import EnsembleViT, MemberDropout
from attnopt.report.runs import RunDir
from attnopt.runtime import ProgressFn, report

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


class NonFiniteLoss(UserError, FloatingPointError):
    """A member's training loss became NaN or infinite (the step size is too large)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def make_optimizer(cfg: VisionConfig, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The configured optimiser (plain steps, no schedule or clipping): ℓp mirror descent
    (:class:`attnopt.optim.MirrorDescent`, NaN checks left to the epoch's loss check), Adam,
    AdamW or SGD with momentum."""
    lr, wd = cfg.resolved_lr(), cfg.resolved_weight_decay()
    params = list(params)
    if cfg.optimizer == "md":
        from attnopt.optim import MirrorDescent

        return MirrorDescent(params, lr=lr, p=cfg.p, normalize=cfg.md_normalize, weight_decay=wd, nonfinite="ignore")
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)


class DeviceImages:
    """A split on the device as uint8, standardised (and resized to ``size``) batch by batch."""

    def __init__(self, split: ImageSplit, data: ImageData, size: int, device: torch.device) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device)
        self.labels = torch.from_numpy(split.labels).to(device)
        self.n, self.size = len(split), size
        c = split.images.shape[1]
        self.mean = torch.tensor(data.mean, device=device).reshape(c, 1, 1)
        self.std = torch.tensor(data.std, device=device).reshape(c, 1, 1)
        self.scale = float(data.scale)

    def batch(self, idx: torch.Tensor, augment: tuple[torch.Tensor, torch.Tensor, int] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``idx.shape + (C, size, size)`` and labels: standardised, augmented
        (``(flips, offsets, pad)`` for :func:`random_crop_flip`, at the stored resolution), then
        resized bilinearly when the size differs."""
        x = (self.images[idx].float() / self.scale - self.mean) / self.std
        if augment is not None:
            x = random_crop_flip(x, *augment)
        if x.shape[-1] != self.size:
            lead = x.shape[:-3]
            x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(self.size, self.size), mode="bilinear",
                              align_corners=False).reshape(*lead, x.shape[-3], self.size, self.size)
        return x, self.labels[idx]


def random_crop_flip(x: torch.Tensor, flips: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Per image of ``x`` (…, C, H, W): pad with zeros (the mean pixel, after standardisation)
    by ``pad``, crop H × W starting at row/column ``offsets[…, 0/1]`` ∈ [0, 2·pad] (``pad``
    everywhere = no shift), then mirror left–right where ``flips`` (…,) is true."""
    *lead, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[..., 0, None] + torch.arange(H, device=x.device)  # (…, H)
    cols = offsets[..., 1, None] + torch.arange(W, device=x.device)  # (…, W)
    cols = torch.where(flips[..., None], cols.flip(-1), cols)
    xp = torch.gather(xp, -2, rows[..., None, :, None].expand(*lead, C, H, W + 2 * pad))
    return torch.gather(xp, -1, cols[..., None, None, :].expand(*lead, C, H, W))


def _augmentation(cfg: VisionConfig, members: list[Member], batch: int, device: torch.device):
    """Member k's flips and crop offsets for one batch, drawn from its data generator."""
    if cfg.augment == "none":
        return None
    pad = cfg.crop_pad if "crop" in cfg.augment else 0
    flips, offsets = [], []
    for m in members:
        f = torch.rand(batch, generator=m.data_gen) < 0.5
        o = torch.randint(0, 2 * pad + 1, (batch, 2), generator=m.data_gen)
        flips.append(f if "flip" in cfg.augment else torch.zeros_like(f))
        offsets.append(o)
    return torch.stack(flips).to(device), torch.stack(offsets).to(device), pad


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """The forward pass's autocast: bf16 matrix products (weights, optimiser state and the loss stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: EnsembleViT, split: DeviceImages, batch_size: int,
             precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Per member (mean cross-entropy, accuracy) on ``split`` in eval mode (NaN when empty)."""
    E = model.members
    if split.n == 0:
        return np.full(E, np.nan), np.full(E, np.nan)
    was = model.training
    model.eval()
    loss = torch.zeros(E, dtype=torch.float64, device=split.labels.device)
    correct = torch.zeros(E, dtype=torch.float64, device=split.labels.device)
    for b in range(0, split.n, batch_size):
        x, y = split.batch(torch.arange(b, min(b + batch_size, split.n), device=split.labels.device))
        with autocast(split.labels.device, precision):
            logits = model(x).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(E), reduction="none")
        loss += ce.reshape(E, -1).sum(1).double()
        correct += (logits.argmax(-1) == y).sum(1).double()
    model.train(was)
    return (loss / split.n).cpu().numpy(), (correct / split.n).cpu().numpy()


# --------------------------------------------------------------------------- members


@dataclass
class Member:
    """One seed's run: its folder, generators, history and the epoch its weights are at."""

    seed: int
    folder: RunDir | None
    device: torch.device
    data_gen: torch.Generator = field(init=False)
    drop_gen: torch.Generator = field(init=False)
    history: list[dict] = field(default_factory=list)
    epoch: int = 0
    checkpoint: dict | None = None

    def __post_init__(self) -> None:
        # streams distinct from the initialisation's (seeded with the seed itself)
        self.data_gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 1)
        self.drop_gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + 2)
        path = self.folder / CHECKPOINT if self.folder is not None else None
        if path is not None and path.is_file():
            ck = load_checkpoint(path, hint="rerun with --overwrite to start this run over")
            if not isinstance(ck, dict) or ck.get("format") != FORMAT or "model" not in ck:
                raise UserError(f"checkpoint {path} is not an attnopt vision checkpoint; rerun with --overwrite")
            self.checkpoint, self.epoch, self.history = ck, int(ck["epoch"]), list(ck["history"])
            self.data_gen.set_state(ck["data_gen"])
            self.drop_gen.set_state(ck["drop_gen"])


def _slice_state(opt_state: dict, params: list[torch.Tensor], k: int) -> dict:
    """Member k's part of an optimiser state dict (tensors shaped like their parameter are sliced)."""
    state = {}
    for i, st in opt_state["state"].items():
        shape = params[i].shape
        state[i] = {n: (v[k:k + 1].detach().cpu().clone() if torch.is_tensor(v) and v.shape == shape else v)
                    for n, v in st.items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _stack_state(states: list[dict]) -> dict:
    """The inverse of :func:`_slice_state` over all members (scalars, e.g. step counts, are shared)."""
    out = {}
    for i, st in states[0]["state"].items():
        out[i] = {n: (torch.cat([s["state"][i][n] for s in states]) if torch.is_tensor(v) and v.dim() > 0 else v)
                  for n, v in st.items()}
    return {"state": out, "param_groups": states[0]["param_groups"]}


def _save(members: list[Member], model: EnsembleViT, opt: torch.optim.Optimizer, cfg: VisionConfig) -> None:
    params = list(model.parameters())
    full = opt.state_dict()
    names = [n for n, _ in model.named_parameters()]
    for k, m in enumerate(members):
        if m.folder is None:
            continue
        atomic_torch_save({
            "format": FORMAT, "epoch": m.epoch, "seed": m.seed, "config": cfg.member(m.seed).to_dict(),
            "model": {n: p[k:k + 1].detach().cpu().clone() for n, p in zip(names, params)},
            "optimizer": _slice_state(full, params, k),
            "data_gen": m.data_gen.get_state(), "drop_gen": m.drop_gen.get_state(),
            "history": m.history,
        }, m.folder / CHECKPOINT)


def _restore(members: list[Member], model: EnsembleViT, opt: torch.optim.Optimizer) -> None:
    cks = [m.checkpoint for m in members]
    if cks[0] is None:
        return
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.cat([ck["model"][n] for ck in cks]).to(p.device))
    opt.load_state_dict(_stack_state([ck["optimizer"] for ck in cks]))
    for m in members:
        m.checkpoint = None  # loaded; free the memory


# --------------------------------------------------------------------------- training


def train_members(cfg: VisionConfig, members: list[Member], data: ImageData, device: torch.device,
                  progress: ProgressFn | None = None, total: int | None = None) -> EnsembleViT:
    """Train ``members`` (all at the same epoch) together up to ``cfg.epochs``; returns the model.
    Progress: one unit per member and step, out of ``total`` (default: this call's)."""
    start = members[0].epoch
    assert all(m.epoch == start for m in members)
    mcfg = cfg.model_config()
    model = EnsembleViT(mcfg, [m.seed for m in members]).to(device)
    opt = make_optimizer(cfg, model.parameters())
    _restore(members, model, opt)
    train = DeviceImages(data.train, data, mcfg.image_size, device)
    val = DeviceImages(data.val, data, mcfg.image_size, device)
    test = DeviceImages(data.test, data, mcfg.image_size, device)
    dropout = MemberDropout([m.drop_gen for m in members])
    precision = resolve_precision(cfg.precision, device)
    n_steps = steps_per_epoch(train.n, cfg.batch_size)
    total = total if total is not None else (cfg.epochs - start) * n_steps * len(members)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        perms = torch.stack([torch.randperm(train.n, generator=m.data_gen) for m in members]).to(device)
        sums = torch.zeros(2, len(members), dtype=torch.float64, device=device)
        for step in range(n_steps):
            idx = perms[:, step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = train.batch(idx, _augmentation(cfg, members, idx.shape[1], device))
            with autocast(device, precision):
                logits = model(x, dropout).float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            losses = ce.reshape(len(members), -1).mean(1)
            losses.sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                sums[0] += losses.double() * idx.shape[1]
                sums[1] += (logits.argmax(-1) == y).sum(1).double()
            report(progress, "training (member steps)", len(members), total)
        train_loss, train_acc = (sums / train.n).cpu().numpy()
        bad = [m.seed for m, v in zip(members, train_loss) if not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(f"non-finite training loss at epoch {epoch + 1} for seed(s) {bad}; the last "
                                "checkpoints are kept. Lower --lr (or use --overwrite to start over)")
        t_train = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, val, cfg.eval_batch_size, precision)
        test_loss, test_acc = evaluate(model, test, cfg.eval_batch_size, precision)
        for k, m in enumerate(members):
            m.epoch = epoch + 1
            m.history.append({
                "epoch": epoch + 1, "train_loss": float(train_loss[k]), "train_acc": float(train_acc[k]),
                "val_loss": float(val_loss[k]), "val_acc": float(val_acc[k]),
                "test_loss": float(test_loss[k]), "test_acc": float(test_acc[k]),
                "train_time_s": t_train, "epoch_time_s": time.perf_counter() - t0,
            })
        _save(members, model, opt, cfg)
        for m in members:
            if m.folder is not None:
                m.folder.write_csv("history.csv", rows=m.history)
                m.folder.write_summary(summarize_history(m.history), complete=False)
    return model


def summarize_history(history: Sequence[dict]) -> dict[str, Any]:
    """Headline accuracies (fractions) of one member: ``honest_test_acc`` is the test accuracy
    at the epoch of best validation accuracy; ``best_test_acc`` the best over epochs (the
    paper's way, which selects on the test set); ``last_test_acc`` the final epoch's."""
    if not history:
        return {"epochs": 0}
    val = np.array([h["val_acc"] for h in history], dtype=float)
    test = np.array([h["test_acc"] for h in history], dtype=float)
    sel = int(np.nanargmax(val)) if np.isfinite(val).any() else len(history) - 1
    return {
        "epochs": len(history),
        "honest_test_acc": float(test[sel]), "best_val_acc": float(val[sel]), "best_val_epoch": sel + 1,
        "best_test_acc": float(np.nanmax(test)), "best_test_epoch": int(np.nanargmax(test)) + 1,
        "last_test_acc": float(test[-1]),
        "final_train_acc": float(history[-1]["train_acc"]), "final_train_loss": float(history[-1]["train_loss"]),
        "train_time_s": float(sum(h["train_time_s"] for h in history)),
    }


__all__ = ["train_members", "Member", "evaluate", "random_crop_flip", "make_optimizer", "summarize_history",
           "NonFiniteLoss",
           "DeviceImages", "resolve_device", "resolve_precision", "autocast", "CHECKPOINT"]

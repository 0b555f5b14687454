"""``attnopt vision …``: E6, the paper's ViT experiment (ℓ1.1 mirror descent vs Adam).

``train`` trains one ViT per seed (together, as one batched model, by default) on CIFAR-10
(``--data`` = the folder of its python batches) or on scikit-learn's 8×8 digits, then
analyses the Q/K/V weights; ``compare`` tabulates finished runs side by side and draws the
|w| histograms.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from attnopt.cli._common import (OutOpt, OverwriteOpt, ProgressOpt, console, finish, guard, new_app, open_out,
                                 parse_floats, parse_seeds, int_option, progress_bars)
from attnopt.report.tables import fmt, pct

app = new_app("E6 vision: a ViT trained with ℓp mirror descent or Adam/AdamW/SGD (CIFAR-10 or 8×8 digits).")


def _opt(flag: str, help: str):
    return typer.Option(flag, help=help)


def _iopt(flag: str, help: str):
    return int_option(flag, help=help)


def _table(res):
    from rich.table import Table

    s = res.summary
    t = Table(title=f"E6 {s['optimizer']} on {s['dataset']} ({s['epochs']} epochs)")
    for col in ("seed", "test acc % (best val)", "best test acc %", "last test acc %",
                "Q/K/V frac |w|<near-zero", "Q/K/V #|w|>threshold", "max |w| Q/K/V"):
        t.add_column(col, justify="right")
    for m in res.members:
        w = m["weights"]
        t.add_row(str(m["seed"]), pct(m["honest_test_acc"]), pct(m["best_test_acc"]), pct(m["last_test_acc"]),
                  " / ".join(fmt(w[k]["frac_near_zero"]) for k in "QKV"),
                  " / ".join(str(w[k]["above_threshold"]) for k in "QKV"),
                  " / ".join(fmt(w[k]["max_abs"]) for k in "QKV"))
    if len(res.members) > 1:
        t.add_row(f"mean (n={s['honest_test_acc'][2]})",
                  *(fmt(100 * s[k][0], 100 * s[k][1], 2)
                    for k in ("honest_test_acc", "best_test_acc", "last_test_acc")),
                  " / ".join(fmt(s["weights"][k]["frac_near_zero"][0]) for k in "QKV"),
                  " / ".join(fmt(s["weights"][k]["above_threshold"][0], digits=1) for k in "QKV"),
                  " / ".join(fmt(s["weights"][k]["max_abs"][0]) for k in "QKV"))
    return t


@app.command("train")
def train(
    dataset: Annotated[str, _opt("--dataset", "cifar10 (needs --data) or digits (scikit-learn, offline).")] = "cifar10",
    data: Annotated[Optional[Path], _opt("--data", "CIFAR-10 folder: data_batch_1…5 and test_batch "
                                         "(or their cifar-10-batches-py subfolder).")] = None,
    val_fraction: Annotated[float, _opt("--val-fraction", "Fraction of the training images held out for "
                                        "validation (model selection).")] = 0.1,
    data_seed: Annotated[int, _iopt("--data-seed", "Seed of the validation split (and the digits test split).")] = 0,
    subset: Annotated[Optional[int], _iopt("--subset", "Keep only this many training images.")] = None,
    augment: Annotated[str, _opt("--augment", "Training augmentation: none, crop, flip or crop-flip "
                                 "(random crops after zero padding by --crop-pad; left-right flips).")] = "none",
    crop_pad: Annotated[int, _iopt("--crop-pad", "Zero padding of the random crops, in pixels.")] = 4,
    image_size: Annotated[Optional[int], _iopt("--image-size", "Image side the model sees (images are resized; "
                                              "default 48 for cifar10, 8 for digits).")] = None,
    patch: Annotated[int, _iopt("--patch", "Patch side.")] = 4,
    width: Annotated[int, _iopt("--width", "Embedding width.")] = 512,
    depth: Annotated[int, _iopt("--depth", "Number of transformer blocks.")] = 6,
    heads: Annotated[int, _iopt("--heads", "Attention heads (must divide --width).")] = 8,
    mlp: Annotated[int, _iopt("--mlp", "MLP hidden width.")] = 512,
    dropout: Annotated[float, _opt("--dropout", "Dropout rate.")] = 0.1,
    optimizer: Annotated[str, _opt("--optimizer", "md (ℓp mirror descent), adam, adamw or sgd (momentum).")] = "md",
    p: Annotated[float, _opt("--p", "Mirror-descent exponent p > 1.")] = 1.1,
    lr: Annotated[Optional[float], _opt("--lr", "Step size (default: md 5e-2, adam/adamw 1e-4, sgd 1e-2).")] = None,
    md_normalize: Annotated[bool, _opt("--md-normalize/--no-md-normalize",
                                       "Normalised MD (divide by the gradient's ℓq norm).")] = False,
    momentum: Annotated[float, _opt("--momentum", "SGD momentum.")] = 0.9,
    weight_decay: Annotated[Optional[float], _opt("--weight-decay", "Weight decay (default 0.01 for adamw, "
                                                  "else 0).")] = None,
    batch_size: Annotated[int, _iopt("--batch-size", "Training batch size.")] = 100,
    epochs: Annotated[int, _iopt("--epochs", "Training epochs.")] = 1000,
    seed: Annotated[Optional[List[int]], _iopt("--seed", "A seed (repeatable); each seed is one member.")] = None,
    seeds: Annotated[Optional[str], _opt("--seeds", "Seeds as a range or list, e.g. 1..5 or 1,3.")] = None,
    ensemble: Annotated[bool, _opt("--ensemble/--no-ensemble", "Train the seeds together as one batched "
                                   "model (same results as one by one).")] = True,
    device: Annotated[str, _opt("--device", "auto, cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[str, _opt("--precision", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16.")] = "auto",
    threads: Annotated[Optional[int], _iopt("--threads", "CPU threads for torch (default: torch's).")] = None,
    eval_batch_size: Annotated[int, _iopt("--eval-batch-size", "Batch size of evaluation.")] = 500,
    threshold: Annotated[float, _opt("--threshold", "|w| threshold of the weight counts (paper: 0.06).")] = 0.06,
    near_zero: Annotated[float, _opt("--near-zero", "|w| below this counts as near zero.")] = 1e-3,
    prune_levels: Annotated[str, _opt("--prune-levels", "Pruned fractions, comma-separated.")] =
        "0,0.5,0.7,0.8,0.9,0.95,0.99",
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """Train a ViT per seed with one optimiser, then analyse its Q/K/V weights (resumes from the folder)."""
    t0 = time.perf_counter()
    from attnopt.experiments.vision import VisionConfig, run_vision

    all_seeds = tuple(seed or ()) + (parse_seeds(seeds) if seeds else ())
    with guard():
        cfg = VisionConfig.from_dict(dict(
            dataset=dataset, data_dir=None if data is None else str(data), val_fraction=val_fraction,
            data_seed=data_seed, subset=subset, augment=augment, crop_pad=crop_pad, image_size=image_size,
            patch=patch, width=width, depth=depth,
            heads=heads, mlp=mlp, dropout=dropout, optimizer=optimizer, p=p, lr=lr, md_normalize=md_normalize,
            momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, epochs=epochs,
            seeds=all_seeds or (0,), ensemble=ensemble, device=device, precision=precision, threads=threads,
            eval_batch_size=eval_batch_size, threshold=threshold, near_zero=near_zero,
            prune_levels=tuple(parse_floats(prune_levels, "--prune-levels"))))
        if cfg.dataset == "cifar10":  # a missing data folder is reported before a run folder is made
            from attnopt.data.vision import DataError, cifar10_folder

            if cfg.data_dir is None:
                raise DataError("--dataset cifar10 needs --data: the folder of the CIFAR-10 python batches")
            cifar10_folder(cfg.data_dir)
    rd = open_out(out, "vision-train", cfg, overwrite=overwrite, resumable=True)
    with guard(rd.path, resumable=True), progress_bars(progress) as cb:
        res = run_vision(cfg, out=rd, progress=cb)
    con = console()
    con.print(_table(res))
    finish(con, rd.path, t0, "E6 vision run")


@app.command("compare")
def compare(
    runs: Annotated[List[Path], typer.Argument(help="Finished 'vision train' run folders.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder for compare.md, compare.json, "
                                                "vision_hist.png and vision_curves.png (default: print only).")] = None,
    overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """The E6 table (mean ± std over seeds, n) of finished runs; with --out, the figures too."""
    t0 = time.perf_counter()
    from attnopt.experiments.vision import run_compare

    rd = open_out(out, "vision-compare", {"runs": [str(p) for p in runs]}, overwrite=overwrite) if out else None
    with guard(), progress_bars(progress) as cb:
        res = run_compare(runs, out=rd, progress=cb)
    con = console()
    con.print(res.table, markup=False)
    finish(con, res.out, t0, "E6 comparison")


__all__ = ["app"]

"""``attnopt imdb ...``: the IMDB / SST-2 experiments (E3–E6) from the command line.

Commands: ``prepare`` (tokenise and cache), ``train``, ``table``, ``sparsity``,
``attention-map``.  Every command takes ``--dataset imdb`` or ``--dataset sst2`` where the
dataset matters (analysis commands read it from the run folder).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from attnopt.cli._common import CacheOpt, DataOpt, fail, guard, new_app

app = new_app("IMDB / SST-2 sentiment experiments: mirror descent vs baselines (E3–E6).")
console = Console()


def _fail(msg: str, code: int = 2) -> None:
    raise fail(msg, code)


def _guard(fn, *args, **kw):
    """Run ``fn`` under the common error policy (user errors: one line, exit 2; Ctrl-C: 130)."""
    from attnopt.experiments.imdb import NonFiniteLoss

    with guard(kw.get("out") if isinstance(kw.get("out"), Path) else None, resumable=True):
        try:
            return fn(*args, **kw)
        except NonFiniteLoss as exc:
            raise fail(str(exc), 3) from None
        except (ValueError, FileNotFoundError) as exc:  # TODO(#14): raise UserError subclasses at the source
            raise fail(str(exc)) from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{what} must be comma-separated numbers, got {text!r}")
        raise


@app.command()
def prepare(
    dataset: Annotated[str, typer.Option(help="imdb or sst2")] = "imdb",
    max_len: Annotated[int, typer.Option(help="tokens kept per review ([CLS] first)")] = 512,
    subset: Annotated[Optional[int], typer.Option(help="class-balanced training subset size")] = None,
    eval_subset: Annotated[Optional[int], typer.Option(help="val/test subset size (default: --subset)")] = None,
    data_seed: Annotated[int, typer.Option(help="seed of the subset choice")] = 0,
    clean_html: Annotated[bool, typer.Option(help="replace <br /> tags by spaces")] = False,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Tokenise a dataset once and store the token ids in the cache."""
    from attnopt.data.reviews import load_reviews

    d = _guard(load_reviews, dataset, max_len, subset, eval_subset, data_seed, False, clean_html,
               data_root=data, cache=cache, progress=True)
    console.print(f"{d.dataset}: {d.sizes()} reviews, max_len {max_len}; cache {d.meta['cache_file']}")


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="imdb or sst2")] = "imdb",
    size: Annotated[int, typer.Option(help="model size s = blocks = heads (paper: 3, 4, 6)")] = 3,
    optimizer: Annotated[str, typer.Option(help="md, adam, adamw or sgd (SGD with momentum)")] = "md",
    p: Annotated[float, typer.Option(help="mirror-descent exponent p > 1 (paper: 1.1, 2, 3)")] = 1.1,
    lr: Annotated[Optional[float], typer.Option(
        help="learning rate (default: the paper's for MD p in {1.1,2,3}, sizes {3,4,6})")] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = 0.9,
    weight_decay: Annotated[Optional[float], typer.Option(help="weight decay (default 0.01 for adamw, else 0)")] = None,
    md_normalize: Annotated[bool, typer.Option(help="normalised MD step (gradient / its q-norm)")] = False,
    md_impl: Annotated[str, typer.Option(
        help="MD implementation: auto (fused: Triton on CUDA, the C kernel on CPU), single, foreach, compiled or fused")] = "auto",
    md_nonfinite: Annotated[str, typer.Option(help="MD NaN-gradient check: auto, raise or ignore")] = "auto",
    seed: Annotated[List[int], typer.Option(help="seed; repeat for several runs (each in OUT/seedN)")] = [0],
    batch_size: Annotated[int, typer.Option(help="batch size")] = 100,
    max_epochs: Annotated[int, typer.Option(help="epoch limit")] = 1000,
    target_train_acc: Annotated[float, typer.Option(help="stop when the epoch's train accuracy reaches this")] = 0.995,
    loss_reduction: Annotated[str, typer.Option(help="BCE reduction over the batch: sum (paper) or mean")] = "sum",
    max_len: Annotated[int, typer.Option(help="tokens kept per review")] = 512,
    subset: Annotated[Optional[int], typer.Option(help="class-balanced training subset (quick runs)")] = None,
    eval_subset: Annotated[Optional[int], typer.Option(help="val/test subset size (default: --subset)")] = None,
    data_seed: Annotated[int, typer.Option(help="seed of the subset choice")] = 0,
    val_in_train: Annotated[bool, typer.Option(
        help="train on train+val (paper protocol; val no longer held out)")] = False,
    clean_html: Annotated[bool, typer.Option(help="replace <br /> tags by spaces")] = False,
    n_embd: Annotated[int, typer.Option(help="embedding width")] = 384,
    n_hidden: Annotated[int, typer.Option(help="MLP width")] = 1536,
    n_blocks: Annotated[Optional[int], typer.Option(help="blocks (default: size)")] = None,
    n_heads: Annotated[Optional[int], typer.Option(help="heads (default: size)")] = None,
    dropout: Annotated[float, typer.Option(help="dropout")] = 0.2,
    norm: Annotated[str, typer.Option(help="post (paper) or pre LayerNorm")] = "post",
    pool: Annotated[str, typer.Option(help="cls (paper) or mean read-out")] = "cls",
    attn_impl: Annotated[str, typer.Option(help="sdpa (fused) or explicit softmax")] = "sdpa",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on GPU), fp32 or bf16")] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model")] = False,
    pad: Annotated[str, typer.Option(help="dynamic (to the batch's longest review) or max (to --max-len)")] = "dynamic",
    pad_multiple: Annotated[int, typer.Option(help="round dynamic padding up to a multiple of this")] = 8,
    eval_batch_size: Annotated[int, typer.Option(help="evaluation batch size")] = 500,
    nan_check_every: Annotated[int, typer.Option(help="check the loss for NaN/inf every N steps")] = 20,
    checkpoint_every: Annotated[int, typer.Option(help="checkpoint every N epochs")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<name>-<time>)")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="continue from OUT's checkpoint")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars")] = True,
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Train the encoder classifier (one run per --seed); resumes an interrupted run in --out.

    Create a file named STOP in a run folder to finish that run cleanly after its current
    epoch (checkpoint, summary and report written); the same command later continues it.
    """
    from attnopt.experiments.imdb import TrainConfig
    from attnopt.experiments.imdb import train as train_run

    base = dict(dataset=dataset, max_len=max_len, subset=subset, eval_subset=eval_subset, data_seed=data_seed,
                val_in_train=val_in_train, clean_html=clean_html, size=size, n_blocks=n_blocks, n_heads=n_heads,
                n_embd=n_embd, n_hidden=n_hidden, dropout=dropout, norm=norm, pool=pool, attn_impl=attn_impl,
                optimizer=optimizer, p=p, lr=lr, momentum=momentum, weight_decay=weight_decay,
                md_normalize=md_normalize, md_impl=md_impl, md_nonfinite=md_nonfinite, batch_size=batch_size,
                loss_reduction=loss_reduction,
                max_epochs=max_epochs, target_train_acc=target_train_acc, device=device, precision=precision,
                compile=compile, pad=pad, pad_multiple=pad_multiple, eval_batch_size=eval_batch_size,
                nan_check_every=nan_check_every, checkpoint_every=checkpoint_every)
    cfgs = [_guard(TrainConfig, **base, seed=s) for s in seed]
    for c in cfgs:
        _guard(c.resolved_lr)  # a missing default learning rate is reported before any work
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _fail("--out is required under torchrun (every process must write to the same run folder)")
    if out is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        tag = f"p{p:g}" if cfgs[0].optimizer == "md" else cfgs[0].optimizer
        out = Path("runs") / f"{cfgs[0].dataset}-{tag}-s{size}-{stamp}"
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    summaries = []
    for cfg in cfgs:
        run_out = out if len(cfgs) == 1 else out / f"seed{cfg.seed}"
        if rank0:
            console.print(f"[bold]{cfg.dataset}[/bold] {cfg.optimizer_label()} size {cfg.size} seed {cfg.seed} "
                          f"lr {cfg.resolved_lr():g} -> {run_out}")
        s = _guard(train_run, cfg, run_out, resume=resume, progress=progress, data_root=data, cache=cache,
                   log=lambda m: console.print(m, highlight=False))
        summaries.append((cfg, run_out, s))
    if not rank0:
        return
    tab = Table(title="summary (test accuracy, %)")
    for col in ("run", "epochs", "stop", "honest (best val)", "best over epochs (paper)", "last", "s/epoch"):
        tab.add_column(col, overflow="fold")
    for cfg, run_out, s in summaries:
        pct = lambda x: f"{100 * x:.2f}" if isinstance(x, float) else "–"  # noqa: E731
        tab.add_row(str(run_out), str(s.get("epochs")), str(s.get("stop_reason")), pct(s.get("honest_test_acc")),
                    pct(s.get("paper_best_test_acc")), pct(s.get("last_test_acc")),
                    f"{s.get('mean_epoch_time_s', float('nan')):.2f}")
    console.print(tab)


@app.command()
def table(
    runs: Annotated[List[Path], typer.Argument(help="run folders (or folders containing runs)")],
    out: Annotated[Optional[Path], typer.Option(help="also write the markdown table here")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="also write the rows as CSV here")] = None,
    figure: Annotated[Optional[Path], typer.Option(
        help="also draw train/validation/test accuracy per epoch of every run into this PNG")] = None,
) -> None:
    """The E3/E6 table: mean ± std over seeds, honest and paper-style numbers beside the paper's."""
    from attnopt.experiments.imdb import format_table, results_table, run_histories
    from attnopt.report.runs import RunDir

    rows = _guard(results_table, runs)
    if not rows:
        _fail("no finished runs (with summary.json) found in " + ", ".join(map(str, runs)))
    text = format_table(rows)
    typer.echo(text)
    if out is not None:
        RunDir(out.parent).write_text(out.name, text + "\n")
    if csv is not None:
        RunDir(csv.parent).write_csv(csv.name, rows=[{k: v for k, v in r.items() if k != "paper_ref"}
                                                      | {"paper_ref": r["paper_ref"] and list(r["paper_ref"])}
                                                      for r in rows])
    if figure is not None:
        from attnopt.report.figures import epoch_curves_figure

        RunDir(figure.parent).save_figure(figure.name, epoch_curves_figure(_guard(run_histories, runs)))
        console.print(f"learning curves: {figure}")


@app.command()
def sparsity(
    runs: Annotated[List[Path], typer.Argument(help="run folders to compare (e.g. an ℓ1.1 and an ℓ2 run)")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/sparsity"),
    levels: Annotated[str, typer.Option(help="pruning fractions, comma-separated")] = "0,0.5,0.7,0.8,0.9,0.95,0.99",
    split: Annotated[str, typer.Option(help="split for the pruning accuracy: val or test")] = "test",
    eval_subset: Annotated[Optional[int], typer.Option(help="evaluate pruning on a subset of the split")] = None,
    threshold: Annotated[float, typer.Option(help="count entries with |w| above this (paper: 0.06)")] = 0.06,
    near_zero: Annotated[float, typer.Option(help="'near zero' means |w| below this")] = 1e-3,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="evaluate accuracy after magnitude pruning")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    data: DataOpt = None,
    cache: CacheOpt = None,
) -> None:
    """E4: weight histograms, |w| > 0.06 counts, near-zero fraction, Hoyer sparsity, pruning curve."""
    from attnopt.experiments.imdb import find_runs
    from attnopt.experiments.imdb_analysis import sparsity_report

    lv = _floats(levels, "--levels")
    if split not in ("val", "test"):
        _fail(f"--split must be val or test, got {split!r}")
    paths = _guard(find_runs, runs)
    res = _guard(sparsity_report, paths, out, lv, split, eval_subset, threshold, near_zero, device, data, cache,
                 prune, True)
    typer.echo((Path(res["out"]) / "report.md").read_text())
    console.print(f"written to {res['out']}")


@app.command("attention-map")
def attention_map(
    runs: Annotated[List[Path], typer.Argument(help="run folders to compare")],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/attention"),
    text: Annotated[Optional[List[str]], typer.Option(
        help="review text to draw (repeatable; default: probe reviews)")] = None,
    maps: Annotated[int, typer.Option(help="how many probe reviews to draw when no --text is given")] = 6,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="score the marked-word probe set")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    data: DataOpt = None,
) -> None:
    """E5: [CLS] attention heat maps (HTML + PNG) and the marked-sentiment-word probe score."""
    from attnopt.experiments.imdb import find_runs
    from attnopt.experiments.imdb_analysis import attention_report

    paths = _guard(find_runs, runs)
    res = _guard(attention_report, paths, out, text or (), maps, probe, device, data)
    if probe:
        typer.echo((Path(res["out"]) / "report.md").read_text())
    console.print(f"heat maps: {res['html']} and {len(res['maps_png'])} PNG file(s) in {res['out']}")


if __name__ == "__main__":  # pragma: no cover
    app()

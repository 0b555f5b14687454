"""``attnopt imdb …``: the IMDB / SST-2 experiments (E3–E6) from the command line.

Commands: ``prepare`` (tokenise and cache), ``train`` (one run, or several seeds / p values
trained together as an ensemble), ``campaign`` (the plan's missing trials within a time budget,
into small committed records), ``table`` (E3/E6 of run folders, or the aggregated E3/E4/E5 tables
of a campaign's records), ``sparsity`` (E4), ``attention-map`` (E5).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from attnopt.cli._common import (CacheOpt, DataOpt, OutOpt, OverwriteOpt, ProgressOpt, console, fail, finish, guard,
                                 interrupted, new_app, open_out, parse_floats, int_option, progress_bars)
from attnopt.report.tables import pct

app = new_app("IMDB / SST-2 sentiment experiments: mirror descent vs baselines (E3–E6).")

DatasetOpt = Annotated[str, typer.Option("--dataset", help="imdb or sst2.")]
MaxLenOpt = Annotated[int, int_option("--max-len", help="Tokens kept per review ([CLS] first).")]
SubsetOpt = Annotated[Optional[int], int_option("--subset", help="Class-balanced training subset (quick runs).")]
EvalSubsetOpt = Annotated[Optional[int], int_option("--eval-subset", help="Val/test subset size (default: --subset).")]
DataSeedOpt = Annotated[int, int_option("--data-seed", help="Seed of the subset choice.")]
CleanOpt = Annotated[bool, typer.Option("--clean-html", help="Replace <br /> tags by spaces.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks and opens folders


@app.command()
def prepare(dataset: DatasetOpt = "imdb", max_len: MaxLenOpt = 512, subset: SubsetOpt = None,
            eval_subset: EvalSubsetOpt = None, data_seed: DataSeedOpt = 0, clean_html: CleanOpt = False,
            progress: ProgressOpt = True, data: DataOpt = None, cache: CacheOpt = None) -> None:
    """Tokenise a dataset once and store the token ids in the cache."""
    from attnopt.data.reviews import load_reviews

    with guard(), progress_bars(progress) as cb:
        d = load_reviews(dataset, max_len, subset, eval_subset, data_seed, False, clean_html, data_root=data,
                         cache=cache, progress=cb)
    console().print(f"{d.dataset}: {d.sizes()} reviews, max_len {max_len}; cache {d.meta['cache_file']}")


@app.command()
def train(
    dataset: DatasetOpt = "imdb",
    protocol: Annotated[str, typer.Option(
        help="honest (20k train, 5k validation selects the epoch) or paper (the authors': all 25k train reviews, "
             "fp32, one shared initialisation, BCELoss on sigmoid)")] = "honest",
    size: Annotated[int, int_option(help="model size s = blocks = heads (paper: 3, 4, 6)")] = 3,
    optimizer: Annotated[str, typer.Option(help="md, adam, adamw or sgd (SGD with momentum)")] = "md",
    p: Annotated[List[float], typer.Option(help="mirror-descent exponent p > 1; repeat for several")] = [1.1],
    lr: Annotated[Optional[List[float]], typer.Option(
        help="learning rate: one for all, or one per --p (default: the paper's for p in {1.1,2,3}, "
             "sizes {3,4,6})")] = None,
    seed: Annotated[List[int], int_option(help="seed of data order and dropout (and of the initial weights "
                                                 "unless --init-seed); repeat for several runs")] = [0],
    init_seed: Annotated[Optional[int], int_option(
        help="seed of the initial weights, shared by every run (paper protocol: 0)")] = None,
    ensemble: Annotated[bool, typer.Option("--ensemble/--no-ensemble",
                                           help="train several runs together in one process")] = True,
    momentum: Annotated[float, typer.Option(help="SGD momentum")] = 0.9,
    weight_decay: Annotated[Optional[float], typer.Option(help="weight decay (default 0.01 for adamw, else 0)")] = None,
    md_normalize: Annotated[bool, typer.Option(help="normalised MD step (gradient / its q-norm)")] = False,
    md_impl: Annotated[str, typer.Option(help="MD implementation: auto, single, foreach, compiled or fused")] = "auto",
    md_nonfinite: Annotated[str, typer.Option(help="MD NaN-gradient check: auto, raise or ignore")] = "auto",
    batch_size: Annotated[int, int_option(help="batch size")] = 100,
    max_epochs: Annotated[int, int_option(help="epoch limit")] = 1000,
    target_train_acc: Annotated[float, typer.Option(help="stop when the epoch's train accuracy reaches this")] = 0.995,
    loss: Annotated[Optional[str], typer.Option(
        help="bce (stable, from the logit) or authors (BCELoss on sigmoid, as their code); default by protocol")] = None,
    loss_reduction: Annotated[str, typer.Option(help="BCE reduction over the batch: sum (paper) or mean")] = "sum",
    max_len: MaxLenOpt = 512, subset: SubsetOpt = None, eval_subset: EvalSubsetOpt = None,
    data_seed: DataSeedOpt = 0,
    val_in_train: Annotated[Optional[bool], typer.Option(
        "--val-in-train/--no-val-in-train", help="train on train+val (default: by protocol)")] = None,
    clean_html: CleanOpt = False,
    n_embd: Annotated[int, int_option(help="embedding width")] = 384,
    n_hidden: Annotated[int, int_option(help="MLP width")] = 1536,
    n_blocks: Annotated[Optional[int], int_option(help="blocks (default: size)")] = None,
    n_heads: Annotated[Optional[int], int_option(help="heads (default: size)")] = None,
    dropout: Annotated[float, typer.Option(help="dropout")] = 0.2,
    norm: Annotated[str, typer.Option(help="post (paper) or pre LayerNorm")] = "post",
    pool: Annotated[str, typer.Option(help="cls (paper) or mean read-out")] = "cls",
    attn_impl: Annotated[str, typer.Option(help="sdpa (fused) or explicit softmax")] = "sdpa",
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on GPU for honest, fp32 for paper), fp32 or bf16")] = "auto",
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model")] = False,
    pad: Annotated[str, typer.Option(
        help="none (padding-free packed batches), hybrid (packed, attention padded: faster on CPU for short "
             "texts), dynamic (to the batch's longest review), max (to --max-len), or auto (none on GPU, "
             "dynamic on CPU)")] = "auto",
    pad_multiple: Annotated[int, int_option(help="round padded widths / packed token counts up to this")] = 8,
    eval_batch_size: Annotated[int, int_option(help="evaluation batch size (reviews, shared by members)")] = 500,
    nan_check_every: Annotated[int, int_option(help="check the loss for NaN/inf every N steps")] = 20,
    checkpoint_every: Annotated[int, int_option(help="checkpoint every N epochs")] = 1,
    out: OutOpt = None, overwrite: OverwriteOpt = False,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="continue from OUT's checkpoint")] = True,
    progress: ProgressOpt = True, data: DataOpt = None, cache: CacheOpt = None,
) -> None:
    """Train the encoder classifier: one run, or one per --seed and --p (an ensemble in one process
    by default, each run in OUT/<name>); an interrupted run resumes in the same --out.

    Create a file named STOP in a run folder (or an ensemble's) to finish cleanly after the
    current epoch (checkpoint, summary and report written); the same command later continues it.
    """
    t0 = time.perf_counter()
    from attnopt.experiments.imdb import EnsembleConfig, TrainConfig

    base = dict(protocol=protocol, dataset=dataset, max_len=max_len, subset=subset, eval_subset=eval_subset,
                data_seed=data_seed, val_in_train=val_in_train, clean_html=clean_html, size=size, n_blocks=n_blocks,
                n_heads=n_heads, n_embd=n_embd, n_hidden=n_hidden, dropout=dropout, norm=norm, pool=pool,
                attn_impl=attn_impl, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                md_normalize=md_normalize, md_impl=md_impl, md_nonfinite=md_nonfinite, batch_size=batch_size,
                loss=loss, loss_reduction=loss_reduction, max_epochs=max_epochs, target_train_acc=target_train_acc,
                init_seed=init_seed, device=device, precision=precision, compile=compile, pad=pad,
                pad_multiple=pad_multiple, eval_batch_size=eval_batch_size, nan_check_every=nan_check_every,
                checkpoint_every=checkpoint_every)
    if lr and len(lr) not in (1, len(p)):
        raise typer.BadParameter(f"give one --lr, or one per --p ({len(p)}); got {len(lr)}", param_hint="--lr")
    rates = (lr * len(p) if lr and len(lr) == 1 else lr) or [None] * len(p)
    with guard():
        cfgs = [TrainConfig.from_dict(base, p=pp, lr=rr, seed=s) for pp, rr in zip(p, rates) for s in seed]
        for c in cfgs:
            c.resolved_lr()  # a missing default learning rate is reported before any work
        if len(cfgs) > 1:
            ens = EnsembleConfig(members=tuple(cfgs))
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise fail("--out is required under torchrun (every process must write to the same run folder)")
    if out is None:
        from attnopt.report.runs import default_run_path

        tag = f"p{cfgs[0].p:g}" if cfgs[0].optimizer == "md" and len(p) == 1 else cfgs[0].optimizer
        out = default_run_path(f"imdb-{cfgs[0].dataset}-{tag}-s{size}")
    if len(cfgs) == 1:
        results = [_train_one(cfgs[0], out, overwrite, resume, progress, data, cache)]
    elif ensemble:
        results = _train_ensemble(ens, out, overwrite, resume, progress, data, cache)
    else:
        results = [_train_one(c, out / n, overwrite, resume, progress, data, cache) for c, n in zip(cfgs, ens.names)]
    if not _rank0():
        return
    con = console()
    for r in results:
        for note in r.notes:
            con.print(note, highlight=False)
    con.print(_summary_table(results))
    finish(con, out, t0, "IMDB training")
    errors = [r.error for r in results if r.error is not None]
    if errors:
        raise fail(f"{len(errors)} of {len(results)} runs stopped on a non-finite loss (the others finished): "
                   + " | ".join(str(e) for e in errors), 3)


def _open_train(out: Path, experiment: str, record: dict, overwrite: bool, resume: bool):
    """The training folder, opened by rank 0 (the others just use the path)."""
    from attnopt.experiments.imdb.train import check_resumable

    if not _rank0():
        return out
    if resume and not overwrite:
        with guard():
            check_resumable(out, record, experiment)
    return open_out(out, experiment, record, overwrite=overwrite, resumable=resume)


def _train_one(cfg, out: Path, overwrite: bool, resume: bool, progress: bool, data, cache):
    from attnopt.experiments.imdb.train import EXPERIMENT, run_record, run_train

    rd = _open_train(out, EXPERIMENT, run_record(cfg), overwrite, resume)
    with guard(out, resumable=True), progress_bars(progress and _rank0()) as cb:
        return run_train(cfg, out=rd, progress=cb, resume=resume, data_root=data, cache=cache)


def _train_ensemble(ens, out: Path, overwrite: bool, resume: bool, progress: bool, data, cache):
    from attnopt.experiments.imdb.train import ENSEMBLE, ensemble_record, run_ensemble

    rd = _open_train(out, ENSEMBLE, ensemble_record(ens), overwrite, resume)
    with guard(out, resumable=True), progress_bars(progress) as cb:
        return run_ensemble(ens, out=rd, progress=cb, resume=resume, data_root=data, cache=cache).members


def _summary_table(results):
    from rich.table import Table

    tab = Table(title="summary (test accuracy, %)")
    for col in ("run", "epochs", "stop", "honest (best val)", "best over epochs (paper)", "last", "s/epoch"):
        tab.add_column(col, overflow="fold")
    for r in results:
        s = r.summary
        tab.add_row(str(r.out or r.config.run_name()), str(s.get("epochs")), str(s.get("stop_reason")),
                    pct(s.get("honest_test_acc")), pct(s.get("paper_best_test_acc")), pct(s.get("last_test_acc")),
                    f"{s.get('mean_epoch_time_s', float('nan')):.2f}")
    return tab


@app.command()
def campaign(
    plan: Annotated[Path, typer.Argument(help="the plan (TOML), e.g. results/imdb/plan.toml")],
    budget: Annotated[float, typer.Option(help="seconds of training; then every trial in progress stops after its "
                                                "epoch and keeps its checkpoint in --work")] = 480.0,
    results: Annotated[Optional[Path], typer.Option(
        help="the results folder: complete trials are skipped, new records go to RESULTS/records "
             "(default: the plan's folder, e.g. results/imdb-cpu for results/imdb-cpu/plan.toml)")] = None,
    work: Annotated[Optional[Path], typer.Option(
        help="checkpoints of trials in progress (outside the records; default runs/campaign-work)")] = None,
    only: Annotated[Optional[List[str]], typer.Option(help="train only cells whose name starts with this "
                                                           "(repeatable)")] = None,
    device: Annotated[Optional[str], typer.Option(help="override the plan's device (auto, cpu, cuda)")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile",
                                                    help="override the plan's torch.compile setting")] = None,
    max_members: Annotated[Optional[int], int_option(help="trials per process (overrides the plan's)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what is complete and what is missing "
                                                            "per cell (with --shard: the shard's trials)")] = False,
    shard: Annotated[Optional[str], typer.Option(
        help="K/N: train only the K-th (0-based) of N disjoint parts of the plan (e.g. a Slurm array task's "
             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); the same on every machine")] = None,
    status: Annotated[bool, typer.Option(
        "--status", help="per cell across all workers: complete, claimed (by whom, since when), stale, missing, "
                         "and the training time left estimated from the recorded epoch times; trains nothing")] = False,
    stale_after: Annotated[float, typer.Option(
        help="seconds without a heartbeat after which another worker's claim is taken over (a claim of a "
             "process gone from this host is taken over at once)")] = 600.0,
    steal_stale: Annotated[bool, typer.Option(
        "--steal-stale", help="take over at once every claim not held by a live process on this host (when you "
                              "know its owner is gone, e.g. a requeued Slurm task with its --shard)")] = False,
    progress: ProgressOpt = True, data: DataOpt = None, cache: CacheOpt = None,
) -> None:
    """Train the plan's missing trials as ensembles until the budget is spent; each finished trial
    leaves a small record (config, history, summary, E4 statistics, E5 scores; no checkpoint).

    Any number of workers may run on one results folder (one per GPU, a Slurm array, several
    machines on a shared file system): each claims a trial before training it, so every trial
    is trained once; see docs/campaign_cluster.md."""
    t0 = time.perf_counter()
    from attnopt.experiments.imdb.campaign import CampaignConfig, run_campaign

    if results is None:
        results = plan.parent

    with guard():
        cfg = CampaignConfig(plan=str(plan), budget=budget, work=None if work is None else str(work),
                             only=tuple(only or ()), device=device, compile=compile, max_members=max_members,
                             dry_run=dry_run, shard=shard, stale_after=stale_after, steal_stale=steal_stale)
    if status:
        return _campaign_status(cfg, results)
    with guard(), progress_bars(progress and not dry_run) as cb:
        try:
            res = run_campaign(cfg, out=results, progress=cb, data_root=data, cache=cache)
        except KeyboardInterrupt as exc:
            what, code = interrupted(exc)
            raise fail(f"{what}; the complete records stay in {results / 'records'} and the trials in progress "
                       f"keep their last checkpoint in {cfg.work_dir()}: the same command resumes them", code) from None
    typer.echo(_status_table(res.status))
    con = console()
    if dry_run and cfg.shard is not None:
        typer.echo(f"shard {cfg.shard}: {len(res.shard)} missing trial(s)")
        for item in res.shard:
            typer.echo(f"  {item}")
    for label, items in (("recorded", [str(p) for p in res.recorded]),
                         ("left to the worker holding its claim", res.claimed_elsewhere),
                         ("stopped by the budget (resumable)", res.in_progress),
                         ("not started (budget spent)", res.not_started), ("failed", res.failed)):
        for item in items:
            con.print(f"{label}: {item}", highlight=False, markup=False)
    for note in res.notes:
        con.print(note, highlight=False, markup=False)
    con.print(f"{len(res.recorded)} new record(s); {res.missing} trial(s) still missing", highlight=False)
    if not dry_run:
        finish(con, results, t0, "IMDB campaign")
    if res.failed:
        raise fail(f"{len(res.failed)} trial(s) stopped on a non-finite loss: " + " | ".join(res.failed), 3)


def _campaign_status(cfg, results: Path) -> None:
    from attnopt.experiments.imdb.campaign_status import campaign_progress, format_progress
    from attnopt.experiments.imdb.plan import load_plan

    with guard():
        rows = campaign_progress(load_plan(cfg.plan), results, cfg.work_dir(), cfg.stale_after)
    typer.echo(format_progress(rows))


def _status_table(rows: list[dict]) -> str:
    from attnopt.report.tables import markdown_table

    body = [[r["cell"], r["group"], "–" if r["lr"] is None else f"{r['lr']:g}", f"{r['complete']} / {r['planned']}",
             r["waiting_for"] or (", ".join(map(str, r["missing_seeds"])) or "–"),
             ", ".join(r["same_trials_as"]) or "–"] for r in rows]
    return markdown_table(["cell", "kind", "lr", "complete", "missing seeds (or what it waits for)",
                           "its trials are recorded under"], body)


@app.command()
def table(
    runs: Annotated[List[Path], typer.Argument(help="run folders (or folders containing runs), or campaign results "
                                                    "folders (e.g. results/imdb; several are merged)")],
    out: Annotated[Optional[Path], typer.Option(help="also write the markdown table(s) to this file")] = None,
    csv: Annotated[Optional[Path], typer.Option(help="also write the (E3) rows as CSV to this file")] = None,
    figure: Annotated[Optional[Path], typer.Option(
        help="also draw accuracy per epoch (campaign: test accuracy, mean ± std band per cell) into this PNG")] = None,
    report: Annotated[Optional[Path], typer.Option(
        help="campaign records: the folder for tables.md, e3/e4/e5.csv and the figures "
             "(default: the first RESULTS folder's tables/)")] = None,
) -> None:
    """E3/E6 of run folders (mean ± std over seeds beside the paper's), or — given folders holding
    campaign records — the aggregated E3, E4 and E5 tables with the 95 % t-interval check.
    Several records folders (copied from several machines) are merged: a trial recorded in more
    than one counts once."""
    from attnopt.experiments.imdb.records import find_records
    from attnopt.report.runs import RunDir

    with guard():
        missing = [p for p in runs if not p.exists()]
        if missing:
            raise fail(f"{missing[0]}: no such run folder")
        if any(find_records(p) for p in runs if p.is_dir()):
            return _campaign_tables(runs, out, csv, figure, report)
        from attnopt.experiments.imdb import format_table, results_table, run_histories

        rows = results_table(runs)
        if not rows:
            raise fail("no runs with a finished epoch (summary.json) found in " + ", ".join(map(str, runs)))
        text = format_table(rows)
        typer.echo(text)
        if out is not None:
            RunDir(out.parent).write_text(out.name, text + "\n")
        if csv is not None:
            RunDir(csv.parent).write_csv(csv.name, rows=[
                {k: v for k, v in r.items() if k not in ("paper_ref", "duplicates")}
                | {"paper_ref": r["paper_ref"] and list(r["paper_ref"]), "duplicates": "; ".join(r["duplicates"])}
                for r in rows])
        if figure is not None:
            from attnopt.report.imdb_figures import epoch_curves_figure

            RunDir(figure.parent).save_figure(figure.name, epoch_curves_figure(run_histories(runs)))
            console().print(f"learning curves: {figure}")


def _campaign_tables(roots: List[Path], out, csv, figure, report) -> None:
    from attnopt.experiments.imdb.aggregate import aggregate, band_curves, e3_csv_rows, write_tables
    from attnopt.report.imdb_figures import band_curves_figure
    from attnopt.report.runs import RunDir

    agg = aggregate(roots)
    text = agg.markdown()
    typer.echo(text)
    if agg.duplicates:
        console().print(f"counted once (the same trial in several folders): {'; '.join(agg.duplicates)}",
                        highlight=False, markup=False)
    folder = report if report is not None else roots[0] / "tables"
    written = write_tables(agg, folder)
    if out is not None:
        RunDir(out.parent).write_text(out.name, text + "\n")
    if csv is not None:
        RunDir(csv.parent).write_csv(csv.name, rows=e3_csv_rows(agg))
    if figure is not None:
        RunDir(figure.parent).save_figure(figure.name, band_curves_figure(band_curves(agg)))
    console().print(f"tables and figures: {folder} ({len(written)} files)", highlight=False)


def _analysis_out(out: Optional[Path], experiment: str, cfg, overwrite: bool):
    """The analysis's folder: a path the experiment opens once the runs it reads have been checked
    (so a bad run folder leaves nothing behind), or, with --overwrite, the folder emptied now."""
    from attnopt.report.runs import default_run_path

    path = out if out is not None else default_run_path(experiment)
    return open_out(path, experiment, cfg, overwrite=True) if overwrite else path


@app.command()
def sparsity(
    runs: Annotated[List[Path], typer.Argument(help="run folders to compare (e.g. an ℓ1.1 and an ℓ2 run)")],
    levels: Annotated[str, typer.Option(help="pruning fractions, comma-separated")] = "0,0.5,0.7,0.8,0.9,0.95,0.99",
    split: Annotated[str, typer.Option(help="split for the pruning accuracy: val or test")] = "test",
    eval_subset: Annotated[Optional[int], int_option(help="evaluate pruning on a subset of the split")] = None,
    threshold: Annotated[float, typer.Option(help="count entries with |w| above this (paper: 0.06)")] = 0.06,
    near_zero: Annotated[float, typer.Option(help="'near zero' means |w| below this")] = 1e-3,
    prune: Annotated[bool, typer.Option("--prune/--no-prune", help="evaluate accuracy after magnitude pruning")] = True,
    device: DeviceOpt = "cpu",
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
    data: DataOpt = None, cache: CacheOpt = None,
) -> None:
    """E4: weight histograms, |w| > 0.06 counts, near-zero fraction, Hoyer sparsity, pruning curve."""
    t0 = time.perf_counter()
    from attnopt.experiments.imdb import find_runs
    from attnopt.experiments.imdb.sparsity import SparsityConfig, run_sparsity

    lv = parse_floats(levels, "--levels")
    with guard():  # the options first (errors name them), then the run folders
        cfg = SparsityConfig(runs=tuple(map(str, runs)), levels=tuple(lv), split=split, eval_subset=eval_subset,
                             threshold=threshold, near_zero=near_zero, prune=prune, device=device)
        cfg = cfg.replace(runs=tuple(map(str, find_runs(runs))))
    target = _analysis_out(out, "imdb-sparsity", cfg, overwrite)
    with guard(Path(target)), progress_bars(progress) as cb:
        res = run_sparsity(cfg, out=target, progress=cb, data_root=data, cache=cache)
    typer.echo(res.report)
    finish(console(), res.out, t0, "E4 sparsity")


@app.command("attention-map")
def attention_map(
    runs: Annotated[List[Path], typer.Argument(help="run folders to compare")],
    text: Annotated[Optional[List[str]], typer.Option(
        help="review text to draw (repeatable; default: probe reviews)")] = None,
    maps: Annotated[int, int_option(help="how many probe reviews to draw when no --text is given")] = 6,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="score the marked-word probe set")] = True,
    device: DeviceOpt = "cpu",
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True, data: DataOpt = None,
) -> None:
    """E5: [CLS] attention heat maps (HTML + PNG) and the marked-sentiment-word probe score."""
    t0 = time.perf_counter()
    from attnopt.experiments.imdb import find_runs
    from attnopt.experiments.imdb.attention import AttentionConfig, run_attention

    with guard():  # the options first (errors name them), then the run folders
        cfg = AttentionConfig(runs=tuple(map(str, runs)), texts=tuple(text or ()), maps=maps, probe=probe,
                              device=device)
        cfg = cfg.replace(runs=tuple(map(str, find_runs(runs))))
    target = _analysis_out(out, "imdb-attention", cfg, overwrite)
    with guard(Path(target)), progress_bars(progress) as cb:
        res = run_attention(cfg, out=target, progress=cb, data_root=data)
    if probe:
        typer.echo(res.report)
    finish(console(), res.out, t0, "E5 attention maps")

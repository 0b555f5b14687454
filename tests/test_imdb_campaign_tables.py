"""Issue 18: the aggregated E3/E4/E5 tables of campaign records (hand-made records with known
numbers), the t-interval check, and the `imdb campaign` / `imdb table` commands' wiring."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from attnopt.cli import app
from attnopt.experiments.imdb.aggregate import aggregate, t_interval
from attnopt.experiments.imdb.records import HIST_EDGES, RECORD_FILES, find_records
from attnopt.report.runs import RunDir
from imdb_fixtures import HAVE_DATA

runner = CliRunner()


def _record(root, cell, seed, *, p=1.1, size=3, best=0.83, above=(100, 200, 300), authors=(0.5, 0.25), epochs=3,
            optimizer="md", group=None, maps=True):
    """A complete record with chosen numbers (the layout write_record leaves; ``group=None``: a
    record written before records named their plan block; ``maps=False``: one written before
    records kept the authors' probes' whole maps)."""
    rd = RunDir(root / "records" / cell / f"seed{seed}-init0")
    cfg = {"experiment": "imdb-train", "dataset": "imdb", "protocol": "paper", "size": size, "optimizer": optimizer,
           "p": p, "lr": 1e-3, "seed": seed, "init_seed": 0, "max_len": 512}
    rd.write_json("config.json", {"config": cfg, "meta": {}})
    rows = [{"epoch": e, "train_acc": 0.5 + 0.1 * e, "test_acc": best - 0.01 * (epochs - e), "val_acc": 0.5}
            for e in range(1, epochs + 1)]
    rd.write_csv("history.csv", rows=rows)
    rd.write_text("report.md", "# record\n")
    hist = [0] * (len(HIST_EDGES) - 1)
    hist[40] = 1000
    stats = {t: {"entries": 1000, "above_threshold": a, "max_abs": a / 1000} for t, a in zip("QKVO", above + (1,))}
    rd.write_json("e4.json", {"stats": stats | {"MLP": stats["O"]}, "hist_edges": list(HIST_EDGES),
                              "histograms": {t: hist for t in ("Q", "K", "V", "O", "MLP")},
                              "pruning": [{"level": 0.0, "accuracy": best}, {"level": 0.5, "accuracy": best - 0.1}]})
    e5 = {name: {"n": len(scores), "mean_score": float(np.mean(scores)), "top_hits": 1,
                 "probes": [{"index": i, "score": s, "rank": 1}
                            | ({"tokens": ["the", "film", f"w{i}"], "map": [0.0, 1.0 - s, s], "marked": [2]}
                               if name == "authors" and maps else {}) for i, s in enumerate(scores)]}
          for name, scores in (("ours", authors), ("authors", authors))}
    rd.write_json("e5.json", e5)
    rd.write_summary({"epochs": epochs, "paper_best_test_acc": best, "honest_test_acc": None, "last_test_acc": best,
                      "lr": 1e-3, "seed": seed, "init_seed": 0,
                      "best_val_acc": best,
                      "record": {"trial": f"k{cell}{seed}", "cell": cell, "files": list(RECORD_FILES)}
                      | ({"group": group} if group else {})})
    return rd.path


@pytest.fixture
def records(tmp_path):
    root = tmp_path / "results"
    for seed, best in enumerate((0.8340, 0.8350, 0.8355)):  # mean 83.48: the paper's 83.47 inside the CI
        _record(root, "paper-s3-p1.1", seed, best=best, above=(100 + seed, 200, 300), authors=(0.6, 0.2))
    for seed, best in enumerate((0.8000, 0.8010, 0.8020)):  # mean 80.10: the paper's 81.66 outside
        _record(root, "paper-s3-p2", seed, p=2.0, best=best, above=(150, 250, 350), authors=(0.5, 0.3))
    _record(root, "paper-s6-p3", 0, p=3.0, size=6, best=0.80)
    RunDir(root / "records" / "paper-s3-p2" / ".seed9-init0.tmp-1").write_text("summary.json", "{}")  # unfinished
    return root


def test_t_interval_is_student_t():
    lo, hi = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n), s = 1
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(v) for v in t_interval([5.0]))


def test_e3_rows_aggregate_the_trials_and_check_the_paper_against_our_interval(records):
    agg = aggregate(records)
    rows = {r["cell"]: r for r in agg.e3}
    assert list(rows) == ["paper-s3-p1.1", "paper-s3-p2", "paper-s6-p3"]
    r = rows["paper-s3-p1.1"]
    assert r["n"] == 3 and r["best_mean"] == pytest.approx(83.4833, abs=1e-4)
    assert r["best_std"] == pytest.approx(np.std([83.40, 83.50, 83.55], ddof=1))
    assert r["paper"][0] == 83.47 and r["paper_inside_ci"] is True
    assert rows["paper-s3-p2"]["paper_inside_ci"] is False
    assert rows["paper-s6-p3"]["n"] == 1 and rows["paper-s6-p3"]["paper_inside_ci"] is None  # one trial: no interval
    assert r["epochs_mean"] == 3.0 and math.isnan(r["honest_mean"])


def test_e4_and_e5_rows_and_the_l11_against_l2_pairs(records):
    agg = aggregate(records)
    e4 = {r["cell"]: r for r in agg.e4}["paper-s3-p1.1"]
    assert e4["Q_above_mean"] == pytest.approx(101.0) and e4["Q_above_std"] == pytest.approx(1.0)
    assert e4["K_max_mean"] == pytest.approx(0.2) and e4["pruning"][0.5][0] == pytest.approx(73.4833, abs=1e-4)
    e5 = {(r["cell"], r["probes"]): r for r in agg.e5}
    assert e5[("paper-s3-p1.1", "authors")]["score_mean"] == pytest.approx(0.4)
    (pair,) = [p for p in agg.e5_pairs if p["probes"] == "authors"]
    # per pair: probe 0 (0.6 > 0.5) won, probe 1 (0.2 < 0.3) lost; means 0.4 vs 0.4 are equal
    assert (pair["cell_l11"], pair["cell_l2"], pair["pairs"]) == ("paper-s3-p1.1", "paper-s3-p2", 3)
    assert (pair["probe_wins"], pair["probe_losses"], pair["probe_comparisons"], pair["pairs_l11_higher_mean"]) == \
        (3, 3, 6, 0)
    assert "| 3 / 3 / 0 of 6 |" in aggregate(records).markdown()
    text = agg.markdown()
    assert "| paper-s3-p1.1 | imdb | paper | 3 | MD p=1.1 | 0.001 | 3 | 83.48 ± 0.08 |" in text
    assert "Student-t" in text


def test_table_command_aggregates_a_results_folder_and_writes_tables_and_figures(records, tmp_path):
    res = runner.invoke(app, ["imdb", "table", str(records), "--out", str(tmp_path / "t.md")])
    assert res.exit_code == 0, res.output
    assert "E3 — test accuracy" in res.stdout and "E4 — weight sparsity" in res.stdout and "E5" in res.stdout
    names = {p.name for p in (records / "tables").iterdir()}
    assert {"tables.md", "e3.csv", "e4.csv", "e5.csv", "e5_pairs.csv", "learning_curves.png",
            "weight_histograms.png", "e5_heatmaps.png"} <= names
    assert (tmp_path / "t.md").read_text().startswith("## E3")
    assert len(find_records(records)) == 7  # the unfinished (hidden, temporary) folder is not a record


def test_campaign_command_wiring(tmp_path, monkeypatch):
    from attnopt.experiments.imdb import campaign as campaign_mod

    seen = {}

    def fake(cfg, *, out, progress, data_root, cache):
        seen.update(cfg=cfg, out=out)
        return campaign_mod.CampaignResult(out, [{"cell": "c", "group": "cell", "planned": 2, "complete": 1,
                                                  "missing": 1, "missing_seeds": [4], "waiting_for": None,
                                                  "same_trials_as": [], "lr": 1e-3}], missing=1)

    monkeypatch.setattr(campaign_mod, "run_campaign", fake)
    plan = tmp_path / "plan.toml"
    res = runner.invoke(app, ["imdb", "campaign", str(plan), "--budget", "30", "--results", str(tmp_path / "r"),
                              "--work", str(tmp_path / "w"), "--only", "paper-s3", "--device", "cpu", "--max-members", "3",
                              "--compile", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.plan, cfg.budget, cfg.work, cfg.only, cfg.device, cfg.max_members, cfg.compile, cfg.dry_run) == (
        str(plan), 30.0, str(tmp_path / "w"), ("paper-s3",), "cpu", 3, True, False)
    assert seen["out"] == tmp_path / "r" and "| c | cell | 0.001 | 1 / 2 | 4 | – |" in res.stdout
    assert "1 trial(s) still missing" in res.stdout


@pytest.mark.parametrize("args, part", [
    (["--budget", "0"], "budget"),
    (["--budget", "-5"], "budget"),
    (["--max-members", "0"], "max_members"),
])
def test_campaign_bad_options_are_one_line_errors(tmp_path, args, part):
    res = runner.invoke(app, ["imdb", "campaign", str(tmp_path / "plan.toml"), "--no-progress", *args])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and part in lines[0], res.stderr


def test_campaign_with_a_broken_plan_is_one_line_error(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text("[[cell]\nname = ")
    res = runner.invoke(app, ["imdb", "campaign", str(plan), "--dry-run", "--results", str(tmp_path / "r")])
    assert res.exit_code == 2 and res.stderr.startswith("error: plan: ") and "not valid TOML" in res.stderr
    assert "Traceback" not in res.output


def test_campaign_dry_run_on_the_plan_of_record_lists_every_cell(tmp_path):
    plan = Path(__file__).resolve().parents[1] / "results" / "imdb" / "plan.toml"
    res = runner.invoke(app, ["imdb", "campaign", str(plan), "--dry-run", "--results",
                              str(tmp_path / "empty")])
    assert res.exit_code == 0, res.output
    assert "| paper-s6-p1.1 | cell | 0.001 | 0 / 5 |" in res.stdout
    assert "| sst2-honest-s3-adam | cell | – | 0 / 5 | sweep sst2-lr |" in res.stdout
    assert "| e4-s6-matched-p2 | cell | 0.001 | 0 / 5 | 0, 1, 2, 3, 4 | paper-s6-p2 |" in res.stdout
    assert not (tmp_path / "empty").exists()


def test_campaign_results_default_to_the_plans_folder(tmp_path):
    # the CPU plan's committed sweep records count without --results (they live beside the plan)
    plan = Path(__file__).resolve().parents[1] / "results" / "imdb-cpu" / "plan.toml"
    res = runner.invoke(app, ["imdb", "campaign", str(plan), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "| cpu-lr-p2-lr0.0002 | sweep | 0.0002 | 1 / 1 | – | – |" in res.stdout
    copy = tmp_path / "plan.toml"
    copy.write_text(plan.read_text())
    res = runner.invoke(app, ["imdb", "campaign", str(copy), "--dry-run"])
    assert res.exit_code == 0 and "| cpu-lr-p2-lr0.0002 | sweep | 0.0002 | 0 / 1 | 0 | – |" in res.stdout
    assert not (tmp_path / "records").exists()


def test_sst2_cpu_plan_expands_to_hybrid_sst2_trials_without_a_final_test():
    """The SST-2 CPU plan: 18 one-seed sweep trials, then six 10-epoch and two 20-epoch 5-seed
    cells, every trial on SST-2 in the hybrid layout, tested on all of GLUE dev (no final_test)."""
    from attnopt.experiments.imdb.plan import load_plan, resolve_sweeps

    root = Path(__file__).resolve().parents[1] / "results" / "sst2-cpu"
    plan = load_plan(root / "plan.toml")
    sweeps = [t for t in plan.trials() if t.group == "sweep"]
    assert len(sweeps) == 18 and all(t.config.max_epochs == 3 for t in sweeps)
    resolve_sweeps(plan, {})  # no record: the cells wait for the sweep
    assert [t for t in plan.trials() if t.group == "cell"] == []
    for t in sweeps:
        c = t.config
        assert (c.dataset, c.pad, c.final_test, c.eval_subset, c.subset, c.max_len) == ("sst2", "hybrid", None, None,
                                                                                       10000, 64)
    res = runner.invoke(app, ["imdb", "campaign", str(root / "plan.toml"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "| sst-lr-adam-lr0.001 | sweep | 0.001 | 1 / 1 | – | – |" in res.stdout
    assert "| sst-s3-long-p2 | cell | 0.0004 |" in res.stdout


def test_campaign_interrupted_says_what_is_kept(tmp_path, monkeypatch):
    from attnopt.experiments.imdb import campaign as campaign_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(campaign_mod, "run_campaign", interrupted)
    res = runner.invoke(app, ["imdb", "campaign", str(tmp_path / "plan.toml"), "--results", str(tmp_path / "r"),
                              "--work", str(tmp_path / "w"), "--no-progress"])
    assert res.exit_code == 130
    assert res.stderr.startswith("error: interrupted;") and str(tmp_path / "w") in res.stderr
    assert "resumes them" in res.stderr and "Traceback" not in res.output


@pytest.mark.skipif(not HAVE_DATA, reason="shared data folder not available")
def test_campaign_then_table_end_to_end_on_a_real_subset(tmp_path):
    """The command line alone: the plan's data loaded from the shared folder (a 120-sentence
    SST-2 subset), two trials in one ensemble, records, then the aggregated table."""
    plan = tmp_path / "plan.toml"
    plan.write_text("""
[campaign]
prune_levels = [0.0, 0.9]
[defaults]
dataset = "sst2"
subset = 120
eval_subset = 40
max_len = 32
n_embd = 32
n_hidden = 64
batch_size = 20
device = "cpu"
max_epochs = 2
[[cell]]
name = "cli"
protocol = "honest"
size = 1
optimizer = "md"
p = [1.1, 2.0]
lr = 1e-2
seeds = [0]
""")
    results = tmp_path / "results"
    args = ["imdb", "campaign", str(plan), "--budget", "120", "--results", str(results), "--work", str(tmp_path / "w"),
            "--cache", str(tmp_path / "cache"), "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 new record(s); 0 trial(s) still missing" in res.stdout
    res = runner.invoke(app, ["imdb", "table", str(results)])
    assert res.exit_code == 0, res.output
    assert "| cli-p1.1 | sst2 | honest | 1 | MD p=1.1 | 0.01 | 1 |" in res.stdout
    assert "| cli-p1.1 | cli-p2 | authors | 1 |" in res.stdout


def test_verdicts_test_the_two_cells_samples_with_welch_and_holm(records):
    """ℓ1.1 vs ℓ2 from the fixture: accuracy 83.48 vs 80.10 % (n = 3 each), Q+K+V counts 601 vs
    750, equal E5 means; each verdict from Welch's test between the cells, Holm across the table."""
    from scipy import stats as sps

    from attnopt.experiments.imdb.verdicts import claims

    rows = {r["claim"]: r for r in claims(aggregate(records).cells) if r["size"] == 3}
    acc = rows["ℓ1.1 more accurate than ℓ2"]
    ref = sps.ttest_ind([83.40, 83.50, 83.55], [80.00, 80.10, 80.20], equal_var=False)
    assert acc["test"].p == pytest.approx(float(ref.pvalue), rel=1e-6)
    assert acc["metric"].startswith("best test")  # the paper protocol has no honest number
    ps = [r["test"].p for r in rows.values()]
    from attnopt.report.stats import holm

    assert [r["p_holm"] for r in rows.values()] == pytest.approx(holm(ps), nan_ok=True)
    assert acc["verdict"] == "holds" and rows["ℓ1.1 sparser than ℓ2"]["verdict"] == "holds"
    assert rows["ℓ1.1 selects sentiment tokens more sharply than ℓ2 (authors probes)"]["verdict"] == "inconclusive"
    assert "ℓ1.1 more accurate than ℓ3" not in rows  # the size-6 ℓ3 cell is another table
    text = aggregate(records).markdown()
    assert "## Verdicts" in text and "| holds |" in text


def test_sweep_records_get_their_own_table_and_never_a_verdict(records):
    """A sweep trial (one seed, a short cap) of ℓ1.1 far better than the cell must change no
    E3–E5 row and no verdict; it shows in the sweep table only."""
    before = aggregate(records)
    _record(records, "sw-p1.1-lr0.01", 0, best=0.99, group="sweep")
    _record(records, "sw-p2-lr0.01", 0, p=2.0, best=0.51, group="sweep")
    agg = aggregate(records)
    assert [r["cell"] for r in agg.e3] == [r["cell"] for r in before.e3]
    assert list(agg.sweeps) == ["sw-p1.1-lr0.01", "sw-p2-lr0.01"] and "sw-p1.1-lr0.01" not in agg.cells
    from attnopt.experiments.imdb.verdicts import claims

    assert [(r["a"], r["b"], r["verdict"]) for r in claims(agg.cells)] == \
        [(r["a"], r["b"], r["verdict"]) for r in claims(before.cells)]
    text = agg.markdown()
    assert "## Learning-rate sweep" in text and "| sw-p1.1-lr0.01 | imdb | paper | 3 | MD p=1.1 | 0.001 | 1 | 3.0 | 99.00 |" in text
    assert "| sw-p1.1-lr0.01 | imdb | paper | 3 | MD p=1.1 | 0.001 | 1 | 83.40" not in text.split("## Learning")[0]
    # sweep records alone: no cell tables, no figures
    only = records.parent / "only"
    _record(only, "sw-p1.1-lr0.01", 0, group="sweep")
    alone = aggregate(only)
    assert not alone.cells and "no cell recorded yet" in alone.markdown()


def test_the_cell_with_most_trials_speaks_for_its_optimizer_and_is_named(records):
    """A second, one-trial ℓ2 cell in the same table does not replace the three-trial one."""
    from attnopt.experiments.imdb.verdicts import claims

    _record(records, "zz-extra-p2", 0, p=2.0, best=0.90)
    rows = {r["claim"]: r for r in claims(aggregate(records).cells) if r["size"] == 3}
    assert rows["ℓ1.1 more accurate than ℓ2"]["b"] == "paper-s3-p2"
    assert "| paper-s3-p1.1: 83.48 ± 0.08 (n=3) | paper-s3-p2: 80.10 ± 0.10 (n=3) |" in aggregate(records).markdown()


def test_e5_heat_map_data_is_the_mean_map_over_a_cells_trials(records):
    from attnopt.experiments.imdb.aggregate import mean_probe_maps

    _record(records, "old-p3", 0, p=3.0, maps=False)  # an older record: no maps, left out of the figure
    probes, maps = mean_probe_maps(aggregate(records), size=3)
    assert [p["index"] for p in probes] == [0, 1] and probes[0]["tokens"] == ["the", "film", "w0"]
    assert list(maps) == ["MD p=1.1 (paper-s3-p1.1, n=3)", "MD p=2 (paper-s3-p2, n=3)"]
    assert maps["MD p=1.1 (paper-s3-p1.1, n=3)"][0] == pytest.approx([0.0, 0.4, 0.6])
    assert maps["MD p=2 (paper-s3-p2, n=3)"][1] == pytest.approx([0.0, 0.7, 0.3])
    assert list(mean_probe_maps(aggregate(records))[1]) == ["MD p=3 (paper-s6-p3, n=1)"]  # default: the largest size


def test_writing_the_tables_again_removes_what_the_records_no_longer_give(records, tmp_path):
    from attnopt.experiments.imdb.aggregate import write_tables

    folder = tmp_path / "tables"
    assert "e5_pairs.csv" in {p.name for p in write_tables(aggregate(records), folder)}
    shutil.rmtree(records / "records" / "paper-s3-p2")  # no ℓ2 cell: no ℓ1.1-ℓ2 pairs
    names = {p.name for p in write_tables(aggregate(records), folder)}
    assert "e5_pairs.csv" not in names and sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_a_cell_at_another_scale_is_not_checked_against_the_papers_mean(records):
    """A narrower model's interval says nothing about the paper's number: context only."""
    _record(records, "small-p1.1", 0, best=0.58)
    _record(records, "small-p1.1", 1, best=0.59)
    for f in (records / "records" / "small-p1.1").glob("*/config.json"):
        cfg = json.loads(f.read_text())
        cfg["config"] |= {"n_embd": 96, "n_hidden": 384, "max_len": 128, "subset": 10000}
        f.write_text(json.dumps(cfg))
    agg = aggregate(records)
    rows = {r["cell"]: r for r in agg.e3}
    assert rows["small-p1.1"]["paper"][0] == 83.47 and rows["small-p1.1"]["paper_inside_ci"] is None
    assert rows["paper-s3-p1.1"]["paper_inside_ci"] is True
    assert "| 83.47 ± 0.09 [82.57], 72 | other scale |" in agg.markdown()


def test_cells_of_another_epoch_cap_make_a_table_of_their_own(records):
    """A longer ℓ1.1 / ℓ2 pair answers another question: its own claims, its own Holm family."""
    from attnopt.experiments.imdb.verdicts import claims

    for seed in range(3):
        for cell, p, best in (("long-p1.1", 1.1, 0.86 + seed / 1000), ("long-p2", 2.0, 0.84 + seed / 1000)):
            path = _record(records, cell, seed, p=p, best=best)
            summary = json.loads((path / "summary.json").read_text())
            (path / "summary.json").write_text(json.dumps(summary | {"max_epochs": 30}))
    rows = [r for r in claims(aggregate(records).cells) if r["size"] == 3]
    pairs = {(r["a"], r["b"]) for r in rows if r["claim"] == "ℓ1.1 more accurate than ℓ2"}
    assert pairs == {("paper-s3-p1.1", "paper-s3-p2"), ("long-p1.1", "long-p2")}
    long = [r for r in rows if r["max_epochs"] == 30]
    from attnopt.report.stats import holm

    assert [r["p_holm"] for r in long] == pytest.approx(holm([r["test"].p for r in long]), nan_ok=True)
    assert "| imdb paper size 3, ≤ 30 epochs | ℓ1.1 more accurate than ℓ2 |" in aggregate(records).markdown()
    assert {(p["cell_l11"], p["cell_l2"]) for p in aggregate(records).e5_pairs if p["probes"] == "ours"} == \
        {("paper-s3-p1.1", "paper-s3-p2"), ("long-p1.1", "long-p2")}

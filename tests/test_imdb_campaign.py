"""Issue 18: the campaign (plan, budget, resume, records) on a tiny CPU plan, the authors' E5
probes, and the plan of record."""

import json
import shutil
import time
import tomllib
from pathlib import Path

import pytest

from attnopt.experiments.imdb import campaign as campaign_mod
from attnopt.experiments.imdb.campaign import run_campaign
from attnopt.experiments.imdb.plan import PlanError, load_plan, parse_plan, resolve_sweeps
from attnopt.experiments.imdb.records import RECORD_FILES, compact_history, record_complete, record_size
from imdb_fixtures import easy_data, needs_data  # noqa: F401  (easy_data: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
PLAN_OF_RECORD = Path(__file__).resolve().parents[1] / "results" / "imdb" / "plan.toml"

TINY_PLAN = """
[campaign]
max_members = 4
prune_levels = [0.0, 0.5]

[defaults]
dataset = "sst2"
max_len = 32
n_embd = 32
n_hidden = 64
batch_size = 20
device = "cpu"
max_epochs = 3
target_train_acc = 0.995
protocol = "honest"
size = 1

[[cell]]
name = "tiny"
optimizer = "md"
p = [1.1, 2.0]
lr = 1e-2
seeds = [0, 1]

[[cell]]
name = "tiny-adam"
optimizer = "adam"
lr = 1e-3
seeds = [0]
"""


def _plan(tmp_path, text=TINY_PLAN):
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


def _cfg(plan, tmp_path, budget=600.0, work="work"):
    return {"plan": str(plan), "budget": budget, "work": str(tmp_path / work)}


# --------------------------------------------------------------------------- the plan


def test_plan_expands_cells_and_writes_the_defaults_into_each_trial(tmp_path):
    plan = load_plan(_plan(tmp_path))
    assert [c.name for c in plan.cells] == ["tiny-p1.1", "tiny-p2", "tiny-adam"]
    trials = plan.trials()
    assert len(trials) == 5 and len({t.key for t in trials}) == 5
    t = trials[0]
    assert (t.config.lr, t.config.init_seed, t.name) == (1e-2, 0, "seed0-init0")  # honest: own init = seed
    assert t.record_path(tmp_path) == tmp_path / "records" / "tiny-p1.1" / "seed0-init0"


def test_the_same_trial_named_by_two_cells_is_one_trial():
    text = TINY_PLAN + '\n[[cell]]\nname = "again"\noptimizer = "md"\np = 1.1\nlr = 0.01\nseeds = [1, 5]\n'
    plan = parse_plan(tomllib.loads(text))
    assert len(plan.trials()) == 6  # seed 1 of "again" is tiny-p1.1's seed 1
    shared = [t for t in plan.trials() if t.config.seed == 1 and t.config.p == 1.1 and t.config.optimizer == "md"]
    assert [t.cell for t in shared] == ["tiny-p1.1"]


@pytest.mark.parametrize("edit, msg", [
    ('seeds = [0, 1]', None),
    ('seeds = []', "seeds must be a non-empty list"),
    ('seeds = [0, 0]', "seeds repeat"),
    ('seeds = [0]\ncolour = "red"', "unknown key(s) colour"),
    ('seeds = [0]\nlr = "fast"', "'sweep:NAME'"),
    ('seeds = [0]\nlr = "sweep:nowhere"', "names no [[sweep]] block"),
    ('seeds = [0]\ninit_seeds = [1, 2]', "init_seeds has 2 entries for 1 seeds"),
    ('seeds = [0]\nmomentum = 2.0', "momentum"),
])
def test_a_bad_cell_is_a_plan_error_naming_it(tmp_path, edit, msg):
    text = TINY_PLAN.replace('lr = 1e-3\nseeds = [0]', edit if "lr" in edit else "lr = 1e-3\n" + edit)
    if msg is None:
        load_plan(_plan(tmp_path, text))
        return
    with pytest.raises(PlanError, match="tiny-adam") as exc:
        load_plan(_plan(tmp_path, text))
    assert msg in str(exc.value) and exc.value.exit_code == 2


def test_a_cell_waits_for_its_sweep_then_takes_the_best_validation_rate():
    text = TINY_PLAN + """
[[sweep]]
name = "sw"
optimizer = "adam"
lr = [1e-4, 1e-3]
seeds = [0]
max_epochs = 2

[[cell]]
name = "main"
optimizer = "adam"
lr = "sweep:sw"
seeds = [0, 1]
"""
    plan = parse_plan(tomllib.loads(text))
    sweep = [c for c in plan.cells if c.group == "sweep"]
    assert [c.name for c in sweep] == ["sw-adam-lr0.0001", "sw-adam-lr0.001"]
    main = next(c for c in plan.cells if c.name == "main")
    assert main.trials == [] and resolve_sweeps(plan, {})["main"]["missing"] == 2
    done = {sweep[0].trials[0].key: {"best_val_acc": 0.71}}
    assert resolve_sweeps(plan, done)["main"]["lr"] is None  # one sweep trial still missing
    done[sweep[1].trials[0].key] = {"best_val_acc": 0.80}
    got = resolve_sweeps(plan, done)["main"]
    assert got["lr"] == 1e-3 and got["means"] == {1e-4: 0.71, 1e-3: 0.80}
    assert [t.config.lr for t in main.trials] == [1e-3, 1e-3]
    # a 2-epoch sweep trial is not the main cell's seed-0 trial at the same rate
    assert main.trials[0].key != sweep[1].trials[0].key


def test_the_plan_of_record_holds_the_cells_issue_18_lists():
    from attnopt.experiments.imdb.config import PAPER_LR

    plan = load_plan(PLAN_OF_RECORD)
    cells = {c.name: c for c in plan.cells}
    for size in (3, 4, 6):
        for p in (1.1, 2.0, 3.0):
            c = cells[f"paper-s{size}-p{p:g}"]
            cfgs = [t.config for t in c.trials]
            assert len(cfgs) >= 5 and {x.protocol for x in cfgs} == {"paper"} and len({x.seed for x in cfgs}) >= 5
            assert {x.init_seed for x in cfgs} == {0} and {x.lr for x in cfgs} == {PAPER_LR[p][size]}
    for p in (1.1, 2.0, 3.0):
        inits = {t.config.init_seed for t in cells[f"paper-s3-owninit-p{p:g}"].trials}
        assert len(inits) >= 3 and 0 not in inits
    for tag in ("p1.1", "p2", "p3", "adam", "adamw", "sgd"):
        cfgs = [t.config for t in cells[f"honest-s3-{tag}"].trials]
        assert len(cfgs) >= 5 and {(x.protocol, x.size, x.dataset) for x in cfgs} == {("honest", 3, "imdb")}
    for p in (1.1, 2.0):
        assert {t.config.lr for t in cells[f"e4-s6-matched-p{p:g}"].trials} == {1e-3}
    for tag in ("p1.1", "p2", "p3", "adam", "adamw"):
        c = cells[f"sst2-honest-s3-{tag}"]
        assert c.lr_sweep == "sst2-lr" and len(c.seeds) >= 5 and c.base["dataset"] == "sst2"
        assert any(s.group == "sweep" and s.name.startswith(f"sst2-lr-{tag}-") for s in plan.cells)


# --------------------------------------------------------------------------- the authors' probes


@needs_data
def test_the_authors_probe_set_keeps_44_of_50_by_their_rule():
    from attnopt.data.reviews import load_tokenizer
    from attnopt.experiments.imdb.probe import authors_probes

    tok = load_tokenizer()
    usable, excluded = authors_probes(tok)
    assert len(usable) == 44
    assert dict(excluded) == {11: "not in the sentence", 33: "not in the sentence", 48: "not in the sentence",
                              24: "split into several word pieces", 27: "split into several word pieces",
                              29: "split into several word pieces"}
    idx, first = usable[0]
    assert (idx, first.text[first.start:first.end], first.label) == (0, "fantastic", 1)


@needs_data
def test_the_authors_score_normalises_over_the_tokens_without_cls_and_sep(monkeypatch):
    import numpy as np
    import torch

    from attnopt.data.reviews import load_tokenizer
    from attnopt.experiments.imdb import attention
    from attnopt.experiments.imdb.probe import authors_probes

    tok = load_tokenizer()
    _, probe = authors_probes(tok)[0][0]  # "The movie was fantastic": [CLS] the movie was fantastic [SEP]
    raw = np.array([0.5, 0.1, 0.2, 0.05, 0.15, 0.0])
    monkeypatch.setattr(attention, "cls_attention", lambda model, ids, layer=-1: raw)
    content = attention.score_probe(torch.nn.Identity(), [probe], 32, tok, over="content")[0]
    full = attention.score_probe(torch.nn.Identity(), [probe], 32, tok, over="all")[0]
    assert content["score"] == pytest.approx((0.15 - 0.05) / (0.2 - 0.05))
    assert full["score"] == pytest.approx(0.15 / 0.5)
    assert content["rank"] == 2  # "movie" (0.2) above "fantastic"
    # the whole map over the tokens without [CLS]/[SEP], from which the E5 heat maps are drawn
    assert content["tokens"] == ["the", "movie", "was", "fantastic"] and content["marked"] == [3]
    assert content["map"] == pytest.approx([(0.1 - 0.05) / 0.15, 1.0, 0.0, (0.15 - 0.05) / 0.15])
    assert full["map"] == pytest.approx([0.1 / 0.5, 0.2 / 0.5, 0.05 / 0.5, 0.15 / 0.5])


def test_a_trial_knows_the_plan_block_it_came_from():
    plan = parse_plan(tomllib.loads('''
[[sweep]]
name = "sw"
optimizer = "adam"
lr = [1e-4]
seeds = [0]
max_epochs = 2
[[cell]]
name = "main"
optimizer = "adam"
lr = 1e-3
seeds = [0, 1]
'''))
    assert {(t.cell, t.group) for t in plan.trials()} == {("sw", "sweep"), ("main", "cell")}


# --------------------------------------------------------------------------- the campaign


@needs_data
def test_campaign_records_every_trial_small_and_complete_then_skips_them(easy_data, tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    res = run_campaign(_cfg(plan, tmp_path), out=tmp_path / "res", data=easy_data)
    assert len(res.recorded) == 5 and res.missing == 0 and not res.in_progress and not res.failed
    for rec in res.recorded:
        assert record_complete(rec) and sorted(p.name for p in rec.iterdir()) == sorted(RECORD_FILES)
        assert record_size(rec) < 200_000
        e4, e5 = json.loads((rec / "e4.json").read_text()), json.loads((rec / "e5.json").read_text())
        assert {"Q", "K", "V"} <= set(e4["stats"]) and [p["level"] for p in e4["pruning"]] == [0.0, 0.5]
        assert sum(e4["histograms"]["Q"]) == e4["stats"]["Q"]["entries"]
        assert (e5["ours"]["n"], e5["authors"]["n"]) == (60, 44)
        assert all(0.0 <= p["score"] <= 1.0 for p in e5["authors"]["probes"])
        for probe in e5["authors"]["probes"]:  # the whole map, its marked pieces holding the score
            assert len(probe["tokens"]) == len(probe["map"]) and probe["marked"]
            assert max(probe["map"][j] for j in probe["marked"]) == pytest.approx(probe["score"], abs=5e-4)
        assert all("map" not in p for p in e5["ours"]["probes"])  # the long reviews: scores only
        assert json.loads((rec / "summary.json").read_text())["record"]["group"] == "cell"
    assert not list((tmp_path / "work").glob("ens-*"))  # every member recorded: work folders removed
    assert all(r["complete"] == r["planned"] for r in res.status)

    def no_training(*a, **k):
        raise AssertionError("a complete trial was trained again")

    monkeypatch.setattr("attnopt.experiments.imdb.train.run_ensemble", no_training)
    again = run_campaign(_cfg(plan, tmp_path), out=tmp_path / "res", data=easy_data)
    assert again.recorded == [] and again.missing == 0


def _jump_clock(monkeypatch):
    """The campaign's clock jumps past any deadline once the first training step has been
    taken; returns the progress function that sees the step."""
    state = {"jumped": False}
    real = time.monotonic

    class Clock:
        @staticmethod
        def monotonic():
            return real() + (1e6 if state["jumped"] else 0.0)

    def progress(label, advance, total):
        if label == "steps" and not state["jumped"]:
            state["jumped"] = True
            time.sleep(0.5)  # the deadline watcher puts the STOP file down before the epoch ends

    monkeypatch.setattr(campaign_mod, "time", Clock)
    return progress


@needs_data
def test_a_spent_budget_starts_no_further_ensemble(easy_data, tmp_path, monkeypatch):
    plan = _plan(tmp_path)
    res = run_campaign(_cfg(plan, tmp_path) | {"max_members": 2}, out=tmp_path / "res", data=easy_data,
                       progress=_jump_clock(monkeypatch))
    assert res.recorded == [] and len(res.in_progress) == 2 and len(res.not_started) == 3 and res.missing == 5
    assert len(list((tmp_path / "work").glob("ens-*"))) == 1


@needs_data
def test_a_trial_stopped_by_the_budget_keeps_its_checkpoint_outside_the_records_and_resumes_bit_identically(
        easy_data, tmp_path, monkeypatch):
    text = TINY_PLAN.replace("max_epochs = 3", "max_epochs = 4").split("[[cell]]\nname = \"tiny-adam\"")[0]
    plan = _plan(tmp_path, text)
    whole = run_campaign(_cfg(plan, tmp_path, work="w1"), out=tmp_path / "whole", data=easy_data)
    assert len(whole.recorded) == 4

    progress = _jump_clock(monkeypatch)
    cut = run_campaign(_cfg(plan, tmp_path, work="w2"), out=tmp_path / "cut", data=easy_data, progress=progress)
    assert cut.recorded == [] and len(cut.in_progress) == 4 and cut.missing == 4
    assert not (tmp_path / "cut" / "records").exists()
    (folder,) = (tmp_path / "w2").glob("ens-*")
    assert (folder / "p1.1-init0-seed0" / "checkpoint.pt").is_file() and not (folder / "STOP").exists()
    assert json.loads((folder / "p1.1-init0-seed0" / "summary.json").read_text())["epochs"] == 1
    first_epoch = compact_history(folder / "p1.1-init0-seed0" / "history.csv").splitlines()[1]

    monkeypatch.setattr(campaign_mod, "time", time)
    done = run_campaign(_cfg(plan, tmp_path, work="w2"), out=tmp_path / "cut", data=easy_data)
    assert len(done.recorded) == 4 and done.missing == 0
    resumed = tmp_path / "cut" / "records" / "tiny-p1.1" / "seed0-init0" / "history.csv"
    assert resumed.read_text().splitlines()[1] == first_epoch  # epoch 1 (its timings too) was not trained again
    for a in whole.recorded:
        b = tmp_path / "cut" / a.relative_to(tmp_path / "whole")
        assert (a / "history.csv").read_text().splitlines()[0] == (b / "history.csv").read_text().splitlines()[0]
        assert _accuracies(a) == _accuracies(b)
        assert json.loads((a / "e4.json").read_text())["stats"] == json.loads((b / "e4.json").read_text())["stats"]


def _accuracies(record):
    """history.csv without the timing columns (epoch, losses and accuracies)."""
    return [line.split(",")[:7] for line in (record / "history.csv").read_text().splitlines()]


@needs_data
def test_an_edited_plan_does_not_overwrite_a_record_of_another_configuration(easy_data, tmp_path):
    plan = _plan(tmp_path, TINY_PLAN.split("[[cell]]\nname = \"tiny\"")[0] + "[[cell]]" +
                 TINY_PLAN.split("[[cell]]")[2])
    run_campaign(_cfg(plan, tmp_path), out=tmp_path / "res", data=easy_data)
    plan.write_text(plan.read_text().replace("lr = 1e-3", "lr = 2e-3"))
    with pytest.raises(PlanError, match="holds a record of another configuration"):
        run_campaign(_cfg(plan, tmp_path), out=tmp_path / "res", data=easy_data)


def test_dry_run_lists_the_status_and_trains_nothing(tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("dry run trained")

    monkeypatch.setattr("attnopt.experiments.imdb.train.run_ensemble", no_training)
    res = run_campaign(_cfg(_plan(tmp_path), tmp_path) | {"dry_run": True}, out=tmp_path / "res")
    assert [(r["cell"], r["complete"], r["missing_seeds"]) for r in res.status] == [
        ("tiny-p1.1", 0, [0, 1]), ("tiny-p2", 0, [0, 1]), ("tiny-adam", 0, [0])]
    assert res.missing == 5 and not (tmp_path / "res").exists()


def test_a_record_history_stays_small_at_the_epoch_limit(tmp_path):
    """1,000 epochs (the epoch limit) of the run's history columns stay far below 200 KB."""
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "train_time_s",
            "epoch_time_s", "train_reviews_per_s", "members"]
    rows = [",".join(cols)] + [",".join([str(e)] + [repr(1 / (e + k + 0.123456789)) for k in range(9)] + ["8"])
                               for e in range(1, 1001)]
    (tmp_path / "h.csv").write_text("\n".join(rows) + "\n")
    assert len(compact_history(tmp_path / "h.csv").encode()) < 110_000


def test_work_folders_of_other_plans_are_left_alone(tmp_path):
    from attnopt.experiments.imdb.campaign import schedule

    plan = load_plan(_plan(tmp_path))
    work = tmp_path / "work"
    (work / "ens-foreign").mkdir(parents=True)
    (work / "ens-foreign" / "config.json").write_text(json.dumps({"config": {"members": [{"seed": 99}],
                                                                             "names": ["x"]}}))
    groups = schedule(plan, plan.trials(), {}, work)
    assert sorted(len(g) for g, _ in groups) == [1, 4] and all(n is None for _, n in groups)
    assert sorted(len(g) for g, _ in schedule(plan, plan.trials(), {}, work, max_members=2)) == [1, 2, 2]
    shutil.rmtree(work)

"""The confirmation suite carries exactly the recipes the search rule picked (applied in code
to the committed search runs), on seeds disjoint from every search seed."""
from pathlib import Path

import pytest

from bench.config import load_suite, resolve_recipe
from leaderboard import collect
from leaderboard.selection import winners

ROOT = Path(__file__).resolve().parents[1]
SEARCH_RUNS = ROOT / "leaderboard" / "search_v2-runs.csv"
pytestmark = pytest.mark.skipif(not (ROOT / "suites" / "confirm.yaml").exists(), reason="no confirm suite yet")


def _resolved(suite, recipe: str, dataset: str):
    r = resolve_recipe(suite.doc, recipe, dataset, suite.path)
    cell = next(c for c in suite.cells() if c.dataset == dataset and c.recipe == recipe)
    return r.objective, r.params, r.init_from, cell.model, cell.aug, cell.train


def test_confirm_arms_are_the_search_winners():
    search, confirm = load_suite("search_v2"), load_suite("confirm")
    won = winners(collect.tidy(collect.read_csv(SEARCH_RUNS)), search.analysis.select_families())
    arms = confirm.analysis.arms  # family -> recipe name in confirm.yaml
    for (dataset, family), (recipe, model, aug, _) in won.items():
        mine = arms[family]
        if family == "ce" and recipe == "ce":
            continue  # the baseline itself: `ce` is an arm of every dataset anyway
        assert _resolved(confirm, mine, dataset) == _resolved(search, recipe, dataset), (dataset, family)


def test_confirm_seeds_are_fresh_and_at_least_five():
    used = set()
    for name in ("search_v2", "study", "search", "search3d", "search_pneumonia"):
        used |= {c.seed for c in load_suite(name).cells()}
    seeds = {c.seed for c in load_suite("confirm").cells()}
    assert len(seeds) >= 5 and not seeds & used


def test_confirm_schema_migration_changed_no_one_stage_cell():
    """The analysis-schema migration edited confirm.yaml after its runs: every one-stage cell id
    must still be the one its committed run carries (fine-tune ids changed on purpose: they now
    contain their source's id)."""
    import os

    from bench.driver import data_fingerprint

    data = ROOT.parent / "shared" / "data" / "medmnist"
    if not os.environ.get("BENCH_DATA_DIR") and not data.is_dir():
        pytest.skip("needs the data files for their MD5s")
    runs = collect.read_csv(ROOT / "leaderboard" / "confirm-runs.csv")
    ids = set(runs["tags.bench_cell_id"])
    cells = load_suite("confirm").cells(data_fingerprint(os.environ.get("BENCH_DATA_DIR") or str(data)))
    one_stage = [c for c in cells if not c.init_from]
    assert len(one_stage) == 50 and all(c.cell_id in ids for c in one_stage)
    assert not any(c.cell_id in ids for c in cells if c.init_from)


def test_confirm_v3_seeds_are_fresh_and_its_design_is_the_registered_one():
    from bench.suitefile import available_suites

    others = [n for n in available_suites() if n != "confirm_v3"]
    used = set().union(*({c.seed for c in load_suite(n).cells()} for n in others))
    v3 = load_suite("confirm_v3")
    cells = v3.cells()
    assert not {c.seed for c in cells} & used
    per = {d: {c.seed for c in cells if c.dataset == d} for d in {c.dataset for c in cells}}
    assert per == {"breastmnist": set(range(40, 50)), "adrenalmnist3d": set(range(40, 45)),
                   "vesselmnist3d": set(range(40, 45))}
    budget = {(c.dataset, bool(c.init_from)): c.train.epochs for c in cells}
    assert budget[("breastmnist", False)] == 100 and budget[("breastmnist", True)] == 20
    assert all(budget[(d, False)] >= 30 and budget[(d, True)] >= 10 for d in ("adrenalmnist3d", "vesselmnist3d"))
    p = {(c.dataset, c.recipe): c.params_dict for c in cells if c.seed == 40}
    for d in per:  # defaults against defaults, and the controls matched to them
        assert p[(d, "aucm_ft")]["lr"] == 0.1 and p[(d, "aucm_ft")]["margin"] == 1.0
        assert p[(d, "aucm_ft")]["epoch_decay"] == 3e-3 and p[(d, "compauc_ft")]["lr"] == 0.1
        assert p[(d, "ce_ft_dual")]["sampling_rate"] == p[(d, "aucm_ft")]["sampling_rate"] == \
            p[(d, "compauc_ft")]["sampling_rate"]
        assert all(p[(d, "ce_ft_pesg")][k] == p[(d, "aucm_ft")][k] for k in p[(d, "ce_ft_pesg")])
    a = v3.analysis
    assert a.primary.treatment == "aucm_ft" and a.primary.control == "matched" and a.primary.selection == "ungated"
    assert a.matched_control("aucm_ft") == "ce_ft_pesg" and v3.doc["shift"] is True

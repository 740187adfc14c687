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

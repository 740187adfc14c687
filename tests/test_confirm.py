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
    won = winners(collect.tidy(collect.read_csv(SEARCH_RUNS)), search.doc["analysis"]["select"])
    arms = confirm.doc["analysis"]["arms"]  # family -> recipe name in confirm.yaml
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

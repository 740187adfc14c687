"""search: declared search spaces expand, at load time, into trial recipes with an equal budget per family."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_suite
from bench.errors import ConfigError
from bench.search import draw, expand_search

REPO = Path(__file__).resolve().parent.parent

SUITE = """
include: _base.yaml
suite: {name}
train: {{epochs: 1, batch_size: 16}}
grid: {{dataset: [breastmnist], recipe: {recipes}, aug: [false], seed: [0], protocol: [official]}}
{search}
"""

SEARCH = """
search:
  trials: {trials}
  sampler: {sampler}
  seed: {seed}
  space:
    ce: {{lr: {{log_uniform: [1.0e-4, 1.0e-2]}}, weight_decay: {{log_uniform: [1.0e-6, 1.0e-3]}}}}
    aucm_ft: {{margin: {{uniform: [0.5, 1.0]}}, lr: {{log_uniform: [1.0e-3, 0.3]}}}}
"""


def write(suites, name="s", recipes="[ce, aucm_ft, aucm]", trials=8, sampler="sobol", seed=0, search=None):
    search = SEARCH.format(trials=trials, sampler=sampler, seed=seed) if search is None else search
    return suites(name, SUITE.format(name=name, recipes=recipes, search=search))


def trial_params(suite):
    return {c.recipe: c.params_dict for c in suite.cells()}


def test_trials_replace_the_searched_recipes_in_the_grid(suites):
    write(suites)
    suite = load_suite("s")
    recipes = [c.recipe for c in suite.cells()]
    assert recipes == [f"ce@t{t:02d}" for t in range(8)] + [f"aucm_ft@t{t:02d}" for t in range(8)] + ["aucm"]
    assert suite.doc["grid"]["recipe"] == recipes


def test_every_family_gets_the_same_number_of_trials(suites):
    write(suites, trials=5)
    counts = {}
    for c in load_suite("s").cells():
        base = c.recipe.split("@")[0]
        counts[base] = counts.get(base, 0) + 1
    assert counts == {"ce": 5, "aucm_ft": 5, "aucm": 1}


def test_same_document_same_trials_and_cell_ids(suites):
    write(suites)
    first, second = load_suite("s").cells(), load_suite("s").cells()
    assert [(c.recipe, c.params, c.cell_id) for c in first] == [(c.recipe, c.params, c.cell_id) for c in second]


def test_same_cell_ids_in_another_process(suites, tmp_path):
    write(suites)
    here = [c.cell_id for c in load_suite("s").cells()]
    code = "from bench.config import load_suite; print(' '.join(c.cell_id for c in load_suite('s').cells()))"
    env = {**os.environ, "BENCH_SUITES_DIR": str(tmp_path / "suites")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    assert out.stdout.split() == here


def test_another_seed_draws_other_params(suites):
    write(suites, name="a", seed=0)
    write(suites, name="b", seed=1)
    a, b = trial_params(load_suite("a")), trial_params(load_suite("b"))
    assert a.keys() == b.keys()
    assert all(a[r] != b[r] for r in a if "@" in r)
    assert a["aucm"] == b["aucm"]


def test_halton_differs_from_sobol(suites):
    write(suites, name="a", sampler="sobol")
    write(suites, name="b", sampler="halton")
    a, b = trial_params(load_suite("a")), trial_params(load_suite("b"))
    assert a["ce@t00"] != b["ce@t00"]


def test_dimension_order_in_the_yaml_does_not_matter(suites):
    write(suites, name="a")
    flipped = SEARCH.format(trials=8, sampler="sobol", seed=0).replace(
        "{margin: {uniform: [0.5, 1.0]}, lr: {log_uniform: [1.0e-3, 0.3]}}",
        "{lr: {log_uniform: [1.0e-3, 0.3]}, margin: {uniform: [0.5, 1.0]}}")
    assert flipped != SEARCH.format(trials=8, sampler="sobol", seed=0)
    write(suites, name="b", search=flipped)
    assert trial_params(load_suite("a")) == trial_params(load_suite("b"))


@pytest.mark.parametrize("sampler", ["sobol", "halton"])
def test_log_uniform_samples_within_bounds_and_spread(suites, sampler):
    write(suites, sampler=sampler)
    params = trial_params(load_suite("s"))
    lrs = [params[f"ce@t{t:02d}"]["lr"] for t in range(8)]
    assert all(1e-4 <= x <= 1e-2 for x in lrs)
    assert len(set(lrs)) == 8
    margins = [params[f"aucm_ft@t{t:02d}"]["margin"] for t in range(8)]
    assert all(0.5 <= m <= 1.0 for m in margins)


def test_sobol_covers_each_octile_of_the_log_range_once():
    doc = {"grid": {"recipe": ["ce"]},
           "search": {"trials": 8, "space": {"ce": {"lr": {"log_uniform": [1.0e-4, 1.0e-2]}}}}}
    out = expand_search(doc, Path("t.yaml"))
    lrs = [out["recipes"][f"ce@t{t:02d}"]["params"]["lr"] for t in range(8)]
    octiles = sorted(min(7, int((math.log(x) - math.log(1e-4)) / (math.log(1e-2) - math.log(1e-4)) * 8)) for x in lrs)
    assert octiles == list(range(8))
    assert doc["grid"]["recipe"] == ["ce"]  # the input document is left as it was
    assert out["grid"]["recipe"] == [f"ce@t{t:02d}" for t in range(8)]


def test_int_uniform_and_choice():
    doc = {"grid": {"recipe": ["aucm"]},
           "search": {"trials": 16, "space": {"aucm": {"version": {"choice": ["v1", "v2"]},
                                                        "sampling_rate": {"choice": [0.1, 0.2, 0.5, 0.7]}}}}}
    out = expand_search(doc, Path("t.yaml"))
    params = [out["recipes"][f"aucm@t{t:02d}"]["params"] for t in range(16)]
    assert sorted({p["version"] for p in params}) == ["v1", "v2"]
    assert sorted({p["sampling_rate"] for p in params}) == [0.1, 0.2, 0.5, 0.7]
    from bench.search import _value

    ints = [_value("int_uniform", (1, 4), u) for u in (0.0, 0.24, 0.26, 0.5, 0.74, 0.76, 0.999)]
    assert ints == [1, 1, 2, 3, 3, 4, 4] and all(isinstance(i, int) for i in ints)


def test_draw_uses_random_base2_for_powers_of_two():
    from scipy.stats import qmc

    assert draw(8, 2, "sobol", 3) == qmc.Sobol(2, scramble=True, seed=3).random_base2(3).tolist()
    assert len(draw(5, 2, "sobol", 3)) == 5


def test_finetune_trials_keep_init_from(suites):
    write(suites)
    cells = load_suite("s").cells()
    ft = [c for c in cells if c.recipe.startswith("aucm_ft@")]
    assert len(ft) == 8 and {c.init_from for c in ft} == {"ce"}
    assert len({c.source_id for c in ft}) == 1  # all start from the same source cell
    assert len({c.cell_id for c in ft}) == 8


def test_searched_values_override_the_recipe_params(suites):
    write(suites)
    doc = load_suite("s").doc
    assert doc["recipes"]["aucm_ft@t03"]["init_from"] == "ce"
    assert doc["recipes"]["aucm_ft"]["params"] == {"lr": 0.05}  # the recipe itself is unchanged
    assert doc["recipes"]["aucm_ft@t03"]["params"]["lr"] != 0.05


def test_unequal_trials_with_a_reason(suites):
    search = SEARCH.format(trials="{ce: 4, aucm_ft: 2}", sampler="sobol", seed=0)
    write(suites, search=search + "  unequal_budget_reason: aucm_ft has half the epochs\n")
    counts = {}
    for c in load_suite("s").cells():
        counts[c.recipe.split("@")[0]] = counts.get(c.recipe.split("@")[0], 0) + 1
    assert counts == {"ce": 4, "aucm_ft": 2, "aucm": 1}


def _space(body):
    return f"\nsearch:\n  trials: 4\n  space:\n    {body}\n"


BAD = [
    ("trials-0", SEARCH.format(trials=0, sampler="sobol", seed=0), r"search\.trials must be >= 1, got 0"),
    ("trials-neg", SEARCH.format(trials=-2, sampler="sobol", seed=0), r"search\.trials must be >= 1, got -2"),
    ("trials-per-recipe-0", SEARCH.format(trials="{ce: 0, aucm_ft: 0}", sampler="sobol", seed=0),
     r"search\.trials\.ce must be >= 1"),
    ("sampler", SEARCH.format(trials=4, sampler="sobl", seed=0),
     r"unknown sampler 'sobl' in .*search\.sampler \(did you mean 'sobol'\?\); choose one of: halton, sobol, tpe"),
    ("kind", _space("ce: {lr: {log_uniformm: [1.0e-4, 1.0e-2]}}"),
     r"unknown distribution kind 'log_uniformm' in .*search\.space\.ce\.lr \(did you mean 'log_uniform'\?\)"),
    ("log-bound", _space("ce: {lr: {log_uniform: [0, 1.0e-2]}}"),
     r"search\.space\.ce\.lr\.log_uniform: a log-uniform bound must be > 0"),
    ("low-high", _space("ce: {lr: {uniform: [0.1, 0.01]}}"), r"search\.space\.ce\.lr\.uniform: low must be < high"),
    ("low-eq-high", _space("aucm: {margin: {uniform: [1.0, 1.0]}}"), r"search\.space\.aucm\.margin\.uniform: low must"),
    ("recipe-not-in-grid", _space("aucmm: {lr: {uniform: [0.1, 0.2]}}"),
     r"search\.space\.aucmm: recipe 'aucmm' is not in the grid \(did you mean 'aucm'\?\); grid recipes: ce, aucm_ft"),
    ("hyperparameter", _space("aucm_ft: {marign: {uniform: [0.5, 1.0]}}"),
     r"search\.space\.aucm_ft\.marign: 'marign' is not a hyperparameter of objective 'aucm' "
     r"\(did you mean 'margin'\?\)"),
    ("unequal", SEARCH.format(trials="{ce: 8, aucm_ft: 4}", sampler="sobol", seed=0),
     r"search\.trials: unequal budgets \(ce 8, aucm_ft 4\).*unequal_budget_reason"),
    ("unknown-key", SEARCH.format(trials=4, sampler="sobol", seed=0) + "  trails: 3\n",
     r"unknown key 'search\.trails' \(did you mean 'trials'\?\)"),
]


@pytest.mark.parametrize("search,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_search_is_one_line(suites, search, match):
    write(suites, search=search)
    with pytest.raises(ConfigError, match=match) as e:
        load_suite("s")
    assert "\n" not in str(e.value) and "s.yaml" in str(e.value)


def test_dry_run_lines(suites, synth_dir):
    from bench.driver import run_suite

    write(suites)
    text = run_suite("s", dry=True)
    assert "search: ce 8 sobol trials over lr, weight_decay (seed 0)" in text
    assert "search: aucm_ft 8 sobol trials over lr, margin (seed 0)" in text
    assert "equal budget: every family 8 trials" in text
    assert "17 cells" in text


def test_dry_run_names_the_unequal_budget_reason(suites, synth_dir):
    from bench.driver import run_suite

    search = SEARCH.format(trials="{ce: 4, aucm_ft: 2}", sampler="halton", seed=3)
    write(suites, search=search + "  unequal_budget_reason: aucm_ft fine-tunes for 20 epochs only\n")
    text = run_suite("s", dry=True)
    assert "search: aucm_ft 2 halton trials over lr, margin (seed 3)" in text
    assert "unequal budget (ce 4, aucm_ft 2): aucm_ft fine-tunes for 20 epochs only" in text

"""Search trials in the leaderboard (leaderboard.trials): selection on validation, halves, collapse, profiles per seed."""
import numpy as np
import pandas as pd

from bench import analysis as AN
from leaderboard import profiles as P
from leaderboard import trials as T


def _runs(rows) -> pd.DataFrame:
    """(recipe, seed, val AUC, test AUC) -> a tidy-shaped runs frame on one problem."""
    return pd.DataFrame([{"dataset": "breastmnist", "size": 28, "protocol": "official", "recipe": r, "model": "m",
                          "aug": False, "seed": s, "fold": -1, "val_auc": v, "test_auc": t} for r, s, v, t in rows])


def known() -> pd.DataFrame:
    rows = []
    # family f: t01 has the best mean val (0.9) but the worst test; t03 the best test but lower val
    for s in (0, 1, 2):
        rows += [("f@t00", s, 0.80, 0.70), ("f@t01", s, 0.90, 0.60), ("f@t02", s, 0.85, 0.75), ("f@t03", s, 0.70, 0.95)]
        rows += [("g@t00", s, 0.60, 0.80), ("g@t01", s, 0.60, 0.81)]  # a tie on val: the lower trial wins
        rows += [("ce", s, 0.5, 0.5)]
    rows += [("g@t02", 0, 0.99, 0.99)]  # incomplete (1 of 3 seeds): never selected
    return _runs(rows)


def test_names():
    assert T.family_of("aucm_ft@t07") == "aucm_ft" and T.trial_of("aucm_ft@t07") == 7
    assert T.family_of("ce") == "ce" and T.trial_of("ce") is None and T.trial_of("a@tx") is None


def test_selection_is_on_validation_and_complete_trials_only():
    sel = T.select(known()).set_index("family")
    assert sel.loc["f", "selected"] == "f@t01"  # best val, although its test is the worst
    assert np.isclose(sel.loc["f", "test_mean"], 0.60) and sel.loc["f", "n"] == 3
    assert sel.loc["g", "selected"] == "g@t00"  # tie on val -> lower trial; t02 is incomplete
    assert sel.loc["g", "trials"] == 3 and sel.loc["g", "complete"] == 2
    # halves: f's first half (t00, t01) picks t01, the second (t02, t03) picks t02 -- test 0.60 vs 0.75
    assert sel.loc["f", "half_a"][0] == "f@t01" and sel.loc["f", "half_b"][0] == "f@t02"
    assert np.isclose(sel.loc["f", "half_b"][1], 0.75)


def test_collapse_keeps_the_selected_trial_under_the_family_name():
    runs = known()
    c = T.collapse(runs, T.select(runs))
    assert sorted(c["recipe"].unique()) == ["ce", "f", "g"]
    assert np.allclose(c.loc[c["recipe"] == "f", "test_auc"], 0.60)
    assert len(c[c["recipe"] == "g"]) == 3 and len(c[c["recipe"] == "ce"]) == 3


def test_trials_table_states_the_rule_and_numbers():
    md = T.trials_table(known())
    assert "highest mean **validation** AUC" in md and "Test AUC never chooses" in md
    assert "| breastmnist | `f` | 4 (4) | `f@t01` (—) | 3 | 0.9000 ± 0.0000 | 0.6000 ± 0.0000 |" in md
    assert "`t01` → 0.6000 \\| `t02` → 0.7500" in md


def test_the_table_shows_the_values_the_search_varied():
    runs = known()
    export = pd.DataFrame({"params.recipe": ["f@t00", "f@t01", "f@t02", "f@t03"], "params.objective": ["ce"] * 4,
                           "params.ce.lr": ["0.001", "0.0002", "0.01", "0.05"], "params.ce.decay_factor": ["10"] * 4})
    md = T.trials_table(runs, export)
    assert "`f@t01` (lr 0.0002) |" in md  # decay_factor did not vary: not shown


def test_profiles_per_seed_make_each_seed_a_problem():
    runs = _runs([("a", 0, 0.9, 0.90), ("b", 0, 0.9, 0.89), ("a", 1, 0.9, 0.80), ("b", 1, 0.9, 0.85),
                  ("a", 2, 0.9, 0.70), ("b", 2, 0.9, 0.70)])
    keys = AN.Profiles(per=["seed"]).keys
    assert keys == ["dataset", "size", "protocol", "seed"]
    p = P.profile(P.per_run(runs), [0.0, 0.01, 0.05], keys).set_index(["recipe", "tau"])
    assert p.loc[("a", 0.0), "k"] == 2 and p.loc[("b", 0.0), "k"] == 2 and p.loc[("a", 0.05), "k"] == 3
    assert set(p["n"]) == {3}
    assert P.profile_table(P.per_run(runs), [0.0], keys).startswith("n = 3 problems (dataset, size, protocol, seed)")

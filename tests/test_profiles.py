"""Performance profiles (leaderboard.profiles): known answers, val-based choice, chart data, wiring."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bench import analysis as AN
from bench.errors import ConfigError
from leaderboard import aggregate as A
from leaderboard import collect
from leaderboard import profiles as P
from leaderboard.build import build_leaderboard

TAUS = [0.0, 0.005, 0.01, 0.02, 0.05]
OBJECTIVES_RUNS = Path(__file__).parents[1] / "leaderboard" / "objectives-runs.csv"


def _agg(rows) -> pd.DataFrame:
    """A hand-made aggregate: (dataset, recipe, model, test AUC mean, val AUC mean) per group."""
    return pd.DataFrame([{"dataset": d, "size": 28, "recipe": r, "model": m, "aug": False, "protocol": "official",
                          "test_auc_mean": t, "val_auc_mean": v, "n": 3} for d, r, m, t, v in rows])


def known() -> pd.DataFrame:
    """3 counted problems x 3 recipes, with the gaps (best − recipe) written beside each row."""
    return _agg([
        ("d1", "a", "m", 0.900, 0.9), ("d1", "b", "m", 0.895, 0.9), ("d1", "c", "m", 0.850, 0.9),  # 0, .005, .05
        ("d2", "a", "m", 0.800, 0.8), ("d2", "b", "m", 0.810, 0.8), ("d2", "c", "m", 0.790, 0.8),  # .01, 0, .02
        ("d3", "a", "m", 0.700, 0.7), ("d3", "b", "m", 0.700, 0.7), ("d3", "c", "m", 0.690, 0.7),  # 0, 0, .01
        ("d4", "a", "m", 0.600, 0.6),  # a lone recipe: not a problem that counts
    ])


EXPECTED_K = {"a": [2, 2, 3, 3, 3], "b": [2, 3, 3, 3, 3], "c": [0, 0, 1, 2, 3]}


def test_profile_known_answer():
    p = P.profile(known(), TAUS)
    assert list(p.columns) == ["recipe", "tau", "k", "n", "share"]
    assert set(p["n"]) == {3}  # d4 has one recipe: excluded
    for recipe, ks in EXPECTED_K.items():
        g = p[p["recipe"] == recipe]
        assert list(g["tau"]) == TAUS and list(g["k"]) == ks
        assert np.allclose(g["share"], np.array(ks) / 3)


def test_profile_table_cells_and_caption():
    md = P.profile_table(known(), TAUS)
    assert md.startswith("n = 3 problems (dataset, size, protocol)")
    assert "| recipe | τ = 0 | τ = 0.005 | τ = 0.01 | τ = 0.02 | τ = 0.05 |" in md
    assert "| `a` | 2/3 (67%) | 2/3 (67%) | 3/3 (100%) | 3/3 (100%) | 3/3 (100%) |" in md
    assert "| `b` | 2/3 (67%) | 3/3 (100%) | 3/3 (100%) | 3/3 (100%) | 3/3 (100%) |" in md
    assert "| `c` | 0/3 (0%) | 0/3 (0%) | 1/3 (33%) | 2/3 (67%) | 3/3 (100%) |" in md
    assert "validation" in md and "additive" in md


def test_best_group_is_chosen_on_validation_never_on_test():
    agg = pd.concat([known(), _agg([("d1", "c", "m2", 0.950, 0.85)])], ignore_index=True)  # higher test, lower val
    s = P.scores(agg)
    row = s[(s.dataset == "d1") & (s.recipe == "c")]
    assert len(row) == 1 and row["model"].iloc[0] == "m" and row["test_auc_mean"].iloc[0] == 0.850
    p = P.profile(agg, TAUS)
    for recipe, ks in EXPECTED_K.items():  # unchanged: the test-best group of c was not taken
        assert list(p.loc[p["recipe"] == recipe, "k"]) == ks
    better_val = pd.concat([known(), _agg([("d1", "c", "m2", 0.950, 0.95)])], ignore_index=True)
    p2 = P.profile(better_val, TAUS)  # now validation picks m2, and c wins d1
    assert list(p2.loc[p2["recipe"] == "c", "k"]) == [1, 1, 2, 3, 3]
    assert list(p2.loc[p2["recipe"] == "a", "k"]) == [1, 1, 2, 2, 3]  # a's gap on d1 is now .05


def test_single_recipe_problems_are_excluded_and_missing_recipes_never_count():
    assert P.profile(_agg([("d", "a", "m", 0.9, 0.9)]), TAUS).empty
    assert P.profile_table(_agg([("d", "a", "m", 0.9, 0.9)]), TAUS).startswith("_No problem")
    agg = known()
    agg = agg[~((agg.dataset == "d3") & (agg.recipe == "c"))]  # c has no runs on d3 (still counted: a, b)
    p = P.profile(agg, TAUS)
    assert set(p["n"]) == {3} and list(p.loc[p["recipe"] == "c", "k"]) == [0, 0, 0, 1, 2]


def test_chart_plots_the_profile_steps(tmp_path):
    fig, ax, series = P.profile_figure(known(), TAUS)
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert set(lines) == {"a", "b", "c"}
    for recipe, ks in EXPECTED_K.items():
        xs, ys = np.asarray(lines[recipe].get_xdata(), float), np.asarray(lines[recipe].get_ydata(), float)
        assert lines[recipe].get_drawstyle() == "steps-post"
        assert xs[0] == 0.0 and xs[-1] == max(TAUS)
        for tau, k in zip(TAUS, ks):  # the plotted value at every declared tau is the table's share
            assert ys[list(xs).index(tau)] == pytest.approx(k / 3)
        assert np.all(np.diff(ys) >= 0)  # a profile never decreases
        assert (list(xs), list(ys)) == (list(series[recipe][0]), list(series[recipe][1]))
    import matplotlib.pyplot as plt

    plt.close(fig)
    path = tmp_path / "x-profiles.png"
    assert set(P.profile_chart(known(), TAUS, path)) == {"a", "b", "c"} and path.stat().st_size > 0


@pytest.mark.parametrize("taus, why", [([], "at least one"), ([0.01, 0.005], "sorted ascending"),
                                        ([0.0, 1.5], "in [0, 1]"), ([-0.1], "in [0, 1]")])
def test_profiles_key_is_validated_in_one_line(taus, why):
    with pytest.raises(ConfigError) as exc:
        AN.parse({"profiles": {"taus": taus}}, "suites/x.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("suites/x.yaml: 'analysis.profiles.taus'") and why in msg


def test_profiles_key_defaults_and_unknown_keys():
    assert AN.parse({"profiles": {}}).profiles.taus == TAUS
    assert AN.parse({}).profiles is None
    with pytest.raises(ConfigError, match="unknown key 'analysis.profiles.tau'"):
        AN.parse({"profiles": {"tau": [0.1]}}, "suites/x.yaml")


def test_build_adds_the_section_and_chart_only_when_declared(tmp_path):
    declared = SimpleNamespace(doc={"analysis": {"profiles": {"taus": [0.0, 0.02, 0.2]}}})
    md = build_leaderboard("objectives", out_dir=tmp_path / "on", from_csv=OBJECTIVES_RUNS, charts=True,
                           generated_at="2026-01-01 00:00 UTC", declared=declared).read_text()
    agg = A.aggregate(collect.tidy(collect.read_csv(OBJECTIVES_RUNS)))
    table = P.profile_table(agg, [0.0, 0.02, 0.2])
    assert f"{P.TITLE}\n\n{table}\n\n![performance profiles](objectives-profiles.png)" in md
    assert table.startswith("n = 1 problem (")  # breastmnist, 28 px, official: five recipes
    # recomputed directly: per recipe the group with the best validation AUC, its test AUC's gap to the best
    chosen = agg.loc[agg.groupby("recipe")["val_auc_mean"].idxmax()].set_index("recipe")["test_auc_mean"]
    gap = chosen.max() - chosen
    p = P.profile(agg, [0.0, 0.02, 0.2]).set_index(["recipe", "tau"])
    assert sorted(p.index.get_level_values(0).unique()) == sorted(chosen.index) and len(chosen) == 5
    for recipe in chosen.index:
        for tau in (0.0, 0.02, 0.2):
            assert p.loc[(recipe, tau), "k"] == int(gap[recipe] <= tau + 1e-9)
    assert (tmp_path / "on" / "objectives-profiles.png").stat().st_size > 0
    plain = build_leaderboard("objectives", out_dir=tmp_path / "off", from_csv=OBJECTIVES_RUNS, charts=False,
                              generated_at="2026-01-01 00:00 UTC",
                              declared=SimpleNamespace(doc={"analysis": {}})).read_text()
    assert P.TITLE not in plain and not (tmp_path / "off" / "objectives-profiles.png").exists()
    assert plain == md.replace(f"\n\n{P.TITLE}\n\n{table}\n\n![performance profiles](objectives-profiles.png)", "")

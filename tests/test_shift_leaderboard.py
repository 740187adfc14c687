"""leaderboard.shift: known-answer values for the table, the paired test and the severity curves."""
import numpy as np
import pandas as pd
import pytest

from leaderboard import shift as L

D = [0.01, 0.02, 0.03, -0.005, 0.015, 0.025]  # aucm - ce on shift_auc_mean, per seed


def run(recipe: str, seed: int, clean: float, offset: float = 0.0, dataset: str = "breastmnist") -> dict:
    """Two corruptions: a_k = clean - 0.05 - 0.01k, b_k = clean - 0.10 - 0.02k, each + offset.
    So shift_auc_mean = clean - 0.12 + offset; corruption b is the worst (clean - 0.16 + offset)."""
    objective = "ce" if recipe in ("ce", "same") else recipe
    row = {"dataset": dataset, "size": "28", "recipe": recipe, "objective": objective, "model": "resnet18_28",
           "aug": "off", "protocol": "official",
           "seed": seed, "fold": -1, "test_auc": clean}
    for k in range(1, 6):
        row[f"shift_a_s{k}_auc"] = clean - 0.05 - 0.01 * k + offset
        row[f"shift_b_s{k}_auc"] = clean - 0.10 - 0.02 * k + offset
    row["shift_auc_mean"] = clean - 0.12 + offset
    row["shift_auc_drop"] = clean - row["shift_auc_mean"]
    return row


@pytest.fixture
def runs() -> pd.DataFrame:
    rows = [run("ce", s, 0.90 + 0.01 * s) for s in range(6)]
    rows += [run("aucm", s, 0.90 + 0.01 * s, offset=D[s]) for s in range(6)]
    rows += [run("same", s, 0.90 + 0.01 * s) for s in range(6)]  # identical to ce: every difference is 0
    rows.append({**run("ce", 0, 0.7, dataset="vesselmnist3d"), "shift_auc_mean": np.nan})  # not scored
    return pd.DataFrame(rows)


def test_shift_table_values(runs):
    md = L.shift_table(runs, "breastmnist")
    lines = md.splitlines()
    assert lines[0].startswith("| objective | model | aug | protocol | n | clean test AUC")
    ce = next(line for line in lines if line.startswith("| ce |"))
    # clean: 0.90..0.95 -> mean 0.925, std 0.01*sqrt(3.5) = 0.0187; corrupted = clean - 0.12; drop = 0.12 exactly
    assert ce == ("| ce | resnet18_28 | off | official | 6 | 0.925 ± 0.019 | 0.805 ± 0.019 | 0.120 ± 0.000 "
                  "| b (0.765) |")
    aucm = next(line for line in lines if line.startswith("| aucm |"))
    # corrupted mean 0.805 + mean(D) = 0.805 + 0.0158 = 0.8208; worst b = 0.765 + 0.0158
    assert "| 0.821 ± " in aucm and "| b (0.781) |" in aucm
    assert L.shift_table(runs, "vesselmnist3d") == "_No shift metrics for vesselmnist3d._"


def test_single_run_has_no_spread(runs):
    one = runs[(runs["recipe"] == "ce") & (runs["seed"] == 0)]
    assert "| 1 | 0.900 ± n/a | 0.780 ± n/a |" in L.shift_table(one, "breastmnist")


def test_paired_shift_known_answer(runs):
    p = L.paired_shift(runs).set_index("recipe")
    a = p.loc["aucm"]
    assert a["control"] == "ce" and a["n_pairs"] == 6 and (a["wins"], a["losses"]) == (5, 1)
    assert a["mean_diff"] == pytest.approx(np.mean(D))
    assert a["std_diff"] == pytest.approx(0.0124164, abs=1e-6)
    # |d| ranks 1..6, the only negative has rank 1: W = 1, exact two-sided p = 2 * 2/2^6
    assert a["wilcoxon_p"] == pytest.approx(0.0625)
    # t = mean / (std / sqrt 6) = 3.1236 on 5 df
    assert a["ttest_p"] == pytest.approx(0.02615, abs=1e-4)
    same = p.loc["same"]
    assert same["mean_diff"] == 0 and same["wilcoxon_p"] == 1.0 and same["ttest_p"] == 1.0


def test_paired_shift_compares_treatments_with_each_control(runs):
    # Controls are never treatments of each other, except against the last (plainest) control.
    p = L.paired_shift(runs, controls=("ce", "same"))
    assert set(zip(p["control"], p["recipe"], strict=True)) == {("ce", "aucm"), ("same", "aucm"), ("same", "ce")}
    assert L.paired_shift(runs[runs["recipe"] == "ce"]).empty


def test_severity_curves_values(runs):
    c = L.severity_curves(runs, "breastmnist")
    assert set(c["line"]) == {"aucm", "ce", "same"}  # only recipe varies: lines are named by it
    ce = c[c["line"] == "ce"].set_index("severity")
    assert ce.loc[0, "mean"] == pytest.approx(0.925)
    # severity k: mean of a_k, b_k = clean - 0.075 - 0.015k
    for k in range(1, 6):
        assert ce.loc[k, "mean"] == pytest.approx(0.925 - 0.075 - 0.015 * k)
        assert ce.loc[k, "std"] == pytest.approx(0.01 * np.sqrt(3.5))
    assert (ce["n"] == 6).all()


def test_severity_curves_name_what_varies(runs):
    both = pd.concat([runs, runs.assign(aug="on")], ignore_index=True)
    assert set(L.severity_curves(both, "breastmnist")["line"]) >= {"ce, aug off", "ce, aug on"}


def test_severity_chart_plots_the_severity_curves(runs, tmp_path, monkeypatch):
    """The chart draws exactly the curves the table reports: one line per group, severity 0-5."""
    drawn = {}

    def capture(fig, ax, path):
        for bars in ax.containers:  # one ErrorbarContainer per curve; lines[0] is its data line
            line = bars.lines[0]
            drawn[bars.get_label()] = (list(line.get_xdata()), list(line.get_ydata()))
        save(fig, ax, path)

    save = L.save_chart
    monkeypatch.setattr(L, "save_chart", capture)
    path = tmp_path / "shift.png"
    L.severity_chart(runs, "breastmnist", path)
    curves = L.severity_curves(runs, "breastmnist")
    assert drawn and set(drawn) == set(curves["line"])
    for label, c in curves.groupby("line"):
        assert drawn[label][0] == list(range(6)) and drawn[label][1] == pytest.approx(list(c["mean"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_worst_corruption_without_columns():
    g = pd.DataFrame({"shift_auc_mean": [0.8]})
    name, value = L.worst_corruption(g)
    assert name == "n/a" and np.isnan(value)

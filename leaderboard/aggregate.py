"""Group statistics and paired comparisons against the controls.

Units of analysis. On the official split every run (one seed) is an independent unit. Under
``cv5`` the five folds of one seed share most of their training data, so they are *not* five
independent samples: each seed's folds are averaged first, and a cv5 group's n counts seeds
(the fold count is shown beside it). Pairs are formed on the same unit (dataset, size, model,
aug, protocol, seed). This is the "aggregate folds per seed first" remedy; the corrected
resampled t-test (Nadeau & Bengio, 2003) would be the alternative.

* Spread: sample standard deviation (ddof=1) over the units of a group; the 95% CI is the
  t-interval mean +- t(0.975, n-1) * std / sqrt(n). With n = 1 there is no spread: NaN, shown
  as "n/a".
* Paired comparison: each treatment recipe vs each control (``ce_ft``, the budget-matched
  fine-tuning control, and ``ce``), mean paired difference, wins/losses/ties, the two-sided
  **Wilcoxon signed-rank** test (exact distribution; scipy) and the paired t-test for
  reference. With n < 6 pairs an exact two-sided Wilcoxon p cannot be below 0.05 (its smallest
  value is 2/2^n), which the table says.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

GROUP_KEYS = ["dataset", "size", "recipe", "model", "aug", "protocol"]
UNIT_KEYS = GROUP_KEYS + ["seed"]
PAIR_KEYS = ["dataset", "size", "model", "aug", "protocol", "seed"]
TEST_METRICS = ["test_auc", "test_auprc", "test_f1", "test_acc", "test_acc_tuned", "test_f1_tuned"]
SHIFT_METRICS = ["shift_auc_mean", "shift_auc_drop"]
DEFAULT_CONTROLS = ("ce_ft", "ce")
PRIMARY_PROTOCOL = "official"  # default of analysis.primary.protocol; the findings table's protocol
WILCOXON_MIN_N = 6  # smallest n at which an exact two-sided Wilcoxon p can be < 0.05


def ci95(std: float, n: int) -> float:
    if n < 2 or not np.isfinite(std):
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Every numeric result column a unit carries (test metrics, val AUC, shift metrics)."""
    return [c for c in TEST_METRICS + ["val_auc"] if c in runs] + sorted(c for c in runs if c.startswith("shift_"))


def units(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per independent unit: a run on the official split, a seed's fold mean under cv5."""
    cols = metric_columns(runs)
    rows = []
    for key, g in runs.groupby(UNIT_KEYS, sort=True):
        row = dict(zip(UNIT_KEYS, key))
        row.update({c: float(g[c].mean()) for c in cols})
        row["n_folds"] = len(g)
        row["objective"] = g["objective"].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def _code(g: pd.DataFrame) -> dict:
    codes = sorted(set(g["code"]) - {""})
    commits = sorted(set(g["commit"]) - {""})
    return {"code": ",".join(c[:8] for c in codes) or "not recorded", "commits": ",".join(c[:7] for c in commits),
            "mixed_code": len(codes) > 1 or (bool(codes) and (g["code"] == "").any()),
            "dirty": bool(g["dirty"].any()), "no_code": not codes}


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n units, mean, std (ddof=1), 95% CI of every metric, and the code."""
    u = units(runs)
    rows = []
    for key, g in u.groupby(GROUP_KEYS, sort=True):
        row = dict(zip(GROUP_KEYS, key))
        r = runs[(runs[GROUP_KEYS] == pd.Series(row)).all(axis=1)]
        row.update(n=len(g), n_runs=len(r), folds=int(g["n_folds"].max()), epochs=int(r["epochs"].max()),
                   unverified=bool((~r["data_verified"]).any()), objective=g["objective"].iloc[0],
                   finetune=bool((r["init_from"] != "").any()), **_code(r))
        for m in metric_columns(u):
            vals = g[m].to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            mean = float(np.mean(vals)) if len(vals) else float("nan")
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95"] = mean, std, ci95(std, len(vals))
        rows.append(row)
    agg = pd.DataFrame(rows)
    if agg.empty:
        return agg
    # A group is incomplete when it has fewer units than the fullest group of its protocol on
    # the same dataset (e.g. 2 of 3 seeds finished).
    agg["expected_n"] = agg.groupby(["dataset", "protocol"])["n"].transform("max")
    agg["incomplete"] = agg["n"] < agg["expected_n"]
    return agg


def paired_row(key: dict, d: np.ndarray) -> dict:
    n = len(d)
    row = {**key, "n_pairs": n,
           "mean_diff": float(np.mean(d)) if n else float("nan"),
           "std_diff": float(np.std(d, ddof=1)) if n > 1 else float("nan"),
           "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
           "wilcoxon_p": float("nan"), "ttest_p": float("nan")}
    if n >= 2 and np.any(d != 0):
        row["wilcoxon_p"] = float(stats.wilcoxon(d, alternative="two-sided", method="exact" if n <= 50 else "auto").pvalue)
        if np.std(d) > 0:
            row["ttest_p"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    elif n >= 2:
        row["wilcoxon_p"] = row["ttest_p"] = 1.0
    row["note"] = (
        "no pairs" if n == 0 else
        f"n={n} < {WILCOXON_MIN_N}: Wilcoxon cannot reach p<0.05" if n < WILCOXON_MIN_N else ""
    )
    return row


def controls_in(runs: pd.DataFrame, controls=DEFAULT_CONTROLS) -> list[str]:
    present = set(runs["recipe"])
    return [c for c in controls if c in present]


def treatments(recipes, control: str, controls: list[str]) -> list[str]:
    """Recipes compared with ``control``: every non-control recipe; against the last control
    (the plainest baseline, ``ce``) the other controls too (e.g. ``ce_ft`` vs ``ce``)."""
    others = [c for c in controls if c != control] if control == controls[-1] else []
    return sorted(r for r in set(recipes) if r != control and (r not in controls or r in others))


def paired(runs: pd.DataFrame, metric: str = "test_auc", controls=DEFAULT_CONTROLS, primary: str | None = None,
           primary_protocol: str = PRIMARY_PROTOCOL) -> pd.DataFrame:
    """Each treatment vs each control on identical units (dataset, size, model, aug, protocol, seed).

    Pooled rows (dataset ``all (pooled)``): a recipe present on two or more datasets pools its
    pairs; and when every dataset has exactly one DAM treatment (objective other than ``ce``),
    "each dataset's DAM recipe" pools those -- the pairs are then independent. Pooling is per
    protocol; the ``primary_protocol`` row against ``primary`` is the primary endpoint (``primary = True``).
    """
    u = units(runs)
    if u.empty or metric not in u:
        return pd.DataFrame()
    ctrls = controls_in(runs, controls)
    rows = []
    for control in ctrls:
        base = u[u["recipe"] == control][PAIR_KEYS + [metric]].rename(columns={metric: "base"})
        treated = u[u["recipe"].isin(treatments(u["recipe"], control, ctrls))]
        pairs = treated[PAIR_KEYS + ["recipe", "objective", metric]].merge(base, on=PAIR_KEYS, how="inner")
        pairs["d"] = pairs[metric] - pairs["base"]
        for (dataset, size, recipe, model, aug, protocol), g in pairs.groupby(
                ["dataset", "size", "recipe", "model", "aug", "protocol"], sort=True):
            key = {"control": control, "dataset": dataset, "size": size, "recipe": recipe, "model": model, "aug": aug,
                   "protocol": protocol, "primary": False}
            rows.append(paired_row(key, g["d"].to_numpy(dtype=float)))
        for (recipe, aug, protocol), g in pairs.groupby(["recipe", "aug", "protocol"], sort=True):
            if g["dataset"].nunique() >= 2:
                key = {"control": control, "dataset": "all (pooled)", "size": "", "recipe": recipe,
                       "model": "/".join(sorted(g["model"].unique())), "aug": aug, "protocol": protocol, "primary": False}
                rows.append(paired_row(key, g["d"].to_numpy(dtype=float)))
        # One pooled row per protocol: a dataset run under both the official split and cv5 has
        # two units per seed that share the seed, so pooling them would count it twice.
        for protocol, dam in pairs[pairs["objective"] != "ce"].groupby("protocol", sort=True):
            per_dataset = dam.groupby("dataset")["recipe"].nunique()
            if len(per_dataset) >= 2 and (per_dataset == 1).all():
                key = {"control": control, "dataset": "all (pooled)", "size": "", "recipe": "each dataset's DAM recipe",
                       "model": "/".join(sorted(dam["model"].unique())), "aug": "as above", "protocol": protocol,
                       "primary": control == primary and protocol == primary_protocol}
                rows.append(paired_row(key, dam["d"].to_numpy(dtype=float)))
    return pd.DataFrame(rows)

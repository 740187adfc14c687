"""Group statistics and paired DAM-vs-CE tests.

* Spread: sample standard deviation (ddof=1) over the runs of a group (seeds, and folds
  for ``cv5``); the 95% CI is the t-interval mean +- t(0.975, n-1) * std / sqrt(n).
  With n = 1 there is no spread: std and CI are NaN and rendered as "n/a".
* Paired comparison: for every recipe other than the baseline (``ce``), runs are paired
  with the baseline run of the same dataset, model, aug, protocol, seed and fold. We
  report the mean paired difference of test AUC, the two-sided **Wilcoxon signed-rank**
  test (exact distribution; scipy) and, for reference, the paired t-test. With n < 6
  pairs the Wilcoxon test cannot reach p < 0.05 whatever the data (its smallest exact
  two-sided p is 2/2^n), which the table says explicitly.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

GROUP_KEYS = ["dataset", "recipe", "model", "aug", "protocol"]
PAIR_KEYS = ["dataset", "model", "aug", "protocol", "seed", "fold"]
TEST_METRICS = ["test_auc", "test_auprc", "test_f1", "test_acc", "test_acc_tuned", "test_f1_tuned"]
BASELINE = "ce"
WILCOXON_MIN_N = 6  # smallest n at which an exact two-sided Wilcoxon p can be < 0.05


def ci95(std: float, n: int) -> float:
    if n < 2 or not np.isfinite(std):
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n, mean, std (ddof=1) and 95% CI half-width of every test metric."""
    rows = []
    for key, g in runs.groupby(GROUP_KEYS, sort=True):
        row = dict(zip(GROUP_KEYS, key))
        row["n"] = len(g)
        row["seeds"] = g["seed"].nunique()
        row["epochs"] = int(g["epochs"].max())
        row["unverified"] = bool((~g["data_verified"]).any())
        for m in TEST_METRICS + ["val_auc"]:
            vals = g[m].to_numpy(dtype=float)
            mean = float(np.mean(vals))
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            row[f"{m}_mean"], row[f"{m}_std"], row[f"{m}_ci95"] = mean, std, ci95(std, len(vals))
        rows.append(row)
    agg = pd.DataFrame(rows)
    if agg.empty:
        return agg
    # A group is incomplete when it has fewer runs than the fullest group of its protocol
    # on the same dataset (e.g. 2 of 3 seeds finished).
    expected = agg.groupby(["dataset", "protocol"])["n"].transform("max")
    agg["expected_n"] = expected
    agg["incomplete"] = agg["n"] < expected
    return agg


def _paired_row(key: dict, d: np.ndarray) -> dict:
    n = len(d)
    row = {**key, "n_pairs": n,
           "mean_diff": float(np.mean(d)) if n else float("nan"),
           "std_diff": float(np.std(d, ddof=1)) if n > 1 else float("nan"),
           "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
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


def paired_vs_baseline(runs: pd.DataFrame, metric: str = "test_auc", baseline: str = BASELINE) -> pd.DataFrame:
    """Each non-baseline recipe vs the baseline on identical (dataset, model, aug, protocol, seed, fold).

    A recipe that appears on two or more datasets also gets a pooled row (dataset
    ``all (pooled)``): all its pairs together, a test of "does it help across datasets".
    With exactly one DAM recipe per dataset, one more pooled row takes all pairs.
    """
    base = runs[runs["recipe"] == baseline][PAIR_KEYS + [metric]].rename(columns={metric: "base"})
    pairs = runs[runs["recipe"] != baseline][PAIR_KEYS + ["recipe", metric]].merge(base, on=PAIR_KEYS, how="inner")
    pairs["d"] = pairs[metric] - pairs["base"]
    rows = []
    for (dataset, recipe, model, aug, protocol), g in runs[runs["recipe"] != baseline].groupby(
        ["dataset", "recipe", "model", "aug", "protocol"], sort=True
    ):
        m = g[PAIR_KEYS + [metric]].merge(base, on=PAIR_KEYS, how="inner")
        key = {"dataset": dataset, "recipe": recipe, "model": model, "aug": aug, "protocol": protocol}
        rows.append(_paired_row(key, (m[metric] - m["base"]).to_numpy(dtype=float)))
    for (recipe, aug, protocol), g in pairs.groupby(["recipe", "aug", "protocol"], sort=True):
        if g["dataset"].nunique() >= 2:
            key = {"dataset": "all (pooled)", "recipe": recipe, "model": "/".join(sorted(g["model"].unique())),
                   "aug": aug, "protocol": protocol}
            rows.append(_paired_row(key, g["d"].to_numpy(dtype=float)))
    # A study pairs each dataset with one DAM recipe: then all pairs are independent and pool
    # into one test of "the selected DAM recipes vs CE". Several recipes per dataset would reuse
    # the same CE runs in several pairs, so no such row is made then.
    per_dataset = pairs.groupby("dataset")["recipe"].nunique()
    if len(per_dataset) >= 2 and (per_dataset == 1).all():
        key = {"dataset": "all (pooled)", "recipe": "each dataset's DAM recipe",
               "model": "/".join(sorted(pairs["model"].unique())), "aug": "as above", "protocol": "/".join(sorted(pairs["protocol"].unique()))}
        rows.append(_paired_row(key, pairs["d"].to_numpy(dtype=float)))
    return pd.DataFrame(rows)

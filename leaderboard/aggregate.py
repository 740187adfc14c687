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

from bench.catalog import TEST_METRICS, UNGATED_METRICS

GROUP_KEYS = ["dataset", "size", "recipe", "model", "aug", "protocol"]
UNIT_KEYS = GROUP_KEYS + ["seed"]
PAIR_KEYS = ["dataset", "size", "model", "aug", "protocol", "seed"]
SHIFT_METRICS = ["shift_auc_mean", "shift_auc_drop"]
DEFAULT_CONTROLS = ("ce_ft", "ce")
PRIMARY_PROTOCOL = "official"  # default of analysis.primary.protocol; the findings table's protocol
WILCOXON_MIN_N = 6  # smallest n at which an exact two-sided Wilcoxon p can be < 0.05


def ci95(std: float, n: int) -> float:
    if n < 2 or not np.isfinite(std):
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Every numeric result column a unit carries (test metrics, val AUC, ungated, shift metrics)."""
    return [c for c in TEST_METRICS + ["val_auc"] + UNGATED_METRICS if c in runs] + \
        sorted(c for c in runs if c.startswith("shift_"))


def units(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per independent unit: a run on the official split, a seed's fold mean under cv5."""
    cols = metric_columns(runs)
    rows = []
    for key, g in runs.groupby(UNIT_KEYS, sort=True):
        row = dict(zip(UNIT_KEYS, key))
        row.update({c: float(g[c].mean()) for c in cols})
        row["n_folds"] = len(g)
        row["objective"] = g["objective"].iloc[0]
        row["gated"] = float(g["gated"].mean()) if "gated" in g else float("nan")
        row["run_ids"] = ",".join(g["run_id"]) if "run_id" in g else ""
        rows.append(row)
    return pd.DataFrame(rows)


# Recorded run properties that can move a number; a group whose runs differ in one is flagged.
MIXABLE = {"versions": "mixed library versions", "threads": "mixed CPU thread counts", "precision": "mixed precision"}


def _code(g: pd.DataFrame) -> dict:
    codes = sorted(set(g["code"]) - {""})
    commits = sorted(set(g["commit"]) - {""})
    mixed = [why for col, why in MIXABLE.items() if col in g and len(set(g[col]) - {""}) > 1]
    return {"code": ",".join(c[:8] for c in codes) or "not recorded", "commits": ",".join(c[:7] for c in commits),
            "mixed_code": len(codes) > 1 or (bool(codes) and (g["code"] == "").any()),
            "dirty": bool(g["dirty"].any()), "no_code": not codes, "mixed_other": "; ".join(mixed)}


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n units, mean, std (ddof=1), 95% CI of every metric, and the code."""
    u = units(runs)
    rows = []
    for key, g in u.groupby(GROUP_KEYS, sort=True):
        row = dict(zip(GROUP_KEYS, key))
        r = runs[(runs[GROUP_KEYS] == pd.Series(row)).all(axis=1)]
        row.update(n=len(g), n_runs=len(r), folds=int(g["n_folds"].max()), epochs=int(r["epochs"].max()),
                   unverified=bool((~r["data_verified"]).any()), objective=g["objective"].iloc[0],
                   finetune=bool((r["init_from"] != "").any()),
                   gated_share=float(r["gated"].mean()) if "gated" in r and r["gated"].notna().any() else float("nan"),
                   **_code(r))
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


BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 20260141  # fixed: a leaderboard regenerates byte for byte


def bootstrap_ci(d: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean paired difference, resampling pairs (seeds).

    Percentile rather than BCa: BCa's jackknife is undefined when many pairs are exact zeros
    (a gated fine-tune equals its source), which happens here. n < 2: no interval.
    """
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan"), float("nan")
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                          random_state=np.random.default_rng(BOOTSTRAP_SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_row(key: dict, d: np.ndarray) -> dict:
    d = d[np.isfinite(d)]
    n = len(d)
    lo, hi = bootstrap_ci(d)
    row = {**key, "n_pairs": n,
           "mean_diff": float(np.mean(d)) if n else float("nan"),
           "std_diff": float(np.std(d, ddof=1)) if n > 1 else float("nan"),
           "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
           "eff_n": int((d != 0).sum()), "ci_lo": lo, "ci_hi": hi,
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
           primary_protocol: str = PRIMARY_PROTOCOL, dam=()) -> pd.DataFrame:
    """Each treatment vs each control on identical units (dataset, size, model, aug, protocol, seed).

    Pooled rows (dataset ``all (pooled)``): a recipe present on two or more datasets pools its
    pairs; and when every dataset has exactly one DAM treatment (a recipe of ``dam``, the suite's
    ``analysis.families.dam``), "each dataset's DAM recipe" pools those -- the pairs are then
    independent. Pooling is per protocol; the ``primary_protocol`` row against ``primary`` is the
    primary endpoint (``primary = True``). ``eff_n``: pairs that are not exact ties (what the
    Wilcoxon test uses); ``ci_lo``/``ci_hi``: the bootstrap 95% CI over pairs.
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
        for protocol, dam_pairs in pairs[pairs["recipe"].isin(set(dam))].groupby("protocol", sort=True):
            per_dataset = dam_pairs.groupby("dataset")["recipe"].nunique()
            if len(per_dataset) >= 2 and (per_dataset == 1).all():
                key = {"control": control, "dataset": "all (pooled)", "size": "", "recipe": "each dataset's DAM recipe",
                       "model": "/".join(sorted(dam_pairs["model"].unique())), "aug": "as above", "protocol": protocol,
                       "primary": control == primary and protocol == primary_protocol}
                rows.append(paired_row(key, dam_pairs["d"].to_numpy(dtype=float)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- pairs of arms

FINDING_KEYS = ["dataset", "size", "model", "aug"]  # a findings row: one group of comparable arms


def pair_diffs(u: pd.DataFrame, treatment: str, control: str, metric: str) -> pd.DataFrame:
    """Per unit (dataset, size, model, aug, protocol, seed): treatment − control on ``metric``,
    with both arms' run ids (for the hierarchical bootstrap). Units missing an arm are left out;
    a unit whose metric is not recorded (NaN) stays, with NaN d."""
    if metric not in u:  # runs that predate the metric: every pair is "not recorded"
        u = u.assign(**{metric: np.nan})
    cols = PAIR_KEYS + [metric, "run_ids"]
    t = u[u["recipe"] == treatment][cols].rename(columns={metric: "t", "run_ids": "t_runs"})
    c = u[u["recipe"] == control][cols].rename(columns={metric: "c", "run_ids": "c_runs"})
    out = t.merge(c, on=PAIR_KEYS, how="inner")
    out["d"] = out["t"] - out["c"]
    out["treatment"], out["control"] = treatment, control
    return out


def source_check(runs: pd.DataFrame) -> pd.DataFrame:
    """Every fine-tune run against the run its source cell has *in this table*.

    status ``ok``: the run recorded (``bench_init_run_id``) that it started from exactly the
    source run it is paired with; ``mismatch``: it started from another run (e.g. a CE cell
    retrained after the fine-tune ran); ``unchecked``: the run predates the tag; ``no source``:
    the table has no run of its source cell.
    """
    keys = ["dataset", "size", "model", "aug", "protocol", "seed", "fold"]
    ft = runs[runs["init_from"] != ""]
    if ft.empty:
        return pd.DataFrame(columns=["run_id", "recipe", "dataset", "seed", "fold", "recorded", "paired_with", "status"])
    src = runs[[*keys, "recipe", "run_id"]].rename(columns={"recipe": "init_from", "run_id": "paired_with"})
    m = ft[[*keys, "recipe", "init_from", "run_id", "init_run_id"]].merge(src, on=[*keys, "init_from"], how="left")
    recorded = m["init_run_id"].fillna("").astype(str)
    paired_with = m["paired_with"].fillna("").astype(str)
    m["status"] = np.select([recorded == "", paired_with == "", recorded == paired_with],
                            ["unchecked", "no source", "ok"], "mismatch")
    return m.rename(columns={"init_run_id": "recorded"})[
        ["run_id", "recipe", "dataset", "seed", "fold", "recorded", "paired_with", "status"]]


def _auc_fast(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC from ranks (ties averaged): equal to sklearn's roc_auc_score, ~20x faster
    inside a bootstrap loop."""
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = stats.rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def hierarchical_ci(pairs: pd.DataFrame, scores: dict, labels: dict, resamples: int = 2000) -> tuple[float, float]:
    """95% CI of the mean paired Δ AUC that resamples seeds *and* test images.

    The test set is fixed (BreastMNIST: 156 images), so the seed bootstrap alone ignores how the
    AUCs would move on another draw of test images. Each replicate draws pairs with replacement
    and, per dataset, one resample of its test images shared by both arms of every pair (they
    were scored on the same images), then recomputes both AUCs. Needs the runs' test scores
    (``<suite>-test-scores.csv``); returns NaNs when any pair lacks them.
    """
    rows = []
    for r in pairs.itertuples():
        ts, cs = scores.get(r.t_runs), scores.get(r.c_runs)
        if ts is None or cs is None or r.dataset not in labels:
            return float("nan"), float("nan")
        rows.append((r.dataset, ts, cs))
    if len(rows) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.empty(resamples)
    for b in range(resamples):
        pick = rng.integers(0, len(rows), len(rows))
        idx = {d: rng.integers(0, len(y), len(y)) for d, y in labels.items()}
        diffs = [(_auc_fast(labels[rows[i][0]][idx[rows[i][0]]], rows[i][1][idx[rows[i][0]]])
                  - _auc_fast(labels[rows[i][0]][idx[rows[i][0]]], rows[i][2][idx[rows[i][0]]])) for i in pick]
        means[b] = np.nanmean(diffs)
    lo, hi = np.nanpercentile(means, [2.5, 97.5])
    return float(lo), float(hi)

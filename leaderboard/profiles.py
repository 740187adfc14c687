"""Performance profiles (Dolan & Moré, 2002; the MLCommons AlgoPerf leaderboard's form).

A *problem* is one (dataset, size, protocol). On each problem every recipe is represented by one
group: when a recipe has several groups there (model / aug variants), the one with the highest
mean **validation** AUC (``val_auc_mean``; test AUC never chooses; ties: the first group in the
aggregate's sorted order). The recipe's score on the problem is that group's mean test AUC.

The profile of a recipe is, as a function of τ, the share of problems on which its score is
within τ of the best recipe's score on that problem::

    rho_r(tau) = |{p : best_p - auc_{r,p} <= tau}| / n

The gap is **additive** (best − mine, in AUC points), not the ratio of Dolan-Moré's original
profiles: AUC is bounded in [0, 1] and higher is better, so a ratio of AUCs has no fixed meaning
across problems of different difficulty, while a gap of 0.01 AUC reads the same everywhere.
rho_r(0) is the share of problems the recipe wins (ties count for every tied recipe).

Only problems on which at least two recipes have runs count (a lone recipe is trivially "best");
n is the number of such problems. A recipe without runs on a counted problem is never within τ
there (Dolan-Moré's "failed": an infinite gap). Gaps are compared with a tolerance of 1e-9 so
that a gap of exactly τ, written in decimal, counts as within τ despite floating-point rounding.
Everything is computed from the aggregate (``leaderboard.aggregate.aggregate``); nothing is typed.

``analysis.profiles.per: [seed]`` makes every seed of a problem a problem of its own (scores are then
single runs, the group still chosen on validation): a suite on one dataset has n = 1 problem, and a
profile over its seeds at least shows how often each recipe is near the best. Suites with search
trials profile their *families* (each family's trial selected on validation, leaderboard.trials).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard.format import table

PROBLEM_KEYS = ["dataset", "size", "protocol"]
TOLERANCE = 1e-9  # a gap of exactly tau (decimal) counts as within tau
TITLE = "## Performance profiles (share of problems within τ of the best test AUC)"


def per_run(runs: pd.DataFrame) -> pd.DataFrame:
    """An aggregate-shaped frame with one row per run (for ``per: [seed]``): its val and test AUC as the means."""
    cols = ["dataset", "size", "protocol", "seed", "recipe", "model", "aug"]
    u = runs.groupby(cols, as_index=False)[["val_auc", "test_auc"]].mean()  # cv5: a seed's fold mean
    return u.rename(columns={"val_auc": "val_auc_mean", "test_auc": "test_auc_mean"})


def scores(agg: pd.DataFrame, keys=PROBLEM_KEYS) -> pd.DataFrame:
    """One row per (problem, recipe): the recipe's group with the best mean validation AUC there.

    Columns: dataset, size, protocol, recipe, model, aug, val_auc_mean, test_auc_mean. Groups
    without a finite mean test AUC are left out; only problems with >= 2 recipes are kept.
    """
    keys = list(keys)
    cols = keys + ["recipe", "model", "aug", "val_auc_mean", "test_auc_mean"]
    if agg.empty:
        return pd.DataFrame(columns=cols)
    g = agg[np.isfinite(agg["test_auc_mean"].astype(float))].copy()
    g["_val"] = g["val_auc_mean"].astype(float).fillna(-np.inf)  # a group without val AUC is chosen last
    # stable sort on val only: equal val keeps the aggregate's (sorted) order, so the first group wins a tie
    g = g.sort_values("_val", ascending=False, kind="mergesort")
    best = g.groupby(keys + ["recipe"], sort=True).head(1)
    n_recipes = best.groupby(keys)["recipe"].transform("nunique")
    best = best[n_recipes >= 2]
    return best.sort_values(keys + ["recipe"]).reset_index(drop=True)[cols]


def gaps(agg: pd.DataFrame, keys=PROBLEM_KEYS) -> tuple[pd.DataFrame, int]:
    """(gap per (problem, recipe) = best test AUC on the problem − the recipe's, n problems)."""
    keys = list(keys)
    s = scores(agg, keys)
    s["gap"] = s.groupby(keys)["test_auc_mean"].transform("max") - s["test_auc_mean"]
    n = len(s.groupby(keys)) if len(s) else 0
    return s, n


def profile(agg: pd.DataFrame, taus, keys=PROBLEM_KEYS) -> pd.DataFrame:
    """rho_r(tau) for every recipe with a counted problem and every tau in ``taus``.

    Long format, one row per (recipe, tau): recipe, tau, k (problems within tau), n, share = k/n.
    Recipes in name order, taus in the given order.
    """
    s, n = gaps(agg, keys)
    rows = []
    for recipe in sorted(s["recipe"].unique()):
        gap = s.loc[s["recipe"] == recipe, "gap"].to_numpy(dtype=float)
        for tau in taus:
            k = int((gap <= float(tau) + TOLERANCE).sum())
            rows.append({"recipe": recipe, "tau": float(tau), "k": k, "n": n, "share": k / n})
    return pd.DataFrame(rows, columns=["recipe", "tau", "k", "n", "share"])


def _tau(t: float) -> str:
    return f"τ = {t:g}"


def _keys_text(keys) -> str:
    return ", ".join(keys)


def profile_table(agg: pd.DataFrame, taus, keys=PROBLEM_KEYS) -> str:
    """Caption and markdown table: a row per recipe, a column per tau, cells "k/n (xx%)"."""
    p = profile(agg, taus, keys)
    if p.empty:
        return f"_No problem ({_keys_text(keys)}) has runs of two or more recipes: no profile._"
    n = int(p["n"].iloc[0])
    caption = (f"n = {n} problem{'s' if n != 1 else ''} ({_keys_text(keys)}) with runs of at least two recipes. "
               "Per problem each recipe is its group (model, aug) with the best mean **validation** AUC; a cell is "
               "the share of problems on which that group's mean test AUC is within τ of the best recipe's "
               "(additive gap in AUC: best − recipe ≤ τ; a recipe without runs on a problem is never within τ).")
    rows = []
    for recipe, g in p.groupby("recipe", sort=True):
        by_tau = dict(zip(g["tau"], zip(g["k"], g["share"])))
        rows.append([f"`{recipe}`"] + [f"{by_tau[float(t)][0]}/{n} ({100 * by_tau[float(t)][1]:.0f}%)" for t in taus])
    return caption + "\n\n" + table(["recipe"] + [_tau(float(t)) for t in taus], rows, 1)


def curves(agg: pd.DataFrame, taus, keys=PROBLEM_KEYS) -> dict[str, tuple[list[float], list[float]]]:
    """The step lines the chart draws: recipe -> (tau values, shares), from 0 to max(taus).

    The x values are 0, every recipe's gaps inside (0, max tau) and the declared taus, so each jump
    of the exact step function rho_r is drawn where it happens (steps are drawn "post").
    """
    s, n = gaps(agg, keys)
    if not n:
        return {}
    top = max(float(t) for t in taus)
    inner = [float(x) for x in s["gap"] if 0 < x < top]
    xs = sorted(set([0.0] + inner + [float(t) for t in taus]))
    out = {}
    for recipe in sorted(s["recipe"].unique()):
        gap = s.loc[s["recipe"] == recipe, "gap"].to_numpy(dtype=float)
        out[recipe] = (xs, [int((gap <= x + TOLERANCE).sum()) / n for x in xs])
    return out


def profile_figure(agg: pd.DataFrame, taus, keys=PROBLEM_KEYS):
    """(figure, axes, curves): one step line per recipe, x = τ, y = share of problems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = curves(agg, taus, keys)
    _, n = gaps(agg, keys)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    styles = ["-", "--", "-.", ":"]  # equal profiles overlap: the line style tells them apart
    for k, (recipe, (xs, ys)) in enumerate(series.items()):
        ax.step(xs, ys, where="post", lw=1.5, ls=styles[k % len(styles)], label=recipe)
    for t in taus:
        ax.axvline(float(t), color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0.0, max([float(t) for t in taus]) or 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("τ (best mean test AUC − recipe's)")
    ax.set_ylabel(f"share of problems (n = {n})")
    ax.set_title("Performance profiles: share of problems within τ of the best test AUC", fontsize=10)
    return fig, ax, series


def profile_chart(agg: pd.DataFrame, taus, path: Path, keys=PROBLEM_KEYS) -> dict[str, tuple[list[float], list[float]]]:
    """Draw :func:`profile_figure` to ``path`` (PNG); returns the plotted series."""
    from leaderboard.render import save_chart

    fig, ax, series = profile_figure(agg, taus, keys)
    save_chart(fig, ax, path)
    return series

"""Search trials (``search:``, bench.search) in the leaderboard: the trial validation selects per
family, what it scored, and how much that choice depends on the draw.

A trial recipe is named ``<family>@t<NN>``. Per (dataset, size, protocol) and family:

* **selection** -- the trial with the highest mean **validation** AUC over its seeds (the rule of
  ``analysis.select``'s default, applied in code); only complete trials (every seed finished)
  compete; ties go to the lower trial number. Test AUC is read only for the trial selected.
* **the draw** -- AlgoPerf repeats a study with other trial seeds. Here the declared trials are
  split into their first and second halves (t00..t{T/2-1}, the rest), each half picks its own
  winner by the same rule, and the table shows both winners' test AUC: two studies of half the
  budget each. A large difference says the winner depends on which trials were drawn.

The family-level runs (:func:`collapse`: each family's trials replaced by its selected trial)
feed the performance profiles, so a profile ranks tuned families, not single trials.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from leaderboard.format import table

TRIAL = re.compile(r"^(?P<family>.+)@t(?P<trial>\d+)$")
PROBLEM = ["dataset", "size", "protocol"]


def family_of(recipe: str) -> str:
    m = TRIAL.match(recipe)
    return m.group("family") if m else recipe


def trial_of(recipe: str) -> int | None:
    m = TRIAL.match(recipe)
    return int(m.group("trial")) if m else None


def has_trials(runs: pd.DataFrame) -> bool:
    return bool(len(runs)) and runs["recipe"].map(lambda r: trial_of(r) is not None).any()


def _per_trial(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (problem, family, trial): n seeds, mean/std of val and test AUC, completeness."""
    r = runs[runs["recipe"].map(lambda x: trial_of(x) is not None)].copy()
    r["family"] = r["recipe"].map(family_of)
    r["trial"] = r["recipe"].map(trial_of)
    # a cv5 seed is the mean of its folds, as everywhere in the leaderboard
    u = r.groupby(PROBLEM + ["family", "trial", "recipe", "seed"], as_index=False)[["val_auc", "test_auc"]].mean()
    g = u.groupby(PROBLEM + ["family", "trial", "recipe"], as_index=False).agg(
        n=("seed", "nunique"), val_mean=("val_auc", "mean"), val_std=("val_auc", "std"),
        test_mean=("test_auc", "mean"), test_std=("test_auc", "std"))
    g["complete"] = g["n"] == g.groupby(PROBLEM + ["family"])["n"].transform("max")
    return g


def _winner(g: pd.DataFrame) -> pd.Series | None:
    c = g[g["complete"]].sort_values(["val_mean", "trial"], ascending=[False, True], kind="mergesort")
    return None if c.empty else c.iloc[0]


def select(runs: pd.DataFrame) -> pd.DataFrame:
    """Per problem and family: the selected trial and the half-budget winners (see the module doc)."""
    per = _per_trial(runs)
    rows = []
    for key, g in per.groupby(PROBLEM + ["family"], sort=True):
        w = _winner(g)
        if w is None:
            continue
        trials = sorted(g["trial"])
        half = (max(trials) + 1) // 2
        a, b = _winner(g[g["trial"] < half]), _winner(g[g["trial"] >= half])
        rows.append({**dict(zip(PROBLEM + ["family"], key)), "trials": len(g), "complete": int(g["complete"].sum()),
                     "selected": w["recipe"], "n": int(w["n"]), "val_mean": w["val_mean"], "val_std": w["val_std"],
                     "test_mean": w["test_mean"], "test_std": w["test_std"],
                     "val_range": (g["val_mean"].min(), g["val_mean"].max()),
                     "half_a": None if a is None else (a["recipe"], a["test_mean"]),
                     "half_b": None if b is None else (b["recipe"], b["test_mean"])})
    return pd.DataFrame(rows)


def collapse(runs: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each family's trials replaced by its selected trial's runs, named as the family."""
    keep = set() if chosen.empty else set(zip(*[chosen[k] for k in PROBLEM], chosen["selected"]))
    is_trial = runs["recipe"].map(lambda r: trial_of(r) is not None)
    picked = runs[is_trial & pd.Series([k in keep for k in zip(*[runs[c] for c in PROBLEM], runs["recipe"])],
                                       index=runs.index)].copy()
    picked["recipe"] = picked["recipe"].map(family_of)
    return pd.concat([runs[~is_trial], picked]).reset_index(drop=True)


def _params(export: pd.DataFrame | None, recipe: str) -> str:
    """The trial's searched values as recorded with its runs: the ``params.<objective>.<name>``
    that differ between the trials of its family."""
    if export is None or "params.recipe" not in export:
        return ""
    fam = export[export["params.recipe"].astype(str).map(family_of) == family_of(recipe)]
    r = export[export["params.recipe"] == recipe]
    if r.empty:
        return ""
    obj = str(r["params.objective"].iloc[0])
    vals = []
    for col in sorted(c for c in export.columns if c.startswith(f"params.{obj}.")):
        if fam[col].astype(str).nunique() > 1 and pd.notna(r[col].iloc[0]):
            v = r[col].iloc[0]
            try:
                v = f"{float(v):.3g}"
            except (TypeError, ValueError):
                pass
            vals.append(f"{col[len(f'params.{obj}.'):]} {v}")
    return ", ".join(vals)


def _pm(mean: float, std: float) -> str:
    return "—" if not np.isfinite(mean) else f"{mean:.4f} ± {std:.4f}" if np.isfinite(std) else f"{mean:.4f}"


def trials_table(runs: pd.DataFrame, export: pd.DataFrame | None = None) -> str:
    """Markdown: per problem and family, the trial budget, the selected trial and the two half-budget winners."""
    chosen = select(runs)
    if chosen.empty:
        return "_No complete search trial: nothing selected._"
    head = ["dataset", "family", "trials (complete)", "selected on val (searched values)", "n",
            "val AUC of selected", "test AUC of selected", "val AUC range over trials",
            "half-budget studies: winner → test AUC (t-first half | second half)"]
    rows = []
    for r in chosen.itertuples():
        halves = " \\| ".join("—" if h is None else f"`{h[0].split('@')[1]}` → {h[1]:.4f}" for h in (r.half_a, r.half_b))
        rows.append([f"{r.dataset}" + (f" {r.size}px" if r.size != 28 else "") + (f" ({r.protocol})" if r.protocol != "official" else ""),
                     f"`{r.family}`", f"{r.trials} ({r.complete})",
                     f"`{r.selected}` ({_params(export, r.selected) or '—'})", str(r.n), _pm(r.val_mean, r.val_std),
                     _pm(r.test_mean, r.test_std), f"{r.val_range[0]:.4f} – {r.val_range[1]:.4f}", halves])
    caption = ("Per family the trial with the highest mean **validation** AUC over its seeds is selected (complete "
               "trials only; ties: the lower trial number); its test AUC is mean ± std over seeds (n). Test AUC never "
               "chooses. The last column repeats the selection within each half of the trials (two studies of half "
               "the budget): far-apart test AUCs mean the winner depends on the draw.")
    return caption + "\n\n" + table(head, rows, 2)

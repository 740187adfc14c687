"""The search rule, applied in code: per dataset and recipe family, the configuration with the
highest mean validation AUC over the search seeds wins.

A search suite declares which families compete (``analysis.select.families``, names of ``analysis.families``).
A configuration is one group (recipe, model, aug) of a dataset. Only complete groups compete
(every search seed finished), ties go to the configuration listed first, and test numbers are
never read. The record also counts configurations per family, so an unequal tuning budget is
visible (and flagged).
"""
from __future__ import annotations

import pandas as pd

from leaderboard.aggregate import aggregate
from leaderboard.format import table

CONFIG_KEYS = ["recipe", "model", "aug"]


def _family_of(families: dict) -> dict:
    return {recipe: fam for fam, recipes in families.items() for recipe in recipes}


def winners(runs: pd.DataFrame, families: dict) -> dict:
    """{(dataset, family): (recipe, model, aug, mean val AUC)} by the rule above (``families``:
    family -> recipes that compete, ``bench.analysis.Analysis.select_families()``)."""
    order = {r: i for i, r in enumerate(r for recipes in families.values() for r in recipes)}
    fam = _family_of(families)
    agg = aggregate(runs[runs["protocol"] == "official"])
    agg = agg[agg["recipe"].isin(fam) & ~agg["incomplete"]]
    out = {}
    for (dataset, family), g in agg.assign(family=agg["recipe"].map(fam)).groupby(["dataset", "family"]):
        g = g.assign(order=g["recipe"].map(order)).sort_values(["val_auc_mean", "order"], ascending=[False, True])
        top = g.iloc[0]
        out[(dataset, family)] = (top["recipe"], top["model"], top["aug"], float(top["val_auc_mean"]))
    return out


def search_record(runs: pd.DataFrame, families: dict, rule: str) -> str:
    """Markdown: per dataset and family, every configuration tried with its mean val AUC and the winner."""
    fam = _family_of(families)
    agg = aggregate(runs[(runs["protocol"] == "official") & runs["recipe"].isin(fam)])
    won = winners(runs, families)
    head = ["dataset", "family", "configurations tried", "n seeds", "configuration (recipe, model, aug): mean val AUC",
            "selected"]
    rows = []
    for dataset, d in agg.groupby("dataset", sort=True):
        counts = {f: int((d["recipe"].map(fam) == f).sum()) for f in families}
        unequal = len(set(counts.values())) > 1
        for family in families:
            g = d[d["recipe"].map(fam) == family].sort_values("val_auc_mean", ascending=False)
            tried = "; ".join(f"{r.recipe}, {r.model}, {r.aug}: {r.val_auc_mean:.4f}"
                              + (" (incomplete)" if r.incomplete else "") for r in g.itertuples())
            w = won.get((dataset, family))
            rows.append([dataset, family, f"{counts[family]}" + (" ⚠ unequal budget" if unequal else ""),
                         ",".join(sorted({str(n) for n in g["n"]})) or "0", tried or "—",
                         f"**{w[0]}** ({w[1]}, aug {w[2]})" if w else "—"])
    return f"Rule (fixed before the search ran): {rule}.\n\n" + table(head, rows, 3)

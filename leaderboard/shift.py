"""Generalization under shift: tables, paired tests and a chart over the runs' corrupted-set AUCs.

Pure functions of a runs frame (one row per run: dataset, recipe, model, aug, protocol,
seed, fold, test_auc, and the metrics of :mod:`bench.catalog` (shift metrics):
``shift_<corruption>_s<k>_auc``, ``shift_auc_mean``, ``shift_auc_drop``). Runs without
shift metrics (NaN ``shift_auc_mean``: the dataset has no corruption set, or the run was
not scored) are left out.

* Spread is the sample standard deviation (ddof=1) over a group's units (runs; under cv5 each
  seed's fold mean), as in :mod:`leaderboard.aggregate`; "n/a" when a group has one unit.
* The worst corruption of a group is the one with the lowest AUC averaged over its five
  severities and the group's runs.
* Paired tests reuse :func:`leaderboard.aggregate.paired` on ``shift_auc_mean``: the same
  controls, units and tests as the clean table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.catalog import SHIFT_DROP as DROP
from bench.catalog import SHIFT_MEAN as MEAN
from bench.catalog import parse_shift_metric as parse_metric
from leaderboard.aggregate import DEFAULT_CONTROLS, GROUP_KEYS, paired, units
from leaderboard.format import fmt
from leaderboard.render import save_chart

LINE_KEYS = ["recipe", "model", "aug", "protocol"]  # one chart line per combination present


def scored(runs: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """The runs that carry shift metrics (of ``dataset`` when given)."""
    if MEAN not in runs.columns:
        return runs.iloc[0:0]
    out = runs[np.isfinite(runs[MEAN].astype(float))]
    return out if dataset is None else out[out["dataset"] == dataset]


def corruption_columns(runs: pd.DataFrame) -> dict[str, dict[int, str]]:
    """corruption -> {severity: column}, for the per-set columns that hold any value in ``runs``."""
    out: dict[str, dict[int, str]] = {}
    for col in runs.columns:
        parsed = parse_metric(col)
        if parsed and runs[col].notna().any():
            out.setdefault(parsed[0], {})[parsed[1]] = col
    return dict(sorted(out.items()))


def _mean_std(values: pd.Series) -> tuple[float, float]:
    v = values.to_numpy(dtype=float)
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"))


def worst_corruption(group: pd.DataFrame) -> tuple[str, float]:
    """(name, AUC) of the corruption with the lowest AUC over its severities and the group's runs;
    ("n/a", NaN) when the runs carry no per-set columns."""
    means = {c: float(np.nanmean(group[list(cols.values())].to_numpy(dtype=float)))
             for c, cols in corruption_columns(group).items()}
    if not means:
        return "n/a", float("nan")
    name = min(means, key=means.get)
    return name, means[name]


def shift_table(runs: pd.DataFrame, dataset: str) -> str:
    """Markdown: per group of ``dataset`` (cv5: seeds' fold means as units), clean vs corrupted AUC."""
    g = scored(runs, dataset)
    if g.empty:
        return f"_No shift metrics for {dataset}._"
    u = units(g)
    head = ["objective", "model", "aug", "protocol", "n", "clean test AUC", "corrupted AUC (mean)",
            "drop (clean − corrupted)", "worst corruption (AUC)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 5) + "|"]
    for key, grp in u.groupby(GROUP_KEYS, sort=True):
        row = dict(zip(GROUP_KEYS, key, strict=True))
        worst, worst_auc = worst_corruption(grp)
        lines.append("| " + " | ".join([
            row["recipe"], row["model"], str(row["aug"]), row["protocol"], str(len(grp)),
            fmt(*_mean_std(grp["test_auc"])), fmt(*_mean_std(grp[MEAN])), fmt(*_mean_std(grp[DROP])),
            f"{worst} ({worst_auc:.3f})",
        ]) + " |")
    return "\n".join(lines)


def paired_shift(runs: pd.DataFrame, controls=DEFAULT_CONTROLS) -> pd.DataFrame:
    """Each recipe vs each control on the corrupted AUC (``shift_auc_mean``), as the clean table."""
    g = scored(runs)
    return paired(g, metric=MEAN, controls=controls) if not g.empty else pd.DataFrame()


def _line_label(row: dict, varying: list[str]) -> str:
    parts = [str(row["recipe"])]
    for k in varying:
        if k == "aug":
            parts.append(f"aug {row['aug']}")
        elif k != "recipe":
            parts.append(str(row[k]))
    return ", ".join(parts)


def severity_curves(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """AUC by severity (0 = clean) per line: mean and std (ddof=1) over runs of each run's AUC
    averaged over the corruptions. Columns: line, severity, mean, std, n."""
    g = scored(runs, dataset)
    cols = corruption_columns(g)
    varying = [k for k in LINE_KEYS if g[k].nunique() > 1]
    rows = []
    for key, grp in g.groupby(LINE_KEYS, sort=True):
        label = _line_label(dict(zip(LINE_KEYS, key, strict=True)), varying)
        per_run = {0: grp["test_auc"].astype(float)}
        for k in range(1, 6):
            per_run[k] = grp[[c[k] for c in cols.values() if k in c]].astype(float).mean(axis=1)
        for k, values in per_run.items():
            mean, std = _mean_std(values)
            rows.append({"line": label, "severity": k, "mean": mean, "std": std, "n": len(values)})
    return pd.DataFrame(rows, columns=["line", "severity", "mean", "std", "n"])


def severity_chart(runs: pd.DataFrame, dataset: str, path: str | Path) -> None:
    """PNG: AUC vs severity 0..5 per objective, error bars = std over runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = severity_curves(runs, dataset)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, c in curves.groupby("line", sort=True):
        ax.errorbar(c["severity"], c["mean"], yerr=np.nan_to_num(c["std"].to_numpy()), marker="o", ms=3,
                    capsize=3, label=label)
    ax.set_xticks(range(6), ["clean"] + [str(k) for k in range(1, 6)])
    ax.set_xlabel("corruption severity")
    ax.set_ylabel("test AUC (mean over corruptions)")
    ax.set_title(f"{dataset}: AUC under corruption (mean ± std over runs)", fontsize=10)
    save_chart(fig, ax, path)

"""Markdown and PNG rendering of an aggregate. Pure functions of their inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from leaderboard.aggregate import TEST_METRICS

REFERENCE = Path(__file__).with_name("reference.yaml")
COLUMNS = {  # metric -> header; every metric here is higher-is-better
    "test_auc": "test AUC", "test_auprc": "AUPRC", "test_f1": "F1", "test_acc": "ACC",
    "test_acc_tuned": "ACC (val thr.)", "test_f1_tuned": "F1 (val thr.)",
}


def load_reference() -> dict:
    return yaml.safe_load(REFERENCE.read_text())


def paper_rows(ref: dict, dataset: str) -> tuple[tuple[str, float, float], tuple[str, float, float]]:
    """(like-for-like row, best-AUC row) of the paper table for ``dataset``."""
    table = ref["results"][dataset]
    lfl = ref["like_for_like"]["3d" if dataset.endswith("3d") else "2d"]
    best = max(table, key=lambda k: table[k][0])
    return (lfl, *table[lfl]), (best, *table[best])


def fmt(mean: float, std: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "n/a"
    s = f"{mean:.{digits}f}"
    return f"{s} ± {std:.{digits}f}" if np.isfinite(std) else f"{s} ± n/a"


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _signed(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:+.3f}"


def dataset_table(agg: pd.DataFrame, ref: dict, dataset: str, protocol: str) -> str:
    g = agg[(agg["dataset"] == dataset) & (agg["protocol"] == protocol)].copy()
    if g.empty:
        return ""
    (lfl_name, lfl_auc, lfl_acc), _ = paper_rows(ref, dataset)
    best = {m: g[f"{m}_mean"].max() for m in TEST_METRICS}
    head = ["objective", "model", "aug", "n", "val AUC", COLUMNS["test_auc"], "AUC 95% CI"] + [COLUMNS[m] for m in TEST_METRICS[1:]]
    if protocol == "official":
        head += [f"Δ AUC vs {lfl_name}", f"Δ ACC vs {lfl_name}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    paper_models = ref["paper_models"]
    best_val = g["val_auc_mean"].max()
    for _, r in g.sort_values(["recipe", "aug", "model"]).iterrows():
        n = f"{r['n']}" if not r["incomplete"] else f"{r['n']}/{r['expected_n']} (incomplete)"
        if r["unverified"]:
            n += " ‡"
        cells = [r["recipe"], r["model"] + ("" if r["model"] in paper_models else " †"), "on" if r["aug"] else "off", n]
        val = fmt(r["val_auc_mean"], r["val_auc_std"], 4)  # what recipe selection may look at: 4 digits
        cells.append(f"_{val}_" if np.isclose(r["val_auc_mean"], best_val) else val)
        for m in TEST_METRICS:
            text = fmt(r[f"{m}_mean"], r[f"{m}_std"])
            cells.append(f"**{text}**" if np.isclose(r[f"{m}_mean"], best[m]) else text)
            if m == "test_auc":
                h = r["test_auc_ci95"]
                m_ = r["test_auc_mean"]
                cells.append(f"[{m_ - h:.3f}, {m_ + h:.3f}]" if np.isfinite(h) else "n/a (n=1)")
        if protocol == "official":
            cells += [_signed(r["test_auc_mean"] - lfl_auc), _signed(r["test_acc_mean"] - lfl_acc)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(paired: pd.DataFrame) -> str:
    if paired.empty:
        return "_No DAM-vs-CE pairs: the suite has no `ce` cells matching the DAM cells._"
    head = ["dataset", "objective", "model", "aug", "protocol", "pairs", "mean Δ test AUC (DAM − CE)",
            "wins/losses", "Wilcoxon p", "paired t p", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 5 + ["---:"] * 5 + ["---"]) + "|"]
    for _, r in paired.iterrows():
        lines.append("| " + " | ".join([
            r["dataset"], r["recipe"], r["model"], r["aug"] if isinstance(r["aug"], str) else ("on" if r["aug"] else "off"),
            r["protocol"], str(r["n_pairs"]),
            fmt(r["mean_diff"], r["std_diff"]), f"{r['wins']}/{r['losses']}", fmt_p(r["wilcoxon_p"]),
            fmt_p(r["ttest_p"]), r["note"] or "",
        ]) + " |")
    return "\n".join(lines)


def ensemble_table(ens: pd.DataFrame, dataset: str, lfl_auc: float) -> str:
    g = ens[ens["dataset"] == dataset]
    if g.empty:
        return ""
    head = ["objective", "model", "aug", "models (seeds)", "test AUC", "bootstrap 95% CI", "AUPRC", "ACC",
            "ACC (val thr.)", "val AUC", "Δ AUC vs paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for _, r in g.iterrows():
        lines.append("| " + " | ".join([
            r["recipe"], r["model"], "on" if r["aug"] else "off",
            f"{int(r['n_models'])} ({r['seeds']})" + ("" if r["data_verified"] else " ‡"),
            f"{r['test_auc']:.3f}", f"[{r['test_auc_lo']:.3f}, {r['test_auc_hi']:.3f}]", f"{r['test_auprc']:.3f}",
            f"{r['test_acc']:.3f}", f"{r['test_acc_tuned']:.3f}", f"{r['val_auc']:.3f}", _signed(r["test_auc"] - lfl_auc),
        ]) + " |")
    return "\n".join(lines)


def markdown(suite: str, runs: pd.DataFrame, agg: pd.DataFrame, paired: pd.DataFrame, generated_at: str,
             commit: str, charts: dict | None = None, ensembles: pd.DataFrame | None = None) -> str:
    ref = load_reference()
    n_unverified = int((~runs["data_verified"]).sum())
    out = [
        f"# Leaderboard: suite `{suite}`",
        "",
        "<!-- generated by `bench leaderboard` from MLflow runs — do not edit by hand -->",
        f"_Generated — do not edit._ Suite **{suite}**, **{len(runs)} runs** (newest FINISHED run per cell), "
        f"code commit `{commit or 'unknown'}`, generated {generated_at}.",
        "",
        "How to read this: every number is **mean ± std (ddof=1) over n runs** (seeds; × folds for 5-fold CV); "
        "the AUC 95% CI is the t-interval mean ± t(0.975, n−1)·std/√n. "
        "Selection of epoch and thresholds used validation data only; the test split was scored once per run. "
        "AUC and ACC follow `medmnist.Evaluator` (ACC at 0.5). AUPRC and F1 are for the minority class of the "
        "training split (label 0 for Breast/Pneumonia/Synapse, label 1 otherwise; ChestMNIST: each finding). "
        "\"val thr.\" columns use a threshold chosen on validation (max val ACC, resp. max val F1). "
        "Bold: best mean of the column for the dataset. \"val AUC\" is the selected models' validation AUC, the "
        "only number a choice between recipes may use (italic: best).",
        "",
        f"Paper reference: {ref['source']}. Δ columns compare with the like-for-like paper row (ResNet-18 (28) "
        "for 2D, ResNet-18+3D for 3D) on the official split; the paper reports AUC and ACC only. "
        "† marks a model that is **not** the paper's architecture (e.g. a light 3D variant): its Δ is not "
        "like-for-like. ‡ marks groups with unverified data (MD5 differs from the official file).",
    ]
    if n_unverified:
        out += ["", f"**Warning:** {n_unverified} run(s) used data whose MD5 differs from the official file."]
    for dataset in sorted(runs["dataset"].unique()):
        (lfl, lfl_auc, lfl_acc), (best, best_auc, best_acc) = paper_rows(ref, dataset)
        out += ["", f"## {dataset}", "",
                f"Paper test AUC / ACC: like-for-like **{lfl}** {lfl_auc:.3f} / {lfl_acc:.3f}; "
                f"best of the paper table **{best}** {best_auc:.3f} / {best_acc:.3f}."]
        if dataset == "chestmnist":
            out += ["", "ChestMNIST ACC is dominated by the all-negative rate (≈ 0.947 of labels are 0): "
                        "an ACC near 0.947 says nothing about the model."]
        official = dataset_table(agg, ref, dataset, "official")
        if official:
            out += ["", "### Official split", "", official]
        ens = ensemble_table(ensembles, dataset, lfl_auc) if ensembles is not None else ""
        if ens:
            out += ["", "### Seed ensembles (official split)", "",
                    "Each row is **one model**: the average of the listed seeds' selected models (the single-model "
                    "rows above), thresholds tuned on the averaged validation scores. Not comparable with the "
                    "single-model rows, and not with the paper's single models; its spread is a bootstrap 95% "
                    "interval over test images (2,000 resamples), not over training runs.", "", ens]
        cv = dataset_table(agg, ref, dataset, "cv5")
        if cv:
            out += ["", "### 5-fold CV on train ∪ val (official test split; no paper counterpart)", "", cv]
        if charts and dataset in charts:
            out += ["", f"![test AUC, {dataset}]({charts[dataset]})"]
    out += ["", "## Paired comparison: each DAM objective vs `ce`", "",
            "Pairs share dataset, model, aug, protocol, seed and fold. Test: two-sided Wilcoxon signed-rank "
            "(exact); the paired t-test is shown for reference. With fewer than 6 pairs the Wilcoxon test "
            "cannot reach p < 0.05, so such rows are descriptive only.", "", paired_table(paired), ""]
    return "\n".join(out)


def chart(agg: pd.DataFrame, dataset: str, ref: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = agg[(agg["dataset"] == dataset) & (agg["protocol"] == "official")]
    if g.empty:
        g = agg[agg["dataset"] == dataset]
    recipes = sorted(g["recipe"].unique())
    x = np.arange(len(recipes))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(recipes) + 4), 3.6))
    width = 0.38
    for k, (aug, color) in enumerate([(False, "#4C72B0"), (True, "#DD8452")]):
        sub = g[g["aug"] == aug].groupby("recipe").agg(m=("test_auc_mean", "max"), s=("test_auc_std", "max"))
        means = [sub["m"].get(r, np.nan) for r in recipes]
        stds = [np.nan_to_num(sub["s"].get(r, np.nan)) for r in recipes]
        ax.bar(x + (k - 0.5) * width, means, width, yerr=stds, capsize=3, color=color, label=f"aug {'on' if aug else 'off'}")
    (lfl, lfl_auc, _), (best, best_auc, _) = paper_rows(ref, dataset)
    ax.axhline(lfl_auc, color="k", ls="--", lw=1, label=f"paper {lfl} ({lfl_auc:.3f})")
    ax.axhline(best_auc, color="g", ls=":", lw=1, label=f"paper best: {best} ({best_auc:.3f})")
    lo = np.nanmin([*(g["test_auc_mean"] - g["test_auc_std"].fillna(0)), lfl_auc]) - 0.03
    ax.set_ylim(max(0.0, lo), 1.0)
    ax.set_xticks(x, recipes)
    ax.set_ylabel("test AUC (mean ± std)")
    ax.set_title(f"{dataset}: test AUC by objective", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

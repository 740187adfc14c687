"""Markdown and PNG rendering of an aggregate. Pure functions of their inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.catalog import COLUMNS, TEST_METRICS, best_row, load_reference, paper_row
from leaderboard.format import fmt, fmt_p, signed, table

CONTROL_TEXT = {
    "ce_ft": "the budget-matched control `ce_ft` (same CE checkpoint, fine-tuning epochs, schedule and epoch-0 "
             "gating; CE loss with Adam on shuffled batches): the difference mixes the DAM recipe's sampler, optimizer "
             "and loss -- the findings' decomposition separates them where the matched controls ran",
    "ce": "`ce` (the CE model the fine-tuning recipes start from): the difference also contains the extra "
          "fine-tuning epochs and the extra validation-selected candidate",
}


def _aug(value) -> str:
    return value if isinstance(value, str) else ("on" if value else "off")


def _code(r) -> str:
    text = r["code"]
    flags = [w for w, on in (("mixed code", r["mixed_code"]), ("dirty tree", r["dirty"]),
                             ("code not recorded", r["no_code"])) if on]
    if r.get("mixed_other"):
        flags.append(r["mixed_other"])
    return text + (f" ⚠ {', '.join(flags)}" if flags and text != "not recorded" else (" ⚠" if flags else ""))


def dataset_table(agg: pd.DataFrame, ref: dict, dataset: str, size: int, protocol: str) -> str:
    g = agg[(agg["dataset"] == dataset) & (agg["size"] == size) & (agg["protocol"] == protocol)]
    if g.empty:
        return ""
    best = {m: g[f"{m}_mean"].max() for m in TEST_METRICS}
    head = ["objective", "model", "aug", "n", "val AUC", COLUMNS["test_auc"], "AUC 95% CI"] + \
           [COLUMNS[m] for m in TEST_METRICS[1:]]
    if protocol == "official":
        head += ["paper row", "Δ AUC", "Δ ACC"]
    head += ["code"]
    best_val = g["val_auc_mean"].max()
    rows = []
    for _, r in g.sort_values(["recipe", "aug", "model"]).iterrows():
        paper = paper_row(ref, dataset, r["model"], size)
        n = f"{r['n']}" if protocol == "official" else f"{r['n']} seeds × {r['folds']} folds"
        if r["incomplete"]:
            n += f" of {r['expected_n']} (incomplete)"
        if r["unverified"]:
            n += " ‡"
        light = paper is not None and not paper[3]
        cells = [r["recipe"], r["model"] + (" †" if light else ""), _aug(r["aug"]), n]
        val = fmt(r["val_auc_mean"], r["val_auc_std"], 4)  # what recipe selection may look at: 4 digits
        cells.append(f"_{val}_" if np.isclose(r["val_auc_mean"], best_val) else val)
        for m in TEST_METRICS:
            text = fmt(r[f"{m}_mean"], r[f"{m}_std"])
            cells.append(f"**{text}**" if np.isclose(r[f"{m}_mean"], best[m]) else text)
            if m == "test_auc":
                h, m_ = r["test_auc_ci95"], r["test_auc_mean"]
                cells.append(f"[{m_ - h:.3f}, {m_ + h:.3f}]" if np.isfinite(h) else "n/a (n=1)")
        if protocol == "official":
            cells += ([f"{paper[0]}{' †' if light else ''}", signed(r["test_auc_mean"] - paper[1]),
                       signed(r["test_acc_mean"] - paper[2])] if paper else ["—", "—", "—"])
        cells.append(_code(r))
        rows.append(cells)
    return table(head, rows, 4)


def paired_table(paired: pd.DataFrame, control: str, metric_label: str = "test AUC") -> str:
    p = paired[paired["control"] == control] if not paired.empty else paired
    if p.empty:
        return f"_No pairs against `{control}`._"
    head = ["dataset", "objective", "model", "aug", "protocol", "pairs", f"mean Δ {metric_label} (recipe − {control})",
            "wins/losses/ties", "Wilcoxon p", "paired t p", "note"]
    rows = []
    for _, r in p.iterrows():
        name = f"**{r['recipe']} (primary endpoint)**" if r["primary"] else r["recipe"]
        rows.append([r["dataset"], name, r["model"], _aug(r["aug"]), r["protocol"], str(r["n_pairs"]),
                     fmt(r["mean_diff"], r["std_diff"]), f"{r['wins']}/{r['losses']}/{r['ties']}",
                     fmt_p(r["wilcoxon_p"]), fmt_p(r["ttest_p"]), r["note"] or ""])
    return table(head, rows, 5).replace("|---:|---|\n", "|---:|---|\n")


def ensemble_table(ens: pd.DataFrame, dataset: str, size: int, ref: dict) -> str:
    g = ens[(ens["dataset"] == dataset) & (ens["size"] == size)]
    if g.empty:
        return ""
    head = ["objective", "model", "aug", "models (seeds)", "test AUC", "bootstrap 95% CI", "AUPRC", "ACC",
            "ACC (val thr.)", "val AUC", "Δ AUC vs paper row"]
    rows = []
    for _, r in g.iterrows():
        paper = paper_row(ref, dataset, r["model"], size)
        rows.append([r["recipe"], r["model"], _aug(r["aug"]),
                     f"{int(r['n_models'])} ({r['seeds']})" + ("" if r["data_verified"] else " ‡"),
                     f"{r['test_auc']:.3f}", f"[{r['test_auc_lo']:.3f}, {r['test_auc_hi']:.3f}]", f"{r['test_auprc']:.3f}",
                     f"{r['test_acc']:.3f}", f"{r['test_acc_tuned']:.3f}", f"{r['val_auc']:.3f}",
                     signed(r["test_auc"] - paper[1]) if paper else "—"])
    return table(head, rows, 4)


def code_line(runs: pd.DataFrame) -> str:
    codes = sorted(set(runs["code"]) - {""})
    commits = sorted(set(runs["commit"]) - {""})
    parts = [f"code digest{'s' if len(codes) != 1 else ''} " + (", ".join(f"`{c}`" for c in codes) or "not recorded")]
    if (runs["code"] == "").any() and codes:
        parts.append(f"{int((runs['code'] == '').sum())} run(s) without a digest")
    parts.append(f"commit{'s' if len(commits) != 1 else ''} " + (", ".join(f"`{c[:7]}`" for c in commits) or "unknown"))
    if runs["dirty"].any():
        parts.append(f"**{int(runs['dirty'].sum())} run(s) from a dirty tree**")
    return "; ".join(parts)


def dataset_header(ref: dict, dataset: str, size: int, models) -> str:
    best = best_row(ref, dataset)
    rows = {p[0]: p for p in (paper_row(ref, dataset, m, size) for m in models) if p}
    if not best:
        return "The paper has no row for this dataset: Δ columns show —."
    text = "; ".join(f"**{name}** {auc:.3f} / {acc:.3f}" + ("" if lfl else " (stood in for by a light variant †)")
                     for name, auc, acc, lfl in rows.values())
    text = f"Paper test AUC / ACC of our models' rows: {text}" if text else \
        f"No paper row matches these models at {size} px (Δ columns show —)"
    return f"{text}; best of the paper table **{best[0]}** {best[1]:.3f} / {best[2]:.3f}."


def header(suite: str, runs: pd.DataFrame, generated_at: str, ref: dict, shown: int | None = None) -> list[str]:
    """``shown``: how many of ``runs`` the tables show (a search: its families' selected trials)."""
    n_unverified = int((~runs["data_verified"]).sum())
    tables = (f"; the tables show {shown} of them, the runs of each search family's trial selected on validation"
              if shown is not None and shown != len(runs) else "")
    out = [
        f"# Leaderboard: suite `{suite}`",
        "",
        "<!-- generated by `bench leaderboard` from MLflow runs — do not edit by hand -->",
        f"_Generated — do not edit._ Suite **{suite}**, **{len(runs)} runs** (newest FINISHED run per cell){tables}, "
        f"generated {generated_at}.",
        "",
        f"Which code produced these runs: {code_line(runs)}. The `code` column gives each group's digest of the "
        "training code (`bench.provenance`); ⚠ flags a group that mixes digests, ran from a dirty tree or has "
        "runs older than digests.",
        "",
        "How to read this: every number is **mean ± std (ddof=1) over n units** with the t-interval 95% CI "
        "mean ± t(0.975, n−1)·std/√n. A unit is one run (seed) on the official split; under 5-fold CV the five "
        "folds of a seed share training data, so they are averaged first and a unit is a seed (n counts seeds). "
        "Selection of epoch and thresholds used validation data only; the test split was scored once per run. "
        "AUC and ACC follow `medmnist.Evaluator` (ACC at 0.5). AUPRC and F1 are for the clinically positive class "
        "(malignant, pneumonia, nodule malignancy, adrenal mass, aneurysm; Synapse, which has no disease class: the "
        "minority class; ChestMNIST: each finding). \"val thr.\" columns use a threshold chosen on validation (max "
        "val ACC, resp. max val F1). Bold: best mean of the column for the dataset. \"val AUC\" is the selected "
        "models' validation AUC, the only number a choice between recipes may use (italic: best).",
        "",
        f"Paper reference: {ref['source']}. \"paper row\" is the row of the model each group uses (like-for-like "
        "when the model is the paper's architecture at the paper's input size); Δ compares with it on the official "
        "split; the paper reports AUC and ACC only. † marks a light variant that only stands in for that "
        "architecture: its Δ is **not** like-for-like. ‡ marks groups with unverified data (MD5 differs from the "
        "official file).",
    ]
    if n_unverified:
        out += ["", f"**Warning:** {n_unverified} run(s) used data whose MD5 differs from the official file."]
    return out


def markdown(suite: str, runs: pd.DataFrame, agg: pd.DataFrame, paired: pd.DataFrame, generated_at: str,
             charts: dict | None = None, ensembles: pd.DataFrame | None = None, shift: dict | None = None,
             extra: list[str] | None = None, secondary: list[pd.DataFrame] | None = None,
             all_runs: pd.DataFrame | None = None) -> str:
    """``shift``: {'tables': {dataset: md}, 'paired': DataFrame, 'charts': {dataset: png}} (optional).
    ``extra``: generated sections placed after the header (findings, search record).
    ``all_runs``: every run of a search suite, when ``runs`` holds only its families' selected trials."""
    ref = load_reference()
    out = header(suite, runs if all_runs is None else all_runs, generated_at, ref,
                 None if all_runs is None else len(runs)) + (extra or [])
    for (dataset, size), g in runs.groupby(["dataset", "size"], sort=True):
        title = dataset if size == 28 else f"{dataset} ({size} px)"
        out += ["", f"## {title}", "", dataset_header(ref, dataset, size, sorted(g["model"].unique()))]
        if dataset == "chestmnist":
            out += ["", "ChestMNIST ACC is dominated by the all-negative rate (≈ 0.947 of labels are 0): "
                        "an ACC near 0.947 says nothing about the model."]
        official = dataset_table(agg, ref, dataset, size, "official")
        if official:
            out += ["", "### Official split", "", official]
        ens = ensemble_table(ensembles, dataset, size, ref) if ensembles is not None else ""
        if ens:
            out += ["", "### Seed ensembles (official split)", "",
                    "Each row is **one model**: the average of the listed seeds' selected models (the single-model "
                    "rows above), thresholds tuned on the averaged validation scores. Not comparable with the "
                    "single-model rows, and not with the paper's single models; its spread is a bootstrap 95% "
                    "interval over test images (2,000 resamples), not over training runs.", "", ens]
        cv = dataset_table(agg, ref, dataset, size, "cv5")
        if cv:
            out += ["", "### 5-fold CV on train ∪ val (official test split; no paper counterpart)", "",
                    "n counts seeds: each seed's 5 folds are averaged first (they share training data).", "", cv]
        if shift and dataset in shift.get("tables", {}):
            out += ["", "### Under shift (corrupted test sets)", "", shift["tables"][dataset]]
            if dataset in shift.get("charts", {}):
                out += ["", f"![AUC vs severity, {dataset}]({shift['charts'][dataset]})"]
        if charts and dataset in charts:
            out += ["", f"![test AUC, {dataset}]({charts[dataset]})"]
    controls = list(dict.fromkeys(paired["control"])) if not paired.empty else []
    out += ["", "## Paired comparisons", "",
            "Pairs share dataset, size, model, aug, protocol and seed (cv5: the seed's fold mean). Test: two-sided "
            "Wilcoxon signed-rank (exact); the paired t-test is shown for reference. With fewer than 6 pairs the "
            "Wilcoxon test cannot reach p < 0.05, so such rows are descriptive only. Pooled rows take pairs of "
            "several datasets; \"each dataset's DAM recipe\" pools one DAM recipe per dataset, so its pairs are "
            "independent."]
    if not controls:
        out += ["", "_No pairs: the suite has no control recipe (`ce` or `ce_ft`) matching the other cells._"]
    for control in controls:
        out += ["", f"### Against `{control}`", "", f"Compared with {CONTROL_TEXT.get(control, f'`{control}`')}.", "",
                paired_table(paired, control)]
    for sec in secondary or []:
        if sec.empty:
            continue
        label = COLUMNS.get(sec["metric"].iloc[0], sec["metric"].iloc[0])
        out += ["", f"## Paired comparisons on {label} (secondary endpoint)"]
        for control in dict.fromkeys(sec["control"]):
            out += ["", f"### Against `{control}`", "", paired_table(sec, control, label)]
    if shift and shift.get("paired") is not None and not shift["paired"].empty:
        out += ["", "## Paired comparisons under shift (corrupted AUC, mean over corruptions and severities)"]
        for control in dict.fromkeys(shift["paired"]["control"]):
            out += ["", f"### Against `{control}`", "", paired_table(shift["paired"], control, "corrupted AUC")]
    out.append("")
    return "\n".join(out)


def chart_data(agg: pd.DataFrame, dataset: str) -> tuple[list[str], dict]:
    """(recipes on the x axis, {aug: (means, stds)}) that :func:`chart` draws (official split if any)."""
    g = agg[(agg["dataset"] == dataset) & (agg["protocol"] == "official")]
    if g.empty:
        g = agg[agg["dataset"] == dataset]
    recipes = sorted(g["recipe"].unique())
    bars = {}
    for aug in sorted(g["aug"].unique(), key=str):
        sub = g[g["aug"] == aug].groupby("recipe").agg(m=("test_auc_mean", "max"), s=("test_auc_std", "max"))
        bars[aug] = ([sub["m"].get(r, np.nan) for r in recipes], [np.nan_to_num(sub["s"].get(r, np.nan)) for r in recipes])
    return recipes, bars


def chart(agg: pd.DataFrame, dataset: str, ref: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes, bars = chart_data(agg, dataset)
    x = np.arange(len(recipes))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(recipes) + 4), 3.6))
    width = 0.8 / max(1, len(bars))
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    for k, (aug, (means, stds)) in enumerate(bars.items()):
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, means, width, yerr=stds, capsize=3, color=colors[k % 4],
               label=f"aug {_aug(aug)}")
    best = best_row(ref, dataset)
    lows = [m - s for means, stds in bars.values() for m, s in zip(means, stds) if np.isfinite(m)]
    if best:
        ax.axhline(best[1], color="g", ls=":", lw=1, label=f"paper best: {best[0]} ({best[1]:.3f})")
        lows.append(best[1])
    for model in sorted(agg[agg["dataset"] == dataset]["model"].unique()):
        p = paper_row(ref, dataset, model, int(agg[agg["dataset"] == dataset]["size"].iloc[0]))
        if p:
            ax.axhline(p[1], color="k", ls="--", lw=1, label=f"paper {p[0]} ({p[1]:.3f})")
            lows.append(p[1])
    ax.set_ylim(max(0.0, min(lows, default=0.5) - 0.03), 1.0)
    ax.set_xticks(x, recipes)
    ax.set_ylabel("test AUC (mean ± std)")
    ax.set_title(f"{dataset}: test AUC by objective", fontsize=10)
    save_chart(fig, ax, path)


def save_chart(fig, ax, path) -> None:
    """Every leaderboard chart ends alike: legend outside the axes, fixed DPI (byte-stable PNGs)."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""The findings table, generated from the runs (never typed), and README's copy of it.

A suite with an ``analysis:`` block gets a "Findings" section: per dataset the controls, its
DAM recipe, the paired differences against each control, and the best single recipe against
the paper's like-for-like row and the best row of the paper table; then the primary endpoint,
stated with its n, spread and p. ``leaderboard/<suite>-findings.md`` holds the same text, and
``bench leaderboard --readme`` copies it into README.md between generated markers.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from leaderboard.aggregate import PRIMARY_PROTOCOL
from leaderboard.format import fmt, fmt_p, signed, table
from leaderboard.render import best_row, paper_row

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- BEGIN GENERATED: {name} (bench leaderboard --suite {suite} --readme) -->"
END = "<!-- END GENERATED: {name} -->"


def _pair(paired: pd.DataFrame, control: str, dataset: str, recipe: str) -> str:
    p = paired[(paired["control"] == control) & (paired["dataset"] == dataset) & (paired["recipe"] == recipe)]
    if p.empty:
        return "—"
    r = p.iloc[0]
    return f"{fmt(r['mean_diff'], r['std_diff'])}, {r['wins']}/{r['losses']}/{r['ties']}, p = {fmt_p(r['wilcoxon_p'])}"


def _verdict(auc: float, lfl, best) -> str:
    if lfl is None or best is None:
        return "no paper row"
    parts = [("beats" if auc > lfl[1] else "misses") + f" {lfl[1]:.3f}" + ("" if lfl[3] else " (†, not like-for-like)")]
    parts.append(("reaches" if auc >= best[1] else "misses") + f" the {best[1]:.3f} aim")
    return "; ".join(parts)


def findings(suite: str, runs: pd.DataFrame, agg: pd.DataFrame, paired: pd.DataFrame, ref: dict, analysis: dict,
             ensembles: pd.DataFrame | None = None) -> str:
    controls = [c for c in (analysis.get("controls") or ["ce_ft", "ce"]) if c in set(runs["recipe"])]
    # Findings are official-split numbers: a dataset also run under cv5 has second rows, kept out here.
    off = agg[agg["protocol"] == PRIMARY_PROTOCOL]
    paired = paired[paired["protocol"] == PRIMARY_PROTOCOL] if not paired.empty else paired
    if off.empty or not controls:
        return ""
    head = ["dataset", "n seeds"] + [f"`{c}` test AUC" for c in controls] + \
           ["DAM recipe: test AUC"] + [f"Δ DAM − {c} (w/l/t, Wilcoxon p)" for c in controls] + \
           ["top recipe on validation: test AUC", "vs paper (like-for-like / best)"]
    rows = []
    for (dataset, size), g in off.groupby(["dataset", "size"], sort=True):
        by = {r["recipe"]: r for _, r in g.iterrows()}
        dam = sorted(r for r in by if by[r]["objective"] != "ce")
        # the arm validation ranks first (never the test split: that would be a test-set choice)
        top = g.sort_values("val_auc_mean", ascending=False).iloc[0]
        lfl = paper_row(ref, dataset, top["model"], size)
        cells = [dataset if size == 28 else f"{dataset} ({size} px)", str(int(g["n"].max()))]
        cells += [fmt(by[c]["test_auc_mean"], by[c]["test_auc_std"]) if c in by else "—" for c in controls]
        cells.append("; ".join(f"{r} {fmt(by[r]['test_auc_mean'], by[r]['test_auc_std'])}" for r in dam) or "—")
        cells += ["; ".join(_pair(paired, c, dataset, r) for r in dam) or "—" for c in controls]
        cells += [f"{top['recipe']} ({top['model']}{' †' if lfl and not lfl[3] else ''}) "
                  f"{fmt(top['test_auc_mean'], top['test_auc_std'])}",
                  _verdict(top["test_auc_mean"], lfl, best_row(ref, dataset))]
        rows.append(cells)
    out = [f"## Findings (generated from the runs of `{suite}`)", "",
           "Official split, test AUC, mean ± std (ddof=1) over n seeds; Δ are paired per seed. Every choice was "
           "made on validation data; each run scored its test split once.", "", table(head, rows, 2)]
    primary = paired[paired["primary"]] if not paired.empty else paired
    pooled = paired[(paired["recipe"] == "each dataset's DAM recipe") & ~paired["primary"]] if not paired.empty else paired
    if not pooled.empty:
        out += ["", "Pooled over the datasets (each dataset's DAM recipe; not a declared endpoint): " + "; ".join(
            f"Δ DAM − `{r['control']}` {fmt(r['mean_diff'], r['std_diff'])} over {r['n_pairs']} pairs "
            f"({r['wins']}/{r['losses']}/{r['ties']}), exact Wilcoxon p = {fmt_p(r['wilcoxon_p'])}"
            for _, r in pooled.iterrows()) + "."]
    if not primary.empty:
        r = primary.iloc[0]
        sig = "significant" if np.isfinite(r["wilcoxon_p"]) and r["wilcoxon_p"] < 0.05 else "not significant"
        out += ["", f"**Primary endpoint** (declared in `suites/{suite}.yaml` before it ran): paired Δ test AUC of "
                    f"each dataset's DAM fine-tuning recipe − `{r['control']}`, pooled over the datasets: "
                    f"**{fmt(r['mean_diff'], r['std_diff'])}** over {r['n_pairs']} pairs "
                    f"({r['wins']} wins / {r['losses']} losses / {r['ties']} ties), exact two-sided Wilcoxon "
                    f"p = {fmt_p(r['wilcoxon_p'])} ({sig} at 0.05), paired t p = {fmt_p(r['ttest_p'])}."]
    if ensembles is not None and not ensembles.empty:
        e = ensembles[ensembles["recipe"].isin(set(runs["recipe"]))]
        lines = [f"{x.dataset} {x.recipe} {x.test_auc:.3f} [{x.test_auc_lo:.3f}, {x.test_auc_hi:.3f}]"
                 for x in e.itertuples()]
        if lines:
            out += ["", "Seed ensembles (one model each; bootstrap 95% CI over test images): " + "; ".join(lines) + "."]
    return "\n".join(out)


# Generated files README may carry a copy of: a suite's findings and a search's selection record.
GENERATED_SUFFIXES = ("-findings.md", "-selection.md")


def _suite_of(generated: Path) -> str:
    return next(generated.name[: -len(s)] for s in GENERATED_SUFFIXES if generated.name.endswith(s))


def update_readme(findings_file: Path, readme: Path = README) -> Path:
    """Replace README's generated block for ``findings_file`` (``<suite>-findings.md`` or
    ``<suite>-selection.md``) with the file's content."""
    suite = _suite_of(findings_file)
    name = f"leaderboard/{findings_file.name}"
    begin, end = BEGIN.format(name=name, suite=suite), END.format(name=name)
    text, body = readme.read_text(), findings_file.read_text().rstrip("\n")
    block = f"{begin}\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        from bench.errors import ConfigError

        raise ConfigError(f"{readme}: no generated block for {name}; add the two marker lines\n{begin}\n{end}")
    readme.write_text(pattern.sub(lambda _: block, text))
    return readme


def readme_block(findings_file: Path, readme: Path = README) -> str | None:
    """The README's current copy of ``findings_file`` (None when the README has no block for it)."""
    suite = _suite_of(findings_file)
    name = f"leaderboard/{findings_file.name}"
    m = re.search(re.escape(BEGIN.format(name=name, suite=suite)) + r"\n(.*?)\n?" + re.escape(END.format(name=name)),
                  readme.read_text(), re.S)
    return m.group(1) if m else None

"""The findings table, generated from the runs (never typed), and README's copy of it.

A suite whose ``analysis:`` names controls gets a "Findings" section, computed per group of
comparable arms (dataset, size, model, aug): each arm with its gated share and its paper verdict
from the 95% CI; every DAM recipe against every control, gated and ungated, with bootstrap CIs
and the effective n; the decomposition into sampler, optimizer and loss effects; the primary
endpoint with both CIs and the power stated before the runs, and its declared secondaries pooled
the same way; and whether each fine-tune was paired with the very run it started from. There is
no "top recipe" pick: with the gate, a fine-tune's validation AUC is never below its source's, so
such a pick is biased toward fine-tunes. ``leaderboard/<suite>-findings.md`` holds the same text,
and ``bench leaderboard --readme`` copies it into README.md between generated markers.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench import catalog
from bench.analysis import DAM, Analysis
from bench.catalog import paper_row
from leaderboard.aggregate import (
    FINDING_KEYS,
    PRIMARY_PROTOCOL,
    hierarchical_ci,
    pair_diffs,
    paired_row,
    units,
)
from leaderboard.endpoint import arms as endpoint_arms
from leaderboard.endpoint import describe, endpoint_metric, primary_pairs, unit_column
from leaderboard.format import fmt, fmt_p, table

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- BEGIN GENERATED: {name} (bench leaderboard --suite {suite} --readme) -->"
END = "<!-- END GENERATED: {name} -->"


def _role(a: Analysis, recipe: str) -> str:
    fam = a.family_of().get(recipe)
    if fam == DAM:
        return "DAM"
    steps = {r: step for d in a.decompose.values() for step, r in d.chain()}
    if recipe in steps:
        return "Adam control" if steps[recipe] == "adam" else f"{steps[recipe]}-matched control"
    if recipe in a.controls:
        return "control"
    return fam or "—"


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else "n/a"


def _delta(d: np.ndarray) -> str:
    """Mean ± SD [bootstrap CI], w/l/t, effective n, exact Wilcoxon p of paired differences."""
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return "not recorded"
    r = paired_row({}, d)
    return (f"{fmt(r['mean_diff'], r['std_diff'])} {_ci(r['ci_lo'], r['ci_hi'])}, {r['wins']}/{r['losses']}/{r['ties']}, "
            f"eff. n {r['eff_n']}, p = {fmt_p(r['wilcoxon_p'])}")


def _paper(ref: dict, r, size: int) -> str:
    """The paper verdict from the 95% CI of the group's test AUC, with its † / ‡ marks."""
    lfl = paper_row(ref, r["dataset"], r["model"], size)
    if lfl is None:
        return "no paper row"
    mean, h = r["test_auc_mean"], r["test_auc_ci95"]
    marks = ("" if lfl[3] else " †") + (" ‡" if r["unverified"] else "")
    if not np.isfinite(h):
        return f"{lfl[0]} {lfl[1]:.3f}: n/a (n = 1){marks}"
    lo, hi = mean - h, mean + h
    verdict = "above" if lo > lfl[1] else "below" if hi < lfl[1] else "CI includes"
    return f"{verdict} {lfl[1]:.3f} ({lfl[0]}), 95% CI [{lo:.3f}, {hi:.3f}]{marks}"


def _gate(r) -> str:
    g = r.get("gated_share", float("nan"))
    return "—" if not np.isfinite(g) else f"{round(g * r['n_runs'])}/{r['n_runs']}"


def findings(suite: str, runs: pd.DataFrame, agg: pd.DataFrame, a: Analysis, ref: dict,
             ensembles: pd.DataFrame | None = None, scores: dict | None = None, labels: dict | None = None,
             sources: pd.DataFrame | None = None, power=None) -> str:
    """The findings section: per group of comparable arms (dataset, size, model, aug), never across.

    ``scores``/``labels``: test scores per run id and test labels per dataset, for the hierarchical
    bootstrap of the primary endpoint (absent for runs exported without them).
    """
    protocol = a.primary.protocol if a.primary else PRIMARY_PROTOCOL
    off = agg[agg["protocol"] == protocol]
    u = units(runs)
    u = u[u["protocol"] == protocol]
    controls = [c for c in a.controls if c in set(runs["recipe"])]
    if off.empty or not controls:
        return ""
    out = [f"## Findings (generated from the runs of `{suite}`)", "",
           f"{protocol.capitalize()} split. Rows are groups of comparable arms -- the same dataset, image size, model "
           "and augmentation -- and every number is computed within one group: mean ± std (ddof=1) over the group's "
           "n seeds, 95% t-interval of the test AUC, paired Δ per seed with a bootstrap 95% CI over seeds, "
           "wins/losses/ties, the effective n (pairs that are not exact ties: what the Wilcoxon test uses) and the "
           "exact Wilcoxon p. Every choice was made on validation data. A fine-tune scores its source checkpoint as "
           "epoch 0, so validation may keep it (*gated*: the selected model); its *ungated* candidate is the best "
           "fine-tuned epoch ≥ 1 on validation. Each candidate was scored on test once. † light model (not "
           "like-for-like with the paper row), ‡ unverified data (MD5 differs from the official file)."]

    rows = []
    for _, r in off.sort_values(FINDING_KEYS + ["recipe"]).iterrows():
        size = int(r["size"])
        light = (paper_row(ref, r["dataset"], r["model"], size) or (0, 0, 0, True))[3] is False
        rows.append([r["dataset"] if size == 28 else f"{r['dataset']} ({size} px)", r["model"] + (" †" if light else ""),
                     str(r["aug"]), f"`{r['recipe']}`", _role(a, r["recipe"]),
                     f"{r['n']}" + (" ‡" if r["unverified"] else ""),
                     fmt(r["test_auc_mean"], r["test_auc_std"]), _gate(r), _paper(ref, r, size)])
    out += ["", "### Arms", "", table(["dataset", "model", "aug", "recipe", "role", "n", "test AUC", "gated (epoch 0 kept)",
                                         "vs paper (95% CI of test AUC)"], rows, 5)]

    # paired differences, per group: every DAM recipe against every control
    rows = []
    for key, g in u.groupby(FINDING_KEYS, sort=True):
        present = set(g["recipe"])
        for dam in [r for r in a.dam if r in present]:
            for c in [c for c in controls if c in present] + [c for c in _chain(a, dam) if c in present and c not in controls]:
                gated = pair_diffs(g, dam, c, "test_auc")["d"].to_numpy(dtype=float)
                ungated = pair_diffs(g, dam, c, "ungated_test_auc")["d"].to_numpy(dtype=float)
                rows.append([key[0], key[2], str(key[3]), f"`{dam}` − `{c}`", str(len(gated)), _delta(gated),
                             _delta(ungated) if np.isfinite(ungated).all() else
                             f"not recorded for {int((~np.isfinite(ungated)).sum())} pair(s) (runs predate it)"])
    if rows:
        out += ["", "### Paired Δ test AUC, DAM − control (per group)", "",
                table(["dataset", "model", "aug", "comparison", "pairs", "gated Δ [95% CI], w/l/t, eff. n, p",
                       "ungated Δ [95% CI], w/l/t, eff. n, p"], rows, 4)]

    rows = []
    for key, g in u.groupby(FINDING_KEYS, sort=True):
        present = set(g["recipe"])
        for dam, d in a.decompose.items():
            chain = [(step, r) for step, r in d.chain() if r in present]
            if dam not in present or len(chain) < 2:
                continue
            links = chain + [("loss", dam)]
            # Reporting only: both candidates were fixed on validation during training (bench.train);
            # their test AUCs are read here, never compared to choose anything.
            for metric, selection in (("test_auc", "gated"), ("ungated_test_auc", "ungated")):
                cells = []
                for (lower_step, lower), (upper_step, upper) in zip(links, links[1:]):
                    # a link covers every ingredient between its ends (no optimizer control: optimizer + loss)
                    effect = " + ".join(STEPS[STEPS.index(lower_step) + 1: STEPS.index(upper_step) + 1])
                    diff = pair_diffs(g, upper, lower, metric)["d"].to_numpy(dtype=float)
                    cells.append(f"{effect}: `{upper}` − `{lower}` {_delta(diff)}")
                total = pair_diffs(g, dam, chain[0][1], metric)["d"].to_numpy(dtype=float)
                rows.append([key[0], key[2], str(key[3]), f"`{dam}`", selection, "<br>".join(cells), _delta(total)])
    if rows:
        out += ["", "### Decomposition of DAM − its Adam control (per group)", "",
                "Each link changes one ingredient: *sampler* = CE/Adam on the DAM recipe's DualSampler batches "
                "(same steps per epoch) − CE/Adam on shuffled batches; *optimizer* = CE with the DAM optimizer − "
                "CE/Adam on the same batches; *loss* = the DAM recipe − CE with its own optimizer and batches: "
                "what the AUC loss adds. The links add up to the total.", "",
                table(["dataset", "model", "aug", "DAM recipe", "selection", "links (Δ [95% CI], w/l/t, eff. n, p)",
                       "total DAM − first control"], rows, 5)]

    pooled = _pooled(a, u, controls)
    if pooled:
        out += ["", "Pooled over the datasets (each dataset's DAM recipe, gated; not the declared endpoint): "
                + "; ".join(pooled) + "."]
    if a.primary is not None:
        out += ["", _primary(a, u, scores, labels, power)]
        secondary = _secondary(a, u)
        if secondary:
            out += ["", secondary]
    if sources is not None and not sources.empty:
        bad = sources[sources["status"] == "mismatch"]
        unchecked = int((sources["status"] == "unchecked").sum())
        line = (f"Sources: {int((sources['status'] == 'ok').sum())} of {len(sources)} fine-tune runs recorded exactly "
                f"the source run they are paired with")
        if unchecked:
            line += f"; {unchecked} predate the `bench_init_run_id` tag (unchecked)"
        if len(bad):
            line += f"; **⚠ {len(bad)} started from another run than the one they are paired with** (allowed by " \
                    f"--allow-mismatched-sources)"
        out += ["", line + "."]
    if ensembles is not None and not ensembles.empty:
        e = ensembles[ensembles["recipe"].isin(set(runs["recipe"]))]
        lines = [f"{x.dataset} {x.recipe} {x.test_auc:.3f} [{x.test_auc_lo:.3f}, {x.test_auc_hi:.3f}]"
                 for x in e.itertuples()]
        if lines:
            out += ["", "Seed ensembles (one model each; bootstrap 95% CI over test images): " + "; ".join(lines) + "."]
    return "\n".join(out)


STEPS = ["adam", "sampler", "optimizer", "loss"]  # the ingredients a DAM fine-tune adds to ce_ft, in order


def _pooled(a: Analysis, u: pd.DataFrame, controls: list[str]) -> list[str]:
    """Each control against each dataset's DAM recipe, pooled -- only where every dataset has exactly
    one DAM recipe (else the pairs of one dataset would share seeds)."""
    dam = u[u["recipe"].isin(a.dam)]
    if dam["dataset"].nunique() < 2 or (dam.groupby("dataset")["recipe"].nunique() != 1).any():
        return []
    out = []
    for c in controls:
        d = pd.concat([pair_diffs(u, t, c, "test_auc") for t in dam["recipe"].unique()])["d"].to_numpy(dtype=float)
        if len(d):
            out.append(f"Δ DAM − `{c}` {_delta(d)} over {len(d)} pairs")
    return out


def _chain(a: Analysis, dam: str) -> list[str]:
    d = a.decompose.get(dam)
    return [r for _, r in d.chain()] if d else []


def _primary(a: Analysis, u: pd.DataFrame, scores, labels, power) -> str:
    p = a.primary
    pairs = primary_pairs(u, a)
    d = pairs["d"].to_numpy(dtype=float)
    missing = int((~np.isfinite(d)).sum())
    head = f"**Primary endpoint** (declared in the suite file): {describe(a)}"
    if missing:
        return (head + f": **not computable** -- {missing} of {len(d)} pairs lack the {endpoint_metric(a)} "
                "(the runs predate it).")
    if len(d) == 0:
        return head + ": no pairs yet."
    r = paired_row({}, d)
    sig = "significant" if np.isfinite(r["wilcoxon_p"]) and r["wilcoxon_p"] < 0.05 else "not significant"
    if scores and labels and p.metric == "test_auc":
        h = _ci(*hierarchical_ci(pairs, scores, labels))
    else:
        h = "n/a (the runs' test scores were not exported)" if p.metric == "test_auc" else "n/a (AUC only)"
    text = (head + f": **{fmt(r['mean_diff'], r['std_diff'])}** over {r['n_pairs']} pairs ({r['wins']} wins / "
            f"{r['losses']} losses / {r['ties']} ties; effective n = {r['eff_n']}), bootstrap 95% CI over seeds "
            f"{_ci(r['ci_lo'], r['ci_hi'])}, hierarchical (seeds and test images) {h}; exact two-sided Wilcoxon "
            f"p = {fmt_p(r['wilcoxon_p'])} ({sig} at 0.05), paired t p = {fmt_p(r['ttest_p'])}. "
            f"Arms: {', '.join(f'`{t}` − `{c}`' for t, c in dict.fromkeys(zip(pairs['treatment'], pairs['control'])))}.")
    if power is not None:
        text += f" Power (stated before the runs): {power.text()}."
    return text


def _secondary(a: Analysis, u: pd.DataFrame) -> str | None:
    """The primary endpoint's pooled pairs read the other declared ways: the other selection (gated /
    ungated), each other DAM recipe against its own matched control, the links of the treatment's
    decomposition, each DAM recipe against each control, and each ``secondary_metrics`` entry.
    Pooled like the primary (its protocol, every dataset); descriptive: several looks at the same
    runs, so no p here is a confirmation. Only for a primary with one treatment recipe."""
    p = a.primary
    u = u[u["protocol"] == p.protocol]
    if u.empty or p.treatment == DAM:
        # a pooled DAM treatment (study v2): its "Pooled over the datasets" line and the AUPRC
        # tables already read it the other ways, and v2's committed record stays as it was
        return None
    other = "gated" if p.selection == "ungated" else "ungated"
    column = unit_column(p.metric, p.selection)
    primary_arms = endpoint_arms(a, u["recipe"].unique())
    looks = [(f"the primary, {other}", primary_arms, unit_column(p.metric, other))]  # (label, arms, unit column)
    if p.control == "matched":
        looks += [(f"`{t}` − its matched control, {p.selection}", [(t, a.matched_control(t))], column)
                  for t in a.dam if t != p.treatment and a.matched_control(t)]
    chain = a.decompose[p.treatment].chain() if p.treatment in a.decompose else []
    looks += [(f"the {step} effect, {p.selection}", [(upper, lower)], column)
              for (_, lower), (step, upper) in zip(chain, chain[1:])]
    looks += [(f"DAM − control, {p.selection}", [(t, c)], column) for t in a.dam for c in a.controls]
    looks += [(f"the primary on test {catalog.metric(m).short}, {p.selection}", primary_arms,
               unit_column(m, p.selection)) for m in a.secondary_metrics]
    # Reporting only: each run's gated and ungated candidates were fixed on validation during training
    # (bench.train); their test numbers are read here, never compared to choose anything.
    parts = []
    for label, arms_, col in looks:
        frames = [pair_diffs(u, t, c, col) for t, c in arms_]
        d = pd.concat(frames)["d"].to_numpy(dtype=float) if frames else np.array([])
        if len(d) == 0:
            continue
        missing = int((~np.isfinite(d)).sum())
        names = ", ".join(f"`{t}` − `{c}`" for t, c in arms_)
        parts.append(f"{label} ({names}): " + (f"not recorded for {missing} of {len(d)} pairs (the runs predate it)"
                                                if missing else f"{_delta(d)} over {len(d)} pairs"))
    if not parts:
        return None
    return ("Secondary endpoints (declared in the suite file; pooled like the primary; several looks at the same "
            "runs, so each p is descriptive): " + "; ".join(parts) + ".")


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

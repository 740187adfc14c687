"""``build_leaderboard``: runs -> aggregate -> markdown, CSVs and charts for one suite."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from bench import catalog
from leaderboard import aggregate as A
from leaderboard import collect, findings, profiles, render, selection, trials
from leaderboard import shift as S

log = logging.getLogger(__name__)
DEFAULT_OUT = Path(__file__).resolve().parent


def analysis_of(declared):
    """The suite's validated ``analysis:`` (bench.analysis); without a declared suite, the
    defaults of ``suites/_base.yaml`` (who is DAM, the decompositions) and no findings."""
    from bench import analysis as AN

    if declared is None:
        from bench.suitefile import load_merged, suites_dir

        base = AN.parse(load_merged(suites_dir() / "_base.yaml").get("analysis"))
        return base.model_copy(update={"controls": []})
    return getattr(declared, "analysis", None) or AN.parse(declared.doc.get("analysis"))


def check_sources(runs, allow_mismatched: bool):
    """Refuse (or, when allowed, flag) fine-tunes paired with another CE run than the one they started from."""
    sources = A.source_check(runs)
    bad = sources[sources["status"] == "mismatch"]
    if len(bad) and not allow_mismatched:
        from bench.errors import BenchError

        pairs = "; ".join(f"{r.recipe} seed {r.seed} (run {r.run_id[:8]}) started from run {r.recorded[:8]}, "
                          f"not {r.paired_with[:8]}" for r in bad.head(3).itertuples())
        raise BenchError(f"{len(bad)} fine-tune run(s) would be paired with a source run they did not start from: "
                         f"{pairs}{' ...' if len(bad) > 3 else ''}; rerun them (`bench suite NAME` does, their ids "
                         f"changed) or pass --allow-mismatched-sources to flag them")
    if len(bad):
        log.warning("%d fine-tune run(s) paired with another source run than they started from (flagged)", len(bad))
    return sources


def build_leaderboard(suite: str, *, out_dir=None, from_csv=None, experiment=None, parent_run_id=None,
                      generated_at: str | None = None, charts: bool = True, declared=None,
                      allow_mismatched_sources: bool = False) -> Path:
    """``declared``: the loaded ``bench.config.Suite``; its cells (also those it reuses from
    other suites' experiments) define the table. Without it, the runs tagged with the suite.
    ``charts=False`` skips drawing the PNGs (the markdown still links them)."""
    out = Path(out_dir) if out_dir else DEFAULT_OUT
    out.mkdir(parents=True, exist_ok=True)
    if from_csv:
        export = collect.read_csv(from_csv)
    else:
        primary = experiment or (declared.experiment if declared else f"medauc-bench/{suite}")
        export = collect.from_mlflow(suite, primary, declared)
    if from_csv and declared is not None and "tags.bench_budget" in export.columns:
        # runs of a suite scaled to a time budget (make run on a slow CPU) are cells of the scaled suite, and
        # its power line is the scaled one's: read from MLflow, the driver and `bench leaderboard` pass the
        # scaled suite already (bench.cli._as_last_run); a runs CSV says it in its cells' bench_budget tag
        budgets = set(export["tags.bench_budget"].dropna())
        if len(budgets) == 1:
            from bench.scaling import reapply

            declared = reapply(declared, budgets.pop())
    runs = collect.tidy(export)
    if runs.empty:
        from bench.errors import BenchError

        raise BenchError(f"suite '{suite}': no runs with results to aggregate (only not-applicable cells?)")
    analysis = analysis_of(declared)
    sources = check_sources(runs, allow_mismatched_sources)
    controls = tuple(analysis.controls or A.DEFAULT_CONTROLS)
    declared_primary = analysis.primary
    primary = declared_primary.control if declared_primary else None
    protocol = declared_primary.protocol if declared_primary else A.PRIMARY_PROTOCOL
    chosen = all_runs = None
    if trials.has_trials(runs):  # a search: tables and profiles show each family's trial selected on validation
        chosen = trials.select(runs)
        runs = trials.collapse(runs, chosen)
        all_runs = collect.tidy(export)
    agg = A.aggregate(runs)
    paired = A.paired(runs, controls=controls, primary=primary, primary_protocol=protocol, dam=analysis.dam)
    scores = labels = None
    scores_csv = Path(str(from_csv)[: -len("-runs.csv")] + "-test-scores.csv") if from_csv else out / f"{suite}-test-scores.csv"
    if declared_primary is not None and not from_csv:
        try:
            collect.scores_frame(export, protocol).to_csv(scores_csv, index=False)
        except Exception as exc:  # scores only widen one interval: never fail the leaderboard for them
            log.warning("test scores not exported (%s): the hierarchical CI is n/a", str(exc).splitlines()[0])
    if declared_primary is not None and scores_csv.is_file():
        import pandas as pd

        scores, labels = collect.read_scores(pd.read_csv(scores_csv), declared_primary.selection)
    generated_at = generated_at or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ref = catalog.load_reference()

    chart_files = {d: f"{suite}-{d}.png" for d in sorted(runs["dataset"].unique())}
    shifted = S.scored(runs)
    shift = None
    if not shifted.empty:
        shift = {"tables": {d: S.shift_table(runs, d) for d in sorted(shifted["dataset"].unique())},
                 "charts": {d: f"{suite}-{d}-shift.png" for d in sorted(shifted["dataset"].unique())},
                 "paired": S.paired_shift(runs, controls)}
    if charts:
        for dataset, name in chart_files.items():
            render.chart(agg, dataset, ref, out / name)
        for dataset, name in (shift or {}).get("charts", {}).items():
            S.severity_chart(runs, dataset, out / name)

    extra = []
    if chosen is not None:
        extra += ["", "## Search: the trial selected per family (validation only)", "",
                  trials.trials_table(all_runs, export),
                  "", f"Every trial's runs: `{suite}-runs.csv`; the tables above show each family's selected trial "
                  "under the family's name."]
    record = selection.search_record(runs, analysis.select_families(), analysis.select.rule) if analysis.select else None
    if record is not None:
        extra += ["", "## Search record (selection on validation AUC, applied in code)", "", record]
        (out / f"{suite}-selection.md").write_text(record + "\n")
    profile_chart = f"{suite}-profiles.png" if analysis.profiles is not None else None
    if profile_chart:  # opt-in (analysis.profiles): committed leaderboards without it are unchanged
        taus, keys = analysis.profiles.taus, analysis.profiles.keys
        prof = agg if keys == profiles.PROBLEM_KEYS else profiles.per_run(runs)
        extra += ["", profiles.TITLE, "", profiles.profile_table(prof, taus, keys), "",
                  f"![performance profiles]({profile_chart})"]
        if charts:
            profiles.profile_chart(prof, taus, out / profile_chart, keys)
    power = None
    if analysis.power is not None and getattr(declared, "cells", None) is not None:
        from leaderboard.power import (
            power_line,  # the line the dry run printed before the runs
        )

        power = power_line(declared, declared.cells(), None)
    found = findings.findings(suite, runs, agg, analysis, ref, collect.ensembles(export), scores, labels,
                              sources, power) if analysis.has_findings() else ""
    if found:
        extra += ["", found]
        (out / f"{suite}-findings.md").write_text(found + "\n")
    # the primary endpoint is declared on test AUC: no row of a secondary metric carries its mark
    secondary = [A.paired(runs, metric=m, controls=controls, dam=analysis.dam).assign(metric=m)
                 for m in analysis.secondary_metrics]
    md = render.markdown(suite, runs, agg, paired, generated_at, chart_files, collect.ensembles(export), shift, extra,
                         secondary, all_runs=all_runs)
    md_path = out / f"{suite}.md"
    md_path.write_text(md)
    agg.to_csv(out / f"{suite}.csv", index=False, float_format="%.6f")
    paired.to_csv(out / f"{suite}-paired.csv", index=False, float_format="%.6f")
    if not from_csv:
        export.to_csv(out / f"{suite}-runs.csv", index=False)
    if parent_run_id:
        from bench.tracking import log_files

        pngs = list(chart_files.values()) + ([profile_chart] if profile_chart else [])
        files = [md_path, out / f"{suite}.csv"] + [out / f for f in pngs if (out / f).exists()]
        log_files(parent_run_id, files, "leaderboard")
    log.info("leaderboard of %s: %d runs, %d groups -> %s", suite, len(runs), len(agg), md_path)
    return md_path

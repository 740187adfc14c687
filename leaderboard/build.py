"""``build_leaderboard``: runs -> aggregate -> markdown, CSVs and charts for one suite."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from leaderboard import aggregate as A
from leaderboard import collect, findings, render, selection
from leaderboard import shift as S

log = logging.getLogger(__name__)
DEFAULT_OUT = Path(__file__).resolve().parent


def analysis_of(declared) -> dict:
    """The suite's ``analysis:`` block (controls, primary endpoint, targets, search families)."""
    return dict((declared.doc.get("analysis") or {}) if declared is not None else {})


def build_leaderboard(suite: str, *, out_dir=None, from_csv=None, experiment=None, parent_run_id=None,
                      generated_at: str | None = None, charts: bool = True, declared=None) -> Path:
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
    runs = collect.tidy(export)
    if runs.empty:
        from bench.errors import BenchError

        raise BenchError(f"suite '{suite}': no runs with results to aggregate (only not-applicable cells?)")
    analysis = analysis_of(declared)
    controls = tuple(analysis.get("controls") or A.DEFAULT_CONTROLS)
    declared_primary = analysis.get("primary") or {}
    primary = declared_primary.get("control")
    agg = A.aggregate(runs)
    paired = A.paired(runs, controls=controls, primary=primary,
                      primary_protocol=declared_primary.get("protocol", A.PRIMARY_PROTOCOL))
    generated_at = generated_at or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ref = render.load_reference()

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
    record = selection.search_record(runs, analysis.get("select")) if analysis.get("select") else None
    if record is not None:
        extra += ["", "## Search record (selection on validation AUC, applied in code)", "", record]
        (out / f"{suite}-selection.md").write_text(record + "\n")
    found = findings.findings(suite, runs, agg, paired, ref, analysis, collect.ensembles(export)) if analysis else ""
    if found:
        extra += ["", found]
        (out / f"{suite}-findings.md").write_text(found + "\n")
    # the primary endpoint is declared on test AUC: no row of a secondary metric carries its mark
    secondary = [A.paired(runs, metric=m, controls=controls).assign(metric=m)
                 for m in analysis.get("secondary_metrics") or []]
    md = render.markdown(suite, runs, agg, paired, generated_at, chart_files, collect.ensembles(export), shift, extra,
                         secondary)
    md_path = out / f"{suite}.md"
    md_path.write_text(md)
    agg.to_csv(out / f"{suite}.csv", index=False, float_format="%.6f")
    paired.to_csv(out / f"{suite}-paired.csv", index=False, float_format="%.6f")
    if not from_csv:
        export.to_csv(out / f"{suite}-runs.csv", index=False)
    if parent_run_id:
        from bench.tracking import log_files

        files = [md_path, out / f"{suite}.csv"] + [out / f for f in chart_files.values() if (out / f).exists()]
        log_files(parent_run_id, files, "leaderboard")
    log.info("leaderboard of %s: %d runs, %d groups -> %s", suite, len(runs), len(agg), md_path)
    return md_path

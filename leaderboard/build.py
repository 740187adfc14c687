"""``build_leaderboard``: runs -> aggregate -> markdown, CSVs and charts for one suite."""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from leaderboard import aggregate as A
from leaderboard import collect, render

log = logging.getLogger(__name__)
DEFAULT_OUT = Path(__file__).resolve().parent


def build_leaderboard(suite: str, *, out_dir=None, from_csv=None, experiment=None, parent_run_id=None,
                      generated_at: str | None = None, charts: bool = True, declared=None) -> Path:
    """``declared``: the loaded ``bench.config.Suite``; its cells (also those it reuses from
    other suites' experiments) define the table. Without it, the runs tagged with the suite."""
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
    agg = A.aggregate(runs)
    paired = A.paired_vs_baseline(runs)
    commits = sorted(set(runs["commit"]) - {""})
    commit = commits[-1] if len(commits) == 1 else (f"{len(commits)} commits" if commits else "")
    generated_at = generated_at or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    chart_files = {}
    if charts:
        ref = render.load_reference()
        for dataset in sorted(runs["dataset"].unique()):
            name = f"{suite}-{dataset}.png"
            render.chart(agg, dataset, ref, out / name)
            chart_files[dataset] = name
    md = render.markdown(suite, runs, agg, paired, generated_at, commit, chart_files, collect.ensembles(export))
    md_path = out / f"{suite}.md"
    md_path.write_text(md)
    agg.to_csv(out / f"{suite}.csv", index=False, float_format="%.6f")
    paired.to_csv(out / f"{suite}-paired.csv", index=False, float_format="%.6f")
    if not from_csv:
        export.to_csv(out / f"{suite}-runs.csv", index=False)
    if parent_run_id:
        from bench.tracking import log_files

        log_files(parent_run_id, [md_path, out / f"{suite}.csv", *(out / f for f in chart_files.values())], "leaderboard")
    log.info("leaderboard of %s: %d runs, %d groups -> %s", suite, len(runs), len(agg), md_path)
    return md_path

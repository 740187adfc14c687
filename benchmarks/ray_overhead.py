"""Per-cell overhead of the Ray executor against the local one, measured in one run (not a test).

    python benchmarks/ray_overhead.py                                 # smoke suite
    python benchmarks/ray_overhead.py --suite quick --only seed=0     # a slice of quick (3 cells, two-stage)
    python benchmarks/ray_overhead.py --suite quick --address 127.0.0.1:6379   # an existing loopback head
    python benchmarks/ray_overhead.py --suite quick --server              # all three into one PostgreSQL-backed
                                                                          # `mlflow server` (proxied artifacts, PostgreSQL claims)

Three runs of the same cells, each into its own temporary SQLite store (so nothing is skipped) or,
with ``--server``, each into its own experiment of one ``mlflow server`` on a temporary PostgreSQL
(started here on 127.0.0.1 with the test fixtures' code, torn down at the end):

1. ``local``: the default executor, in this process, torch on every core;
2. ``ray x1``: the Ray executor on a loopback Ray (started here unless ``--address``), one cell
   at a time with every core per cell (``resources: {cpus: <cores>}``) -- the same work as
   ``local``, so the difference is the Ray path's overhead: worker start-up (a fresh Python
   that imports torch, MLflow and bench), task submission, a tracker per worker;
3. ``ray par``: the suite's default requests (1 CPU per 2D cell), as many at once as fit.

Reported: wall time per run, the overhead per cell ``(ray x1 - local) / cells`` and the
ratio ``ray x1 / local``; the time outside the cells (wall minus the cells' own seconds, per
cell), whose difference between ``ray x1`` and ``local`` is the Ray path's overhead with the
cells' training noise taken out; Ray's start-up (``connect``) separately (shutdown is in the
wall time); the peak RSS (VmHWM) of each Ray worker process, sampled while it lives; this
process's peak RSS after ``local``. On a loaded machine the wall times move by tens of
percent between runs: say so when you quote them, and prefer the outside-the-cells numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cli import setup_logging  # noqa: E402
from bench.suitefile import suite_path, suites_dir  # noqa: E402


class WorkerRss(threading.Thread):
    """Peak RSS (VmHWM, MB) of every Ray worker process below this process, sampled every 0.3 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.wait(0.3):
            for p in me.children(recursive=True):
                try:
                    if not p.cmdline() or not p.cmdline()[0].startswith("ray::"):
                        continue
                    hwm = next(int(line.split()[1]) for line in open(f"/proc/{p.pid}/status") if line.startswith("VmHWM"))
                except (psutil.Error, OSError, StopIteration):
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0.0), hwm / 1024)


def suites_copy(name: str, cpus_per_cell: float, tmp: Path) -> Path:
    """A suites folder whose copy of ``name`` asks ``cpus_per_cell`` CPUs for every cell."""
    folder = tmp / "suites"
    shutil.copytree(suites_dir(), folder)
    path = folder / suite_path(name).name
    path.write_text(path.read_text() + f"\nresources: {{cpus: {cpus_per_cell:g}}}\n")
    return folder


def timed_suite(label: str, tmp: Path, suites: Path, executor, args, server_url: str | None = None) -> dict:
    from bench.driver import run_suite

    os.environ["MLFLOW_TRACKING_URI"] = server_url or f"sqlite:///{tmp / label.replace(' ', '_')}.db"
    os.environ["BENCH_SUITES_DIR"] = str(suites)
    t0 = time.perf_counter()
    summary = run_suite(args.suite, only=tuple(args.only), executor=executor, progress=False, leaderboard=False,
                        experiment=f"bench-overhead/{label}")
    wall = time.perf_counter() - t0
    c = summary.counts()
    if summary.failed or not c["finished"]:
        raise SystemExit(f"{label}: {[r.line() for r in summary.results]}")
    cells, cell_s = c["finished"] + c["not_applicable"], sum(r.seconds for r in summary.results)
    return {"label": label, "cells": cells, "wall_s": wall, "cell_s": cell_s, "outside_per_cell_s": (wall - cell_s) / cells,
            "test_auc": {r.cell_id: r.test_auc for r in summary.results if r.status == "finished"},
            "finished_once": _finished_once(f"bench-overhead/{label}")}


def _finished_once(experiment: str) -> bool:
    """Every cell of the experiment has exactly one FINISHED run (and none is left RUNNING)."""
    import mlflow

    df = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.bench_role = 'cell'")
    done = df[df["status"] == "FINISHED"].groupby("tags.bench_cell_id").size()
    return bool(len(done)) and bool((done == 1).all()) and not (df["status"] == "RUNNING").any()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", default=None, help="a loopback Ray head (default: start one here)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--server", action="store_true",
                        help="log into a PostgreSQL-backed `mlflow server` started here (proxied artifacts, PostgreSQL claims)")
    args = parser.parse_args()
    setup_logging(False)
    logging.getLogger("bench").setLevel(logging.WARNING)
    from bench.executors.ray_executor import RayExecutor

    cores = os.cpu_count() or 1
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        os.environ["BENCH_CACHE_DIR"] = str(tmp / "cache")
        server_url = None
        if args.server:  # the test fixtures' real services, on 127.0.0.1
            from tests.integration.services import mlflow_server, postgres

            pg = stack.enter_context(postgres())
            server_url = stack.enter_context(mlflow_server(pg.dsn, tmp / "artifacts")).url
            os.environ["BENCH_CLAIMS_URI"] = pg.dsn
            os.environ.pop("BENCH_ARTIFACT_ROOT", None)
        plain = suites_dir()
        rows = [timed_suite("local", tmp, plain, "local", args, server_url)]
        local_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        results = {}
        for label, suites, limit in (("ray x1", suites_copy(args.suite, cores, tmp), 1), ("ray par", plain, None)):
            ex = RayExecutor(address=args.address, max_concurrent=limit)
            t0 = time.perf_counter()
            ex.connect()
            connect_s = time.perf_counter() - t0
            rss = WorkerRss()
            rss.start()
            try:
                row = timed_suite(label, tmp, suites, ex, args, server_url)  # run_suite closes the executor
            finally:
                rss.stop.set()
                rss.join()
            row.update(connect_s=connect_s, worker_peak_rss_mb=max(rss.peak.values(), default=float("nan")),
                       workers=len(rss.peak))
            results[label] = row
            rows.append(row)

    local, seq = rows[0], results["ray x1"]
    n = local["cells"]
    report = {
        "suite": args.suite, "only": args.only, "cores": cores, "loadavg_at_start": load,
        "runs": rows, "local_process_peak_rss_mb": local_rss_mb,
        "overhead_per_cell_s": (seq["wall_s"] - local["wall_s"]) / n,
        "overhead_outside_cells_per_cell_s": seq["outside_per_cell_s"] - local["outside_per_cell_s"],
        "ratio_ray_x1_over_local": seq["wall_s"] / local["wall_s"],
        "ratio_ray_par_over_local": results["ray par"]["wall_s"] / local["wall_s"],
    }
    table = [[r["label"], r["cells"], f"{r['wall_s']:.1f}", f"{r['cell_s']:.1f}", f"{r['outside_per_cell_s']:.1f}",
              f"{r.get('connect_s', 0):.1f}", f"{r.get('worker_peak_rss_mb', local_rss_mb):.0f}", r.get("workers", "-")]
             for r in rows]
    print(tabulate(table, ["run", "cells", "wall s", "sum of cell s", "outside cells s/cell", "ray start s",
                           "peak RSS MB", "workers"]))
    print(f"\nsuite {args.suite} {' '.join(args.only)}: {cores} cores, load average at start {load[0]:.2f}")
    print(f"ray x1 vs local: {report['overhead_per_cell_s']:+.1f} s per cell in wall time "
          f"({report['overhead_outside_cells_per_cell_s']:+.1f} s per cell outside the cells), "
          f"ratio {report['ratio_ray_x1_over_local']:.2f}"
          f"; ray par vs local: ratio {report['ratio_ray_par_over_local']:.2f} (Ray start-up not included in wall)")
    print("peak RSS: 'local' is this whole process (driver + cells); 'ray' rows are the largest worker process")
    for r in rows[1:]:
        same = [cid for cid, auc in r["test_auc"].items() if local["test_auc"].get(cid) == auc]
        print(f"{r['label']}: test AUC identical to local for {len(same)}/{len(local['test_auc'])} cell ids; "
              f"every cell FINISHED exactly once: {r['finished_once']}")
    print(f"local: every cell FINISHED exactly once: {local['finished_once']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

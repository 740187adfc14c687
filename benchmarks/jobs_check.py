"""``--jobs 2`` against a sequential run at equal threads, on the real BreastMNIST file (not a test).

    python benchmarks/jobs_check.py [--epochs 3] [--seeds 0,1]

The same small suite (CE, then its ce_ft fine-tune, per seed) runs twice into two fresh stores:
sequentially with one torch thread (OMP_NUM_THREADS=1), then with ``--jobs 2`` (two worker
processes, one thread each: a 2D cell asks for one CPU). It prints both wall times and every
cell's validation and test AUC side by side; the numbers must be identical, as each cell is the
same computation on the same number of threads. tests/test_pool.py checks the same on synthetic data.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_epoch import cpu_line  # noqa: E402

SUITE = """include: _base.yaml
suite: jobs_check
description: --jobs 2 against sequential, real BreastMNIST
train: {{epochs: {epochs}}}
finetune: {{epochs: {ft}}}
grid: {{dataset: [breastmnist], recipe: [ce, ce_ft], aug: [false], seed: [{seeds}], protocol: [official]}}
"""


def run(store: Path, suites: Path, jobs: int | None) -> tuple[float, dict]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "BENCH_SUITES_DIR": str(suites),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    if jobs is None:
        env["OMP_NUM_THREADS"] = "1"
    cmd = [str(Path(sys.executable).parent / "bench"), "suite", "jobs_check", "--no-progress", "--no-leaderboard"]
    if jobs:
        cmd += ["--jobs", str(jobs)]
    store.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=store, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    from mlflow.tracking import MlflowClient

    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = c.get_experiment_by_name("medauc-bench/jobs_check")
    runs = c.search_runs([exp.experiment_id], "tags.bench_role = 'cell'")
    return wall, {r.info.run_name: (r.data.metrics["val_auc"], r.data.metrics["test_auc"], r.data.tags.get("bench_torch_threads"))
                  for r in runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobs-check-") as t:
        tmp = Path(t)
        suites = tmp / "suites"
        suites.mkdir()
        (suites / "_base.yaml").write_text((ROOT / "suites" / "_base.yaml").read_text())
        (suites / "jobs_check.yaml").write_text(SUITE.format(epochs=args.epochs, ft=args.finetune_epochs, seeds=args.seeds))
        seq_wall, seq = run(tmp / "seq", suites, None)
        par_wall, par = run(tmp / "par", suites, 2)
    rows = [[name, f"{seq[name][0]:.6f}", f"{par[name][0]:.6f}", f"{seq[name][1]:.6f}", f"{par[name][1]:.6f}",
             f"{seq[name][2]}/{par[name][2]}", "yes" if seq[name][:2] == par[name][:2] else "NO"] for name in sorted(seq)]
    print(f"CPU: {cpu_line()}")
    print(tabulate(rows, ["cell", "val AUC seq", "val AUC --jobs 2", "test AUC seq", "test AUC --jobs 2", "threads",
                          "identical"], tablefmt="github"))
    print(f"sequential (1 thread): {seq_wall:.0f} s wall; --jobs 2 (1 thread each): {par_wall:.0f} s wall "
          f"({seq_wall / par_wall:.2f}x)")
    sys.exit(0 if all(seq[n][:2] == par[n][:2] for n in seq) and seq.keys() == par.keys() else 1)


if __name__ == "__main__":
    main()

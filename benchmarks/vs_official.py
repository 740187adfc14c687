"""medauc-bench against the official MedMNIST 2D script: BreastMNIST CE, side by side (not a test).

    python benchmarks/vs_official.py [--epochs 5,30] [--repeats 3] [--paths fast,plain] [--out FILE.md]

Both train ResNet-18 (28) with Adam 1e-3, batch 128, LR decay at 50%/75%, select on validation
AUC and score test once, on the same ``breastmnist.npz`` on this machine:

* ``official``: ``benchmarks/official/train_and_eval_pytorch.py`` (MedMNIST/experiments,
  unchanged; it scores the train, validation *and* test splits after every epoch),
  ``--gpu_ids -1``, with a no-op tensorboardX (conservative: that only makes it faster);
* ``bench <path>``: ``bench cell --dataset breastmnist --objective ce --epochs N --path <path>``
  into a fresh SQLite store (MLflow logging, checkpoint and prediction artifacts included).

Runs alternate (official, then each path, then again) so drift in the machine's speed hits all
of them alike; each figure is the median of ``--repeats`` runs, in wall seconds of the whole
process (start-up included) and in CPU seconds (user + system of the child). The CPU model, its
flags and any emulation cap go with the table. Emulate a CPU without AVX-512 on a newer one with

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/vs_official.py

(bench.device then turns bf16 off too, as on a Zen 3).
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT / "benchmarks" / "official"
sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_epoch import cpu_line  # noqa: E402


def torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, str]:
    """(wall s, child CPU s, output) of one process; a failure stops the benchmark with its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def official(epochs: int, data_file: Path, tmp: Path) -> tuple[float, float, float]:
    home = tmp / "home"
    (home / ".medmnist").mkdir(parents=True, exist_ok=True)
    link = home / ".medmnist" / "breastmnist.npz"
    if not link.exists():
        link.symlink_to(data_file)
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": f"{OFFICIAL / 'shim'}:{OFFICIAL}"}
    out_dir = tmp / "official-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    wall, cpu, out = timed([sys.executable, str(OFFICIAL / "train_and_eval_pytorch.py"), "--data_flag", "breastmnist",
                            "--num_epochs", str(epochs), "--gpu_ids", "-1", "--output_root", str(out_dir)], env, tmp)
    test_auc = float(re.findall(r"test\s+auc: ([0-9.]+)", out)[-1])
    return wall, cpu, test_auc


def product(epochs: int, path: str, data_dir: Path, tmp: Path) -> tuple[float, float, float]:
    store = tmp / f"store-{path}"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir()
    env = {**os.environ, "BENCH_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    bench = Path(sys.executable).parent / "bench"
    wall, cpu, out = timed([str(bench), "cell", "--dataset", "breastmnist", "--objective", "ce", "--epochs", str(epochs),
                            "--path", path, "--no-progress"], env, store)
    m = re.findall(r"test AUC ([0-9.]+)", out) or re.findall(r"test_auc[ =:]+([0-9.]+)", out)
    return wall, cpu, float(m[-1]) if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", default="5,30")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="fast,plain", help="bench execution paths to time (bench/device.py)")
    ap.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR", str(ROOT.parent / "shared/data/medmnist")))
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    data_dir = Path(args.data_dir).resolve()
    data_file = data_dir / "breastmnist.npz"
    if not data_file.is_file():
        sys.exit(f"{data_file} not found; pass --data-dir or set BENCH_DATA_DIR")
    paths = [p for p in args.paths.split(",") if p]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vs-official-") as t:
        tmp = Path(t)
        for epochs in [int(e) for e in args.epochs.split(",")]:
            runs: dict[str, list] = {"official": [], **{p: [] for p in paths}}
            for rep in range(args.repeats):
                runs["official"].append(official(epochs, data_file, tmp))
                print(f"{epochs} epochs, repeat {rep + 1}: official {runs['official'][-1][0]:.0f} s", file=sys.stderr, flush=True)
                for p in paths:
                    runs[p].append(product(epochs, p, data_dir, tmp))
                    print(f"{epochs} epochs, repeat {rep + 1}: bench {p} {runs[p][-1][0]:.0f} s", file=sys.stderr, flush=True)
            ref_wall = statistics.median(r[0] for r in runs["official"])
            ref_cpu = statistics.median(r[1] for r in runs["official"])
            for name, rs in runs.items():
                wall, cpu = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
                label = "official script" if name == "official" else f"bench cell --path {name}"
                rows.append([epochs, label, f"{wall:.0f}", f"{cpu:.0f}", f"{ref_wall / wall:.2f}x", f"{ref_cpu / cpu:.2f}x",
                             " ".join(f"{r[2]:.3f}" for r in rs)])
    table = tabulate(rows, headers=["epochs", "run", "wall s (median)", "CPU s (median)", "speed-up wall",
                                    "speed-up CPU", f"test AUC of the {args.repeats} runs"], tablefmt="github")
    head = f"CPU: {cpu_line()}; torch {torch_version()}; {args.repeats} alternating runs each, medians"
    print(head)
    print(table)
    if args.out:
        Path(args.out).write_text(f"{head}\n\n{table}\n")


if __name__ == "__main__":
    main()

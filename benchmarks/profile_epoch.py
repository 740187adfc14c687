"""Profile one real BreastMNIST training epoch on an execution path (not a test).

    python benchmarks/profile_epoch.py [--path fast|plain] [--precision fp32|auto] [--epochs 2] [--top 12]

Runs ``bench.train.fit`` (CE, the paper's batch of 128, the real training split) for ``--epochs``
epochs and profiles the last one with ``torch.profiler``: the table of operators by self CPU time,
then the epoch's wall time and the training throughput. To see a CPU without AVX-512 (a Zen 3,
say) on a newer one, cap oneDNN and ATen at AVX2 -- bench.device then also turns bf16 off:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/profile_epoch.py --path plain

That is an emulation (same cores and clocks, AVX2 kernels), and every figure says which it was.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

FLAG = "breastmnist"


def cpu_line() -> str:
    """CPU model, physical cores, ISA flags and any cap on them (bench.device): printed with every figure."""
    from bench.hardware import cpu_description

    return cpu_description()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default="fast", choices=["fast", "plain"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "auto", "bf16"])
    ap.add_argument("--epochs", type=int, default=2, help="the last one is profiled; the first warms up")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR", "../shared/data/medmnist"))
    args = ap.parse_args()

    from bench import data as D
    from bench.config import base_config, expand
    from bench.suitefile import deep_merge, suites_dir
    from bench.train import fit

    over = {"grid": {"dataset": [FLAG], "recipe": ["ce"], "aug": [False], "seed": [0], "protocol": ["official"]},
            "train": {"epochs": args.epochs, "precision": args.precision, "path": args.path}}
    cell = expand(deep_merge(base_config(), over), suites_dir() / "_base.yaml", lambda f, size=None: "")[0]
    data = D.load(FLAG, args.data_dir, download=False)
    proto = D.make_protocol(data, "official", None)
    prof = profile(activities=[ProfilerActivity.CPU])
    epochs: list[float] = []

    def on_epoch(record):  # start profiling before the last epoch, stop after it
        if record["epoch"] >= 1:
            epochs.append(record["epoch_seconds"])
        if record["epoch"] == args.epochs - 1:
            prof.start()

    t0 = time.perf_counter()
    if args.epochs == 1:
        prof.start()
    res = fit(cell, proto, data.spec, data.sampler_label, data.positive_label, device=torch.device("cpu"),
              on_epoch=on_epoch, progress=False)
    prof.stop()
    wall = time.perf_counter() - t0
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    n = len(proto.train)
    last = epochs[-1]
    print(f"CPU: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"path {res.path}: last epoch {last:.2f} s under the profiler ({n} training images, "
          f"{n / last:.0f} img/s incl. validation); {args.epochs} epochs in {wall:.1f} s; best val AUC {res.best_val_auc:.4f}")


if __name__ == "__main__":
    main()

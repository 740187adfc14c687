"""Time building every corrupted test set from an empty cache (not a test).

    python benchmarks/shift_build.py [--datasets breastmnist,pneumoniamnist,adrenalmnist3d,vesselmnist3d]
                                     [--data-dir DIR] [--cache-dir DIR]

What it measures is the one-off cost the first shift-scored run of a dataset pays (later
runs read the cache). Without --cache-dir the sets go to a fresh temporary folder that is
deleted afterwards. The first dataset's time includes importing its backend.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from tabulate import tabulate

from bench.corrupt import SEVERITIES, corruption_names, versions
from bench.shift import corrupted_test_set

log = logging.getLogger("benchmarks.shift_build")
DEFAULT_DATASETS = "breastmnist,pneumoniamnist,adrenalmnist3d,vesselmnist3d"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "medmnist"


def build_all(flag: str, data_dir: Path, cache_dir: Path) -> dict:
    path = data_dir / f"{flag}.npz"
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    with np.load(path) as npz:
        images = npz["test_images"]
    t0 = time.perf_counter()
    names = corruption_names(flag)
    for name in names:
        t = time.perf_counter()
        for severity in SEVERITIES:
            corrupted_test_set(flag, md5, images, name, severity, cache_dir)
        log.info("%s %s: %.2f s", flag, name, time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    n_sets = len(names) * len(SEVERITIES)
    return {"dataset": flag, "test images": len(images), "corruptions": len(names), "sets": n_sets,
            "seconds": round(seconds, 1), "ms / image / set": round(1000 * seconds / (n_sets * len(images)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DEFAULT_DATASETS)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BENCH_DATA_DIR", SHARED)))
    ap.add_argument("--cache-dir", type=Path, help="build here instead of a fresh temporary folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="shift-bench-") as tmp:
        cache = args.cache_dir or Path(tmp)
        rows = [build_all(flag, args.data_dir, cache) for flag in args.datasets.split(",")]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions().items() if v))


if __name__ == "__main__":
    main()

"""Is ``bench.train.fit`` bit for bit the same on two code trees? Short real BreastMNIST cells.

Every per-epoch number ``fit`` records (all but ``epoch_seconds``), the selection (best epoch
and AUC, the ungated candidate) and sha256 digests of the selected weights and validation scores
go to JSON; run it on each tree, then compare the two files with ``==``:

  cd <tree> && PYTHONPATH=<tree> BENCH_DATA_DIR=/work/shared/data/medmnist \\
      python /work/main/benchmarks/fit_identity.py --out /tmp/fit_<tree>.json
  python benchmarks/fit_identity.py --compare /tmp/fit_old.json /tmp/fit_new.json

``--tiny`` runs the small fp32 pair (CE, then a fine-tune whose gate keeps the checkpoint) that
tests/test_train.py checks against tests/data/fit_golden.json; ``--tiny --out`` records it.

Everything runs on the CPU, one thread. Only ``fit`` and the config helpers are imported, so
older trees (helpers in ``bench.config``, no ``bench.suitefile``) run it too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

import torch

FLAG = "breastmnist"
DATA_DIR = "/work/shared/data/medmnist"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def config_helpers():
    from bench.config import base_config, expand

    try:
        from bench.suitefile import deep_merge, suites_dir
    except ImportError:  # trees before the suite-file split
        from bench.config import deep_merge, suites_dir
    return base_config, expand, deep_merge, suites_dir


def make_cell(recipe: str, epochs: int, precision: str, aug: bool = True, batch_size: int = 128,
              params: dict | None = None, **train):
    import dataclasses

    from bench.config import TrainConfig

    base_config, expand, deep_merge, suites_dir = config_helpers()
    if "path" in {f.name for f in dataclasses.fields(TrainConfig)}:
        train.setdefault("path", "plain")  # the reference path, which the golden record was made on
    over = {
        "grid": {"dataset": [FLAG], "recipe": [recipe], "aug": [aug], "seed": [0], "protocol": ["official"]},
        "train": {"epochs": epochs, "batch_size": batch_size, "precision": precision, "deterministic": True, **train},
        "finetune": {"epochs": epochs},
        "datasets": {FLAG: {"train": {"batch_size": batch_size}}},
    }
    if params:
        over["recipes"] = {recipe: {"params": params}}
    return expand(deep_merge(base_config(), over), suites_dir() / "_base.yaml", lambda f: "")[0]


def data_file() -> str:
    return os.path.join(os.environ.get("BENCH_DATA_DIR", DATA_DIR), f"{FLAG}.npz")


def load(n_train: int | None = None):
    import dataclasses

    from bench import data as D

    data = D.load(FLAG, os.path.dirname(data_file()), download=False)
    proto = D.make_protocol(data, "official", None)
    if n_train:  # the first n training images: small enough for a unit test, still real data
        proto = dataclasses.replace(proto, train=D.Split(proto.train.x[:n_train], proto.train.y[:n_train]))
    return data, proto


def digest(obj) -> str:
    h = hashlib.sha256()
    if isinstance(obj, dict):
        for k, v in obj.items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    else:
        h.update(obj.tobytes())
    return h.hexdigest()


def summary(res) -> dict:
    out = {
        "history": [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in res.history],
        "best_epoch": res.best_epoch,
        "best_val_auc": res.best_val_auc,
        "optimizer_steps": res.optimizer_steps,
        "train_samples": res.train_samples,
        "bf16": res.bf16,
        "model_sha256": digest(res.model.state_dict()),
        "val_scores_sha256": digest(res.val_scores),
        "ungated": None,
    }
    if res.ungated is not None:
        u = res.ungated
        out["ungated"] = {"epoch": u.epoch, "val_auc": u.val_auc, "model_sha256": digest(u.model.state_dict()),
                          "val_scores_sha256": digest(u.val_scores)}
    return out


def run_cells(specs, data, proto) -> dict:
    """``specs``: name -> (cell, name of the cell whose selected weights start it, or None)."""
    from bench.train import fit

    out, models = {}, {}
    for name, (cell, source) in specs.items():
        t0 = time.perf_counter()
        init = models[source].state_dict() if source else None
        # on the CPU even where a GPU is: the numbers recorded here are CPU numbers
        res = fit(cell, proto, data.spec, data.sampler_label, data.positive_label, device=torch.device("cpu"),
                  init_state=init, progress=False)
        models[name] = res.model
        out[name] = summary(res)
        print(f"{name}: best epoch {res.best_epoch}, val AUC {res.best_val_auc:.6f}, "
              f"ungated {None if res.ungated is None else res.ungated.epoch} ({time.perf_counter() - t0:.0f}s)",
              file=sys.stderr, flush=True)
    return out


def full_specs(precision: str) -> dict:
    ce = make_cell("ce", 2, precision)
    return {
        "ce": (ce, None),
        "aucm_ft": (make_cell("aucm_ft", 2, precision), "ce"),
        # a small lr that moves BatchNorm statistics more than weights: validation may keep epoch 0 (the gate)
        "aucm_ft_gate": (make_cell("aucm_ft", 2, precision, params={"lr": 1e-3}), "ce"),
        "swa": (make_cell("ce", 3, precision, swa=0.5), None),
        "ema": (make_cell("ce", 2, precision, ema=0.9), None),
    }


TINY_TRAIN = 64


def tiny_specs() -> dict:
    return {
        "ce": (make_cell("ce", 2, "fp32", batch_size=32), None),
        # lr 1e-3 lowers validation AUC here: the gate keeps epoch 0 and the ungated candidate is returned
        "aucm_ft_gate": (make_cell("aucm_ft", 2, "fp32", batch_size=32, params={"lr": 1e-3}), "ce"),
    }


def cpu_flags() -> dict:
    """The ISA features that change float rounding (oneDNN picks its kernels by them).

    Read here rather than from bench.hardware: this script runs on older trees that lack it.
    """
    try:
        words = set(open("/proc/cpuinfo").read().split())
    except OSError:
        words = set()
    return {f: f in words for f in CPU_FLAGS}


def machine() -> dict:
    out = {"cpu_flags": cpu_flags(), "torch": torch.__version__, "machine": platform.machine()}
    # oneDNN/ATen capped below the CPU's ISA (an AVX2 emulation) round like another CPU
    cap = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)}
    if cap:
        out["isa_cap"] = cap
    return out


def run_tiny() -> dict:
    torch.set_num_threads(1)
    data, proto = load(TINY_TRAIN)
    return {"machine": machine(), "n_train": TINY_TRAIN, "cells": run_cells(tiny_specs(), data, proto)}


def run_full() -> dict:
    torch.set_num_threads(1)
    data, proto = load()
    return {"machine": machine(), "runs": {p: run_cells(full_specs(p), data, proto) for p in ("fp32", "auto")}}


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def diff(a, b, path="") -> list[str]:
    """Every leaf where ``a`` and ``b`` differ (NaN equals NaN: epoch 0 has no training loss)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in {'first' if k in a else 'second'}" for k in sorted(set(a) ^ set(b))]
        for k in a:
            if k in b:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if same(a, b) else [f"{path}: {a!r} != {b!r}"]


def compare(old: str, new: str) -> int:
    a, b = json.load(open(old)), json.load(open(new))
    runs_a, runs_b = a.get("runs", {"tiny": a.get("cells")}), b.get("runs", {"tiny": b.get("cells")})
    bad = 0
    for prec in runs_a:
        d = diff(runs_a[prec], runs_b.get(prec, {}), prec)
        cells = runs_a[prec]
        n = sum(len(c["history"]) for c in cells.values())
        print(f"{prec}: {len(cells)} cells, {n} epoch records: {'IDENTICAL' if not d else f'{len(d)} differences'}")
        for name, c in cells.items():
            u = c["ungated"]
            print(f"  {name:13s} best epoch {c['best_epoch']} val AUC {c['best_val_auc']!r} steps {c['optimizer_steps']} "
                  f"ungated {None if u is None else (u['epoch'], u['val_auc'])} bf16 {c['bf16']}")
        for line in d:
            print("   ", line)
        bad += len(d)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the JSON here (default: stdout)")
    ap.add_argument("--tiny", action="store_true", help="the unit test's small fp32 pair (tests/data/fit_golden.json)")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two outputs; exit 1 on any difference")
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    result = run_tiny() if args.tiny else run_full()
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``bench doctor``: is this machine ready to run suites? One table, one verdict."""
from __future__ import annotations

import os
import tempfile

import torch
from tabulate import tabulate

from bench import data as D
from bench import datafiles as F


def _data_rows(root) -> list[list[str]]:
    folder = F.data_dir(root)
    rows = []
    for flag in D.names():
        spec = D.get_spec(flag)
        path = folder / spec.file_name
        if not path.is_file():
            rows.append([f"data {flag}", "missing", f"not in {folder}; medmnist downloads it where a network exists"])
            continue
        md5 = F.file_md5(path)
        if md5 == spec.md5:
            rows.append([f"data {flag}", "ok", f"official MD5 {md5[:8]}…"])
        else:
            rows.append([f"data {flag}", "UNVERIFIED",
                         f"MD5 {md5[:8]}… ≠ official {spec.md5[:8]}…; runs need --allow-unverified-data"])
    return rows


def _tracking_row() -> list[str]:
    from bench.errors import TrackingError
    from bench.tracking import check_reachable, tracking_uri

    uri = tracking_uri()
    try:
        check_reachable(uri)
    except TrackingError as exc:
        return ["tracking store", "FAIL", str(exc)]
    return ["tracking store", "ok", f"{uri} reachable"]


def _artifact_row() -> list[str]:
    from bench.tracking import artifact_root, tracking_uri

    root = artifact_root(tracking_uri())
    if not root:
        return ["artifact store", "ok", "decided by the tracking server"]
    try:
        os.makedirs(root, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as exc:
        return ["artifact store", "FAIL", f"{root} not writable ({exc.strerror})"]
    return ["artifact store", "ok", f"{root} writable"]


def _hardware_row() -> list[str]:
    from bench.device import cpu_has_bf16, resolve_path, select_device
    from bench.hardware import cpu_description

    dev = select_device()
    if dev.type == "cuda":
        what = f"CUDA {torch.cuda.get_device_name(0)}"
    else:
        what = f"CPU {cpu_description()}, {torch.get_num_threads()} threads, bf16: {'yes' if cpu_has_bf16() else 'no'}"
    path = f"2D {resolve_path('auto', 'fast', dev, 2).label}; 3D {resolve_path('auto', 'fast', dev, 3).label}"
    return ["hardware", "ok", f"{what} -> {path} (torch {torch.__version__})"]


EXTRAS = {  # extra -> (module to look for, what it enables)
    "ray": ("ray", "bench suite --executor ray"),
    "postgres": ("psycopg2", "postgresql:// stores and BENCH_CLAIMS_URI claims"),
    "shift": ("torchio", "3D corruptions (bench shift); 2D also needs medmnistc"),
}


def _extra_rows() -> list[list[str]]:
    """Optional extras: missing ones are fine (their features say so in one line when used)."""
    import importlib.util

    rows = []
    for extra, (module, enables) in EXTRAS.items():
        present = importlib.util.find_spec(module) is not None
        rows.append([f"extra {extra}", "ok" if present else "not installed",
                     enables if present else f"{enables}: pip install -e '.[{extra}]'"])
    return rows


def run_doctor(root=None) -> tuple[str, bool]:
    rows = _data_rows(root) + [_tracking_row(), _artifact_row(), _hardware_row()] + _extra_rows()
    ok = all(r[1] != "FAIL" for r in rows) and any(r[1] in ("ok", "UNVERIFIED") for r in rows[: len(D.names())])
    text = tabulate(rows, ["check", "status", "detail"], tablefmt="simple")
    verdict = "ready" if ok else "NOT ready: fix the FAIL rows (or provide at least one data file)"
    return f"{text}\n\n{verdict}", ok

"""Seed ensembles: one model made of the selected checkpoints of a group's seeds.

An ensemble averages P(label 1) over the member runs of one group (same dataset, recipe,
model, aug; official split; only the training seed differs). Every member was selected on
validation and scored once on test by its own run; the ensemble reuses those saved
prediction files, tunes its thresholds on the averaged *validation* scores, and is logged as
its own MLflow run (``bench_role = ensemble``), never mixed with single-model rows. A seed
ensemble is one model, so its spread is a bootstrap 95% interval over test samples.
"""
from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from bench import data as D
from bench.config import Cell, digest
from bench.evaluate import bootstrap_auc_ci, score_val_test

log = logging.getLogger(__name__)
MIN_MEMBERS = 2


def groups(cells: list[Cell]) -> dict[str, list[Cell]]:
    """group id -> the official-split cells of that group (one per seed)."""
    out: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        if c.protocol == "official":
            out[c.group_id].append(c)
    return dict(out)


def ensemble_id(member_run_ids: list[str]) -> str:
    return digest(sorted(member_run_ids))


def _predictions(tracker, run_id: str, dataset: str, split: str, tmp: Path) -> np.ndarray:
    prefix = f"{dataset}_{split}_"
    names = [n for n in tracker.artifact_names(run_id) if Path(n).name.startswith(prefix)]
    if len(names) != 1:
        raise FileNotFoundError(f"run {run_id} has {len(names)} '{prefix}*' prediction files")
    path = tracker.download_artifact(run_id, names[0], tmp / run_id)
    return pd.read_csv(path, header=None, index_col=0).to_numpy(dtype=float)


def build_one(tracker, suite: str, parent_id, members: list[Cell], runs: list, data_root=None,
              allow_unverified=None) -> dict | None:
    """Log the ensemble of ``members`` (their FINISHED ``runs``) unless it exists; its metrics."""
    run_ids = [r.info.run_id for r in runs]
    eid = ensemble_id(run_ids)
    if tracker.finished_ensemble(eid) is not None:
        return None
    first = members[0]
    data = D.load(first.dataset, data_root, allow_unverified=allow_unverified)
    proto = D.make_protocol(data, "official", None, first.train.split_seed)
    pos = data.positive_label
    y_val, y_test = proto.val.y.numpy().astype(int), proto.test.y.numpy().astype(int)
    with tempfile.TemporaryDirectory(prefix="bench-ens-") as tmp:
        val = np.mean([_predictions(tracker, r, first.dataset, "val", Path(tmp)) for r in run_ids], axis=0)
        test = np.mean([_predictions(tracker, r, first.dataset, "test", Path(tmp)) for r in run_ids], axis=0)
    val_m, test_m, _ = score_val_test(y_val, val, y_test, test, pos)  # thresholds from validation, as for single models
    metrics = {f"val_{k}": v for k, v in val_m.items()}
    metrics.update({f"test_{k}": v for k, v in test_m.items()})
    metrics["test_auc_lo"], metrics["test_auc_hi"] = bootstrap_auc_ci(y_test, test)
    metrics["n_models"] = len(run_ids)
    seeds = sorted(c.seed for c in members)
    name = f"{first.dataset}-{first.recipe}-{'aug' if first.aug else 'noaug'}-ens{len(seeds)}-official"
    params = {k: v for k, v in first.flat_params().items() if k not in ("seed", "fold")}
    params["seeds"] = ",".join(map(str, seeds))
    run = tracker.start_ensemble(name, suite, parent_id, {
        "bench_ensemble_id": eid, "bench_group_id": first.group_id, "bench_members": ",".join(run_ids),
        "data_md5": data.md5, "data_verified": str(data.verified).lower(), "positive_label": pos}, params)
    run.metrics(metrics)
    run.end("FINISHED", "finished")
    log.info("%s: val AUC %.4f  test AUC %.4f [%.4f, %.4f]", name, metrics["val_auc"], metrics["test_auc"],
             metrics["test_auc_lo"], metrics["test_auc_hi"])
    return metrics


def build_ensembles(tracker, suite: str, cells: list[Cell], parent_id=None, data_root=None, allow_unverified=None) -> int:
    """Ensembles of every official-split group with >= 2 finished seeds; returns how many were logged."""
    n = 0
    for members in groups(cells).values():
        found = [(c, tracker.finished_run(c.cell_id)) for c in members]
        found = [(c, r) for c, r in found if r is not None]
        if len(found) < MIN_MEMBERS:
            continue
        try:
            if build_one(tracker, suite, parent_id, [c for c, _ in found], [r for _, r in found], data_root,
                         allow_unverified) is not None:
                n += 1
        except Exception as exc:  # an ensemble must never turn a finished suite red
            log.warning("ensemble of %s not built: %s", members[0].run_name, str(exc).splitlines()[0])
    return n

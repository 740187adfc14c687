"""Names and summaries of the shift metrics a run logs (the leaderboard reads them back).

Per (corruption, severity) a run logs ``shift_<corruption>_s<k>_auc``; over all of them
``shift_auc_mean`` (the plain mean: every corruption and severity weighs the same, as in
MedMNIST-C and ImageNet-C) and ``shift_auc_drop`` = clean test AUC - ``shift_auc_mean``
(positive = the model loses AUC under shift).
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

MEAN, DROP = "shift_auc_mean", "shift_auc_drop"
_NAME_RE = re.compile(r"shift_(?P<corruption>.+)_s(?P<severity>[1-5])_auc")


def metric_name(corruption: str, severity: int) -> str:
    return f"shift_{corruption}_s{severity}_auc"


def parse_metric(name: str) -> tuple[str, int] | None:
    """(corruption, severity) of a per-set metric name; None for any other column."""
    m = _NAME_RE.fullmatch(name)
    return (m["corruption"], int(m["severity"])) if m else None


def summarize(test_auc: float, aucs: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Every metric to log for one run, from its clean test AUC and its AUC per (corruption, severity)."""
    if not aucs:
        raise ValueError("no corrupted-set AUCs to summarize")
    out = {metric_name(c, k): float(v) for (c, k), v in aucs.items()}
    out[MEAN] = float(np.mean(list(aucs.values())))
    out[DROP] = float(test_auc) - out[MEAN]
    return out

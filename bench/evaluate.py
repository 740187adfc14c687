"""Prediction and metrics. Knows nothing of MLflow or training.

Definitions (all maths by scikit-learn):
* ``auc``, ``acc``: exactly ``medmnist.Evaluator``'s -- scores are P(label 1); binary AUC
  uses that column, multi-label AUC/ACC are macro means over labels; ACC thresholds the
  probability at 0.5. Both are invariant to which class is called positive.
* ``auprc`` (average precision) and ``f1``: for the *positive class* (binary: the minority
  class of the training split, ``positive_label``; multi-label: label 1, macro-averaged).
* ``acc_tuned`` / ``f1_tuned``: the same at a threshold chosen **on validation only** --
  the threshold on P(label 1) that maximizes validation accuracy (resp. validation F1);
  candidates are midpoints between consecutive distinct validation scores (plus 0.5);
  ties go to the candidate closest to 0.5. Multi-label: one threshold per label.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from bench.data import Split, scale

METRICS = ("auc", "auprc", "f1", "acc", "acc_tuned", "f1_tuned")


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def predict(model, split: Split, is_3d: bool, batch_size: int, device, bf16: bool, x_scale: float = 1.0) -> np.ndarray:
    """Sigmoid scores of the model's positive class, shape (N, L), float64."""
    model.eval()
    out = []
    for i in range(0, len(split), batch_size):
        x = scale(split.x[i : i + batch_size], is_3d)
        if x_scale != 1.0:
            x = x * x_scale
        x = x.to(device, non_blocking=True)
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        with autocast(device, bf16):
            logits = model(x)
        out.append(torch.sigmoid(logits.float()).cpu())
    return torch.cat(out).double().numpy()


def to_label1(scores: np.ndarray, positive_label: int) -> np.ndarray:
    """Scores of the positive class -> P(label 1) (medmnist's score column)."""
    return scores if positive_label == 1 else 1.0 - scores


def _per_label(fn, y: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean([fn(y[:, j], s[:, j]) for j in range(y.shape[1])]))


def auc(y: np.ndarray, p1: np.ndarray) -> float:
    return _per_label(roc_auc_score, y, p1)


def acc(y: np.ndarray, p1: np.ndarray, threshold=0.5) -> float:
    t = np.broadcast_to(np.asarray(threshold, dtype=float), (y.shape[1],))
    return float(np.mean([accuracy_score(y[:, j], p1[:, j] > t[j]) for j in range(y.shape[1])]))


def _pos(y: np.ndarray, positive_label: int) -> np.ndarray:
    return (y == positive_label).astype(int)


def auprc(y: np.ndarray, p1: np.ndarray, positive_label: int) -> float:
    s = p1 if positive_label == 1 else 1.0 - p1
    return _per_label(average_precision_score, _pos(y, positive_label), s)


def f1(y: np.ndarray, p1: np.ndarray, positive_label: int, threshold=0.5) -> float:
    t = np.broadcast_to(np.asarray(threshold, dtype=float), (y.shape[1],))
    yp = _pos(y, positive_label)
    vals = []
    for j in range(y.shape[1]):
        pred_label1 = p1[:, j] > t[j]
        pred_pos = pred_label1 if positive_label == 1 else ~pred_label1
        vals.append(f1_score(yp[:, j], pred_pos.astype(int), zero_division=0))
    return float(np.mean(vals))


def _best_threshold(y: np.ndarray, p1: np.ndarray, score_fn) -> float:
    u = np.unique(p1)
    cands = np.concatenate([[0.5], (u[:-1] + u[1:]) / 2 if len(u) > 1 else []])
    vals = np.array([score_fn(y, p1 > t) for t in cands])
    best = np.flatnonzero(vals >= vals.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def tune_thresholds(y_val: np.ndarray, p1_val: np.ndarray, positive_label: int) -> dict:
    """Per-label thresholds on P(label 1) chosen on validation data (see module doc)."""

    def f1_fn(yj, pred_label1):
        pred_pos = pred_label1 if positive_label == 1 else ~pred_label1
        return f1_score(yj == positive_label, pred_pos, zero_division=0)

    return {
        "acc": np.array([_best_threshold(y_val[:, j], p1_val[:, j], accuracy_score) for j in range(y_val.shape[1])]),
        "f1": np.array([_best_threshold(y_val[:, j], p1_val[:, j], f1_fn) for j in range(y_val.shape[1])]),
    }


def score(y: np.ndarray, p1: np.ndarray, positive_label: int, thresholds: dict | None = None) -> dict:
    """All metrics of one split. ``y``: official 0/1 labels (N, L); ``p1``: P(label 1) (N, L)."""
    y = np.asarray(y).astype(int)
    out = {
        "auc": auc(y, p1),
        "auprc": auprc(y, p1, positive_label),
        "f1": f1(y, p1, positive_label),
        "acc": acc(y, p1),
    }
    if thresholds is not None:
        out["acc_tuned"] = acc(y, p1, thresholds["acc"])
        out["f1_tuned"] = f1(y, p1, positive_label, thresholds["f1"])
    return out


def score_val_test(y_val: np.ndarray, p1_val: np.ndarray, y_test: np.ndarray, p1_test: np.ndarray,
                   positive_label: int) -> tuple[dict, dict, dict]:
    """(val metrics, test metrics, thresholds): thresholds are tuned on validation only and then
    applied unchanged to test."""
    thresholds = tune_thresholds(y_val, p1_val, positive_label)
    return (score(y_val, p1_val, positive_label, thresholds), score(y_test, p1_test, positive_label, thresholds),
            thresholds)


def bootstrap_auc_ci(y: np.ndarray, p1: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of ``auc`` over bootstrap resamples of the samples.

    The spread of a single model (e.g. a seed ensemble) on its test set: it says how much
    the number would move with another draw of test images, not with another training run.
    Resamples in which a label has only one class are skipped.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(int)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        yi = y[i]
        if (yi.min(axis=0) == yi.max(axis=0)).any():
            continue
        vals.append(auc(yi, p1[i]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)

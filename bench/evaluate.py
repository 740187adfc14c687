"""Prediction and metrics. Knows nothing of MLflow or training.

Definitions (all maths by scikit-learn):
* ``auc``, ``acc``: exactly ``medmnist.Evaluator``'s -- scores are P(label 1); binary AUC
  uses that column, multi-label AUC/ACC are macro means over labels; ACC thresholds the
  probability at 0.5. Both are invariant to which class is called positive.
* ``auprc`` (average precision) and ``f1``: for the *clinically positive class*
  (``positive_label``, declared per dataset in ``bench/datasets.yaml``; multi-label: label 1,
  macro-averaged). Models score the sampler class (``bench.data``); ``to_label1`` maps scores
  to P(label 1) first, so no metric depends on which class the model happened to score.
* ``acc_tuned`` / ``f1_tuned``: the same at a threshold chosen **on validation only** --
  the threshold on P(label 1) that maximizes validation accuracy (resp. validation F1);
  candidates are midpoints between consecutive distinct validation scores (plus 0.5);
  ties go to the candidate closest to 0.5. Multi-label: one threshold per label.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score, roc_curve

from bench.data import Split, scale
from bench.models import as_input, is_channels_last
from bench.registry import Registry


# Test-time augmentation: the views whose sigmoid scores are averaged. A cell declares it in its
# train settings (``train.tta``) before anything is scored, and the same views score validation
# (selection, thresholds) and test. Flips only: they are exact on the pixel grid.
TTA: Registry = Registry("test-time augmentation")
TTA.register("none")(lambda is_3d: (() ,))
TTA.register("flip")(lambda is_3d: ((), (4,), (3,), (2,)) if is_3d else ((), (3,)))


def autocast(device: torch.device, bf16: bool):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def predict(model, split: Split, is_3d: bool, batch_size: int, device, bf16: bool, x_scale: float = 1.0,
            tta: str = "none") -> np.ndarray:
    """Sigmoid scores of the class the model scores, shape (N, L), float64; with ``tta`` the mean
    over the flipped views. One host transfer at the end, whatever the number of batches."""
    model.eval()
    views = TTA.get(tta)(is_3d)
    channels_last = is_channels_last(model, 3 if is_3d else 2)  # inputs follow the model's layout
    out = []
    for i in range(0, len(split), batch_size):
        x = scale(split.x[i : i + batch_size].to(device, non_blocking=True), is_3d)
        if x_scale != 1.0:
            x = x * x_scale
        x = as_input(x, channels_last)
        s = 0.0
        for dims in views:
            with autocast(device, bf16):
                logits = model(x.flip(dims) if dims else x)
            s = s + torch.sigmoid(logits.float())
        out.append(s / len(views))
    return torch.cat(out).double().cpu().numpy()


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


def _partitions(y: np.ndarray, p1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate thresholds, true positives, false positives of ``p1 > t``) for every candidate.

    The candidates are 0.5 and the midpoints between consecutive distinct scores, ascending.
    ``roc_curve`` (without dropping points) gives the counts at every distinct score ``u`` for
    ``p1 >= u``, which is the partition of ``p1 > midpoint(u_prev, u)``: one sort instead of
    scoring every candidate (O(n log n), not O(n^2)). With a single class in ``y`` roc_curve is
    undefined, so the counts come from a cumulative sum of the sorted labels.
    """
    y = np.asarray(y).astype(int)
    n_pos = int(y.sum())
    u = np.unique(p1)  # ascending, in p1's dtype: midpoints are computed as the scan computes them
    mids = (u[:-1] + u[1:]) / 2  # mids[i] splits at u[i+1]: "p1 > mids[i]" is "p1 >= u[i+1]"
    at_half = p1 > 0.5
    tp_half, fp_half = int((at_half & (y == 1)).sum()), int((at_half & (y == 0)).sum())
    if 0 < n_pos < len(y):
        fpr, tpr, _ = roc_curve(y, p1, drop_intermediate=False)  # inf, then every distinct score descending
        tp, fp = np.rint(tpr * n_pos)[1:-1][::-1], np.rint(fpr * (len(y) - n_pos))[1:-1][::-1]
    else:
        above = (len(p1) - np.searchsorted(np.sort(p1), u[1:], side="left")).astype(float)  # scores >= u[i+1]
        tp, fp = (above, np.zeros(len(mids))) if n_pos else (np.zeros(len(mids)), above)
    cands = np.concatenate([[0.5], mids])
    return cands, np.concatenate([[tp_half], tp]), np.concatenate([[fp_half], fp])


def _best_threshold(y: np.ndarray, p1: np.ndarray, metric: str, positive_label: int = 1) -> float:
    """The candidate threshold on P(label 1) that maximizes ``metric`` (``acc`` or ``f1`` of the
    ``positive_label`` class) on ``(y, p1)``; ties go to the candidate closest to 0.5."""
    cands, tp, fp = _partitions(y, p1)
    n, n_pos = len(y), int(np.asarray(y).astype(int).sum())
    fn, tn = n_pos - tp, (n - n_pos) - fp
    if metric == "acc":
        vals = (tp + tn) / n
    else:  # F1 of the clinically positive class: label 0 swaps the roles of the two classes
        tp_, fp_, fn_ = (tp, fp, fn) if positive_label == 1 else (tn, fn, fp)
        denom = 2 * tp_ + fp_ + fn_
        vals = np.divide(2 * tp_, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)
    best = np.flatnonzero(vals >= vals.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def tune_thresholds(y_val: np.ndarray, p1_val: np.ndarray, positive_label: int) -> dict:
    """Per-label thresholds on P(label 1) chosen on validation data (see module doc)."""
    labels = range(y_val.shape[1])
    return {
        "acc": np.array([_best_threshold(y_val[:, j], p1_val[:, j], "acc") for j in labels]),
        "f1": np.array([_best_threshold(y_val[:, j], p1_val[:, j], "f1", positive_label) for j in labels]),
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

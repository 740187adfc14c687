"""Score a selected model on every corrupted test set of its dataset, once, and log it.

Used two ways with the same code: right after a cell's clean test (a suite with ``shift: true``
passes :func:`after_test` to the runner) and afterwards for finished runs
(:mod:`bench.shift.posthoc`, ``bench shift --suite NAME``). Selection is over before either
happens: corrupted sets are scored with the selected weights, the cell's declared TTA and
evaluation settings, exactly as its clean test split was.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

import numpy as np
import torch

from bench.catalog import SHIFT_DROP, SHIFT_MEAN, shift_metric
from bench.corrupt.corruptions import (
    SEVERITIES,
    corruption_names,
    not_applicable_reason,
    versions,
)
from bench.data import Split
from bench.errors import MissingExtra
from bench.evaluate import auc, predict, to_label1
from bench.shift.cache import corrupted_test_set

log = logging.getLogger(__name__)


def _npz_layout(x: torch.Tensor, n_channels: int, is_3d: bool) -> np.ndarray:
    """Channel-first uint8 tensor -> the npz layout the corruptions take ((N,H,W[,C]) or (N,D,H,W))."""
    if is_3d or n_channels == 1:
        return x[:, 0].cpu().numpy()
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _channel_first(images: np.ndarray, n_channels: int, is_3d: bool) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.unsqueeze(1) if is_3d or n_channels == 1 else x.permute(0, 3, 1, 2).contiguous()


def require_backends(flags) -> None:
    """Fail fast (one line naming the extra) when the 2D corruption package a dataset needs is
    missing; 3D sets without TorchIO are recorded per run as not applicable instead."""
    for flag in flags:
        try:
            corruption_names(flag)
        except MissingExtra as exc:
            if "medmnistc" in str(exc).lower() or "wand" in str(exc).lower():
                raise
        except Exception:  # no corruption set for this dataset: recorded per run
            continue


def score(model, data, *, tta: str, eval_batch_size: int, device, bf16: bool, x_scale: float,
          test_auc: float) -> dict:
    """{metric: value} for every (corruption, severity) of ``data``'s dataset, plus the summary."""
    spec, test = data.spec, data.splits["test"]
    images = _npz_layout(test.x, spec.n_channels, spec.is_3d)
    y = test.y.numpy().astype(int)
    aucs = {}
    for corruption in corruption_names(spec.flag):
        for severity in SEVERITIES:
            x = corrupted_test_set(spec.flag, data.md5, images, corruption, severity)
            split = Split(_channel_first(x, spec.n_channels, spec.is_3d), test.y)
            s = predict(model, split, spec.is_3d, eval_batch_size, device, bf16, x_scale, tta)
            aucs[(corruption, severity)] = auc(y, to_label1(s, data.sampler_label))
    return summarize(test_auc, aucs)


def score_and_log(model, data, run, *, tta: str, eval_batch_size: int, device, bf16: bool, x_scale: float,
                  test_auc: float) -> dict:
    """Score and log to ``run`` (a RunHandle); a dataset without a corruption set is tagged
    ``shift_status=not_applicable`` with the reason, and the run does not fail."""
    reason = not_applicable_reason(data.spec.flag)
    if reason is not None:
        run.tags({"shift_status": "not_applicable", "shift_reason": reason[:500]})
        return {}
    t0 = time.perf_counter()
    metrics = score(model, data, tta=tta, eval_batch_size=eval_batch_size, device=device, bf16=bf16,
                    x_scale=x_scale, test_auc=test_auc)
    metrics["shift_seconds"] = time.perf_counter() - t0
    run.metrics(metrics)
    run.tags({"shift_status": "scored", **{f"shift_version_{k}": v for k, v in versions().items() if v}})
    log.info("%s under shift: AUC %.4f (clean %.4f), %d sets in %.0fs", data.spec.flag, metrics[SHIFT_MEAN], test_auc,
             len(metrics) - 3, metrics["shift_seconds"])
    return metrics


def after_test(scored, run) -> None:
    """The runner's ``after_test`` hook (``bench.runner.Scored``)."""
    cfg = scored.cell.train
    score_and_log(scored.model, scored.data, run, tta=cfg.tta, eval_batch_size=cfg.eval_batch_size,
                  device=scored.device, bf16=scored.bf16, x_scale=scored.x_scale, test_auc=scored.test_auc)


def summarize(test_auc: float, aucs: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Every metric to log for one run, from its clean test AUC and its AUC per (corruption, severity)."""
    if not aucs:
        raise ValueError("no corrupted-set AUCs to summarize")
    out = {shift_metric(c, k): float(v) for (c, k), v in aucs.items()}
    out[SHIFT_MEAN] = float(np.mean(list(aucs.values())))
    out[SHIFT_DROP] = float(test_auc) - out[SHIFT_MEAN]
    return out

"""One cell end to end: data -> fit -> score val and (once) test -> log to its MLflow run."""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import data as D
from bench.catalog import CHECKPOINT, UNGATED_SCORES
from bench.config import Cell
from bench.device import select_device
from bench.errors import BenchError, NotApplicable
from bench.evaluate import predict, score_val_test, to_label1
from bench.models import save_checkpoint as write_checkpoint  # execute() has a save_checkpoint flag
from bench.objectives import get_objective
from bench.pretrain import build as build_union
from bench.train import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellResult:
    cell_id: str
    run_name: str
    status: str  # finished | failed | not_applicable | skipped | claimed
    val_auc: float = float("nan")
    test_auc: float = float("nan")
    test_acc: float = float("nan")
    seconds: float = 0.0
    error: str = ""

    def line(self) -> str:
        if self.status == "finished":
            return (f"{self.run_name}: val AUC {self.val_auc:.4f}  test AUC {self.test_auc:.4f}  "
                    f"test ACC {self.test_acc:.4f}  {self.seconds:.0f}s")
        return f"{self.run_name}: {self.status}{(' - ' + self.error) if self.error else ''}"


def _roc_png(y: np.ndarray, p1: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for j in range(y.shape[1]):
        RocCurveDisplay.from_predictions(y[:, j], p1[:, j], ax=ax, name=f"label {j}" if y.shape[1] > 1 else "test",
                                         plot_chance_level=(j == 0))
    ax.set_title(title, fontsize=9)
    if y.shape[1] > 4:
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Scored:
    """What an ``after_test`` hook gets: the selected model and everything needed to score it
    on more data the same way the test split was scored (e.g. corrupted test sets)."""

    cell: Cell
    model: torch.nn.Module
    data: D.MedData
    device: torch.device
    bf16: bool
    x_scale: float
    test_auc: float


def execute(cell: Cell, run, *, data_root=None, allow_unverified=None, init_state=None, progress=True,
            after_test=None, save_checkpoint: bool = True) -> CellResult:
    """Run ``cell`` inside the open MLflow run ``run`` (a ``tracking.RunHandle``).

    ``after_test(scored, run)``: called once the test split has been scored (shift scoring
    hooks in here; it never influences selection, which is over by then).
    ``save_checkpoint``: False keeps ``model.pt`` out of the artifacts (storage; see
    ``checkpoints:`` in the README) -- then nothing can fine-tune from or re-score this run.
    Raises on failure; the caller ends the run (FAILED / not applicable / FINISHED).
    """
    t0 = time.perf_counter()
    data = D.load(cell.dataset, data_root, size=cell.size, allow_unverified=allow_unverified)
    spec = data.spec
    pos, sampler = data.positive_label, data.sampler_label
    run.tags({"data_md5": data.md5, "data_verified": str(data.verified).lower(), "positive_label": pos,
              "positive_class": spec.positive_name if spec.task == "binary" else "each finding",
              "sampler_label": sampler, "data_file": str(data.path)})
    # applicability first: a binary-only loss on ChestMNIST ends here, before any training
    get_objective(cell.objective).check_task(spec.task == "multilabel")
    proto = D.make_protocol(data, cell.protocol, cell.fold, cell.train.split_seed)
    run.dataset(cell.dataset, data.md5, str(data.path), cell.protocol if cell.fold is None else f"{cell.protocol}/fold{cell.fold}")
    device = select_device()
    run.tags({"device": str(device), "n_train": len(proto.train), "n_val": len(proto.val), "n_test": len(proto.test)})

    def on_epoch(rec: dict) -> None:
        keys = ("train_loss", "val_auc", "val_auprc", "epoch_seconds", "lr")
        run.metrics({k: rec[k] for k in keys if np.isfinite(rec[k])}, step=rec["epoch"])

    union = None
    if dict(cell.techniques).get("pretrain"):  # a multi-dataset pretraining stage (bench.pretrain)
        union = build_union(cell, data, proto, sampler, data_root=data_root, allow_unverified=allow_unverified)
        run.tags({"pretrain_union": ", ".join(f"{f}:{n}" for f, n in union.parts), "n_train_union": len(union.x)})
    result = fit(cell, proto, spec, sampler, pos, device=device, init_state=init_state, on_epoch=on_epoch,
                 progress=progress, union=union)
    bs, x_scale = cell.train.eval_batch_size, D.eval_x_scale(cell.train.voxel_scale, spec)
    y_val = proto.val.y.numpy().astype(int)
    y_test = proto.test.y.numpy().astype(int)

    def test_scores(model):
        return to_label1(predict(model, proto.test, spec.is_3d, bs, device, result.bf16, x_scale, cell.train.tta), sampler)

    p1_val = to_label1(result.val_scores, sampler)  # scored during training, by the selected weights
    # The one and only look at the test split, with the selected weights (and the declared TTA).
    p1_test = test_scores(result.model)
    val, test, thresholds = score_val_test(y_val, p1_val, y_test, p1_test, pos)

    final = {f"val_{k}": v for k, v in val.items()}
    final.update({f"test_{k}": v for k, v in test.items()})
    final.update({
        "best_epoch": result.best_epoch,
        "epochs_run": sum(r["epoch"] > 0 for r in result.history),  # epoch 0 = the init checkpoint
        "train_seconds": result.train_seconds,
        "train_samples_per_s": result.train_samples / max(result.train_seconds, 1e-9),
        "threshold_acc": float(np.mean(thresholds["acc"])),
        "threshold_f1": float(np.mean(thresholds["f1"])),
        "optimizer_steps": result.optimizer_steps,
        "steps_per_epoch": result.optimizer_steps / max(1, sum(r["epoch"] > 0 for r in result.history)),
    })
    if cell.init_from:
        # The gate, reported: did validation keep the starting checkpoint (epoch 0)? And the
        # "ungated" candidate -- the best fine-tuned epoch (>= 1) on validation -- which is the
        # selected model itself unless the gate closed. Both candidates are fixed by validation
        # before any test score exists; each is scored on test once (findings report both).
        final["gate_kept_init"] = float(result.gated)
        if result.gated:
            u = result.ungated
            p1_ungated = test_scores(u.model)
            u_val, u_test, _ = score_val_test(y_val, to_label1(u.val_scores, sampler), y_test, p1_ungated, pos)
            final.update({"ungated_best_epoch": u.epoch, "ungated_val_auc": u_val["auc"],
                          "ungated_test_auc": u_test["auc"], "ungated_test_auprc": u_test["auprc"]})
        else:
            final.update({"ungated_best_epoch": result.best_epoch, "ungated_val_auc": val["auc"],
                          "ungated_test_auc": test["auc"], "ungated_test_auprc": test["auprc"]})
    # Final values go one step past the last epoch so that MLflow's "latest" value of
    # val_auc (what search_runs and the UI table show) is the *selected* model's.
    run.metrics(final, step=len(result.history) + 1)
    run.tags({"precision": "bf16" if result.bf16 else "fp32", "path": result.path,
              "stopped_early": str(result.stopped_early).lower()})

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp)
        resolved = {**asdict(cell), "cell_id": cell.cell_id, "group_id": cell.group_id,
                    "data_md5": data.md5, "data_verified": data.verified, "positive_label": pos,
                    "sampler_label": sampler,
                    "thresholds": {k: v.tolist() for k, v in thresholds.items()}}
        (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
        pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
        # medmnist's standard result file: "<flag>_test_[AUC]x_[ACC]y@run.csv", rows "index,score..."
        fname = f"{cell.dataset}_test_[AUC]{test['auc']:.3f}_[ACC]{test['acc']:.3f}@{cell.run_name}.csv"
        pd.DataFrame(p1_test).to_csv(out / fname, header=False)
        pd.DataFrame(p1_val).to_csv(out / fname.replace("_test_", "_val_", 1).replace(
            f"[AUC]{test['auc']:.3f}_[ACC]{test['acc']:.3f}", f"[AUC]{val['auc']:.3f}_[ACC]{val['acc']:.3f}"), header=False)
        if cell.init_from and result.gated:  # the ungated candidate's test scores (hierarchical bootstrap)
            pd.DataFrame(p1_ungated).to_csv(out / UNGATED_SCORES, header=False)
        _roc_png(y_test, p1_test, f"{cell.run_name}\ntest AUC {test['auc']:.4f}", out / "roc_test.png")
        if save_checkpoint:
            write_checkpoint(result.model, out / CHECKPOINT)
        run.artifacts(out)
    if after_test is not None:
        after_test(Scored(cell, result.model, data, device, result.bf16, x_scale, test["auc"]), run)
    return CellResult(cell.cell_id, cell.run_name, "finished", val["auc"], test["auc"], test["acc"],
                      time.perf_counter() - t0)


def run_one(tracker, cell: Cell, suite: str, parent_id: str | None, lock, *, init_state=None, init_source=None,
            data_root=None, allow_unverified=None, progress=True, after_test=None, save_checkpoint=True) -> CellResult:
    """Create the cell's run, execute it, and end it with the right status -- never RUNNING."""
    extra = {"bench_init_run_id": init_source} if init_source else {}
    run = tracker.start_cell(cell, suite, parent_id, lock, extra)
    t0 = time.perf_counter()
    try:
        res = execute(cell, run, data_root=data_root, allow_unverified=allow_unverified, init_state=init_state,
                      progress=progress, after_test=after_test, save_checkpoint=save_checkpoint)
    except NotApplicable as exc:
        run.end("FINISHED", "not_applicable", str(exc))
        return CellResult(cell.cell_id, cell.run_name, "not_applicable", error=str(exc))
    except BenchError as exc:
        run.end("FAILED", "failed", str(exc))
        return CellResult(cell.cell_id, cell.run_name, "failed", seconds=time.perf_counter() - t0, error=str(exc))
    except KeyboardInterrupt:
        run.end("KILLED", "interrupted", "interrupted by the user (Ctrl-C)")
        raise
    except Exception as exc:  # a bug or an unexpected library error: record it, keep the suite going
        log.debug("cell %s crashed", cell.run_name, exc_info=True)
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        run.end("FAILED", "failed", msg)
        return CellResult(cell.cell_id, cell.run_name, "failed", seconds=time.perf_counter() - t0, error=msg)
    run.end("FINISHED", "finished")
    return res

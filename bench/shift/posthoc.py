"""``bench shift --suite NAME``: add the shift column to finished runs, without retraining.

For every FINISHED cell run of the suite that has no shift metrics yet, the selected
checkpoint (``model.pt``) is loaded and scored on the corrupted test sets of its dataset,
with the run's own evaluation settings (TTA, batch size, precision, voxel scale). A run is
scored at most once: runs that already have ``shift_auc_mean`` or were found not applicable
are left alone. A run whose checkpoint is missing, or whose data file here differs from the
one it was trained on, is reported and skipped; the others go on.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from bench import data as D
from bench.catalog import CHECKPOINT
from bench.device import resolve_path, select_device, use_bf16
from bench.models import load_checkpoint, load_model
from bench.shift.scoring import require_backends, score_and_log

log = logging.getLogger(__name__)


@dataclass
class ShiftSummary:
    scored: list = field(default_factory=list)
    not_applicable: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (run name, reason)
    already: int = 0

    def table(self) -> str:
        lines = [f"shift: scored {len(self.scored)}, not applicable {len(self.not_applicable)}, "
                 f"skipped {len(self.skipped)}, already scored {self.already}"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def _pending(runs):
    """Runs without shift results; the others are counted as already done."""
    todo, done = [], 0
    for r in runs:
        if "shift_auc_mean" in r.data.metrics or r.data.tags.get("shift_status") == "not_applicable":
            done += 1
        else:
            todo.append(r)
    return todo, done


def score_run(tracker, run, data_root=None, allow_unverified=None) -> dict:
    """Score one finished run; raises FileNotFoundError/DataError with the reason to skip it."""
    from bench.tracking import RunHandle

    p = run.data.params
    flag, size = p["dataset"], int(p.get("size") or D.DEFAULT_SIZE)
    data = D.load(flag, data_root, size=size, allow_unverified=allow_unverified)
    trained_on = run.data.tags.get("data_md5")
    if trained_on and trained_on != data.md5:
        raise D.DataError(f"data file here has MD5 {data.md5}, the run trained on {trained_on}")
    if CHECKPOINT not in tracker.artifact_names(run.info.run_id):
        raise FileNotFoundError(f"no {CHECKPOINT} artifact (the suite kept checkpoints only where needed)")
    with tempfile.TemporaryDirectory(prefix="bench-shift-") as tmp:
        state = load_checkpoint(tracker.download_artifact(run.info.run_id, CHECKPOINT, Path(tmp)))
    spec, device = data.spec, select_device()
    bf16 = run_bf16(run.data.tags.get("precision"), p.get("precision", "auto"), device, spec.dims)
    # its recorded execution path (runs before paths existed: the default)
    xp = resolve_path("bf16" if bf16 else "fp32", p.get("path") or "fast", device, spec.dims)
    model = load_model(p["model"], spec.n_channels, spec.n_labels, dims=spec.dims, device=device,
                       channels_last=xp.channels_last, state=state)
    x_scale = D.eval_x_scale(p.get("voxel_scale") == "True", spec)
    return score_and_log(model, data, RunHandle(tracker, run.info.run_id, None), tta=p.get("tta", "none"),
                         eval_batch_size=int(p.get("eval_batch_size", 512)), device=device, bf16=bf16,
                         x_scale=x_scale, test_auc=run.data.metrics["test_auc"])


def run_bf16(recorded: str | None, requested: str, device, dims: int) -> bool:
    """Score in the precision the run *used* (its ``precision`` tag: bf16 | fp32), so a model is
    re-scored as it was tested; runs older than that tag fall back to what the request resolves to
    here. A bf16 run re-scored where bf16 is not reliable (e.g. a CPU without it) uses fp32."""
    if recorded in ("bf16", "fp32"):
        return recorded == "bf16" and use_bf16("bf16", device, dims)
    return use_bf16(requested, device, dims)


def run_shift(tracker, runs, data_root=None, allow_unverified=None, progress=True) -> ShiftSummary:
    require_backends({r.data.params.get("dataset") for r in runs})
    todo, summary = _pending(runs)[0], ShiftSummary(already=_pending(runs)[1])
    for run in tqdm(todo, desc="shift", unit="run", disable=not progress):
        name = run.info.run_name
        try:
            metrics = score_run(tracker, run, data_root, allow_unverified)
        except (FileNotFoundError, D.DataError) as exc:
            log.warning("%s: skipped (%s)", name, exc)
            summary.skipped.append((name, str(exc).splitlines()[0]))
            continue
        (summary.scored if metrics else summary.not_applicable).append(name)
    return summary

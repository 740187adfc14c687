"""One cell as a task: claim -> skip if finished -> checks -> init checkpoint -> run -> release.

Every executor calls :func:`run_task` -- the local one in the driver's process, the Ray one
in a worker process on any machine (:func:`ray_entry`) -- so a cell is run by the same code
whatever schedules it, and its runs look the same.

A worker knows only what its task carries (:class:`WorkerContext`, :class:`CellTask`):
workers do not inherit the driver's environment, so the tracking URI, the claim store, the
data location, the data policy and the code the driver expects all travel with the task.
Before anything trains, a worker checks that it runs the driver's code (the code digest:
runs of other code would never count as finished) and that its data file is the one the
driver planned the cell for (the cell id contains that file's MD5). Either mismatch ends
the cell as a FAILED run whose ``bench_error`` says why -- never silent training on other
code or other data.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import data as D
from bench import datafiles as F
from bench.catalog import CHECKPOINT
from bench.config import Cell
from bench.errors import BenchError
from bench.models import load_checkpoint
from bench.runner import CellResult, run_one

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerContext:
    """What every task of one suite invocation shares (picklable, explicit, no environment)."""

    suite: str
    suite_path: str  # plugins given as .py files are relative to it
    experiment: str
    tracking_uri: str
    code_digest: str  # the driver's bench.provenance.code_digest()
    reuse: tuple = ()  # experiments whose FINISHED identical cells count as done
    plugins: tuple = ()  # the suite's plugins: they register names and enter the code digest
    parent_run_id: str | None = None
    claims_uri: str | None = None  # postgresql://... or a lock folder (bench.claims.make_claims)
    data_dir: str | None = None
    data_dir_is_hint: bool = False  # True on remote workers: the driver's folder may not exist there
    allow_unverified: bool | None = None
    rerun: bool = False
    progress: bool = False
    shift: bool = False  # score the selected model on corrupted test sets (bench.shift)
    executor: str = "local"
    http_env: tuple = ()  # (name, value) MLflow HTTP retry settings (bench.tracking.HTTP_RETRIES)
    source_poll_s: float = 5.0  # how often a dependent checks a source claimed by another process
    system_metrics: bool = False  # log CPU/memory/GPU utilisation into each cell run
    run_tags: tuple = ()  # (name, value) every run of this invocation carries, e.g. bench_budget (bench.scaling)


@dataclass(frozen=True)
class CellTask:
    """One cell to run; ``source`` is the finished-cell checkpoint it starts from (``init_from``)."""

    cell: Cell
    source: Cell | None = None
    save_checkpoint: bool = True
    source_status: str = ""  # set when the source ran in this invocation and did not finish


class CellRefused(BenchError):
    """A check before training failed; the cell ends as a FAILED run with this message."""


def host() -> str:
    return socket.gethostname()


@functools.lru_cache(maxsize=8)
def _load_plugins(plugins: tuple, suite_path: str) -> None:
    """The suite's plugins, once per process: they register names and enter the code digest."""
    from bench.plugins import load_plugins

    load_plugins(list(plugins), Path(suite_path))


def check_code(ctx: WorkerContext) -> None:
    """The worker must run the driver's code: its runs are only "finished" under that digest."""
    from bench.provenance import code_digest

    _load_plugins(tuple(ctx.plugins), ctx.suite_path)
    mine = code_digest()
    if mine != ctx.code_digest:
        raise CellRefused(f"worker {host()} runs other code (code digest {mine}, the driver's is {ctx.code_digest}); "
                          f"install the driver's version of medauc-bench on every node (its runs would not count as finished)")


def data_root(cell: Cell, ctx: WorkerContext) -> str | None:
    """Where this process reads the cell's file. The driver's folder where it has the file;
    on a remote worker without it, the worker's own ``$BENCH_DATA_DIR``, else medmnist's
    download into ``~/.medmnist`` (``bench.data.locate``)."""
    if not ctx.data_dir_is_hint:
        return ctx.data_dir
    spec = D.get_spec(cell.dataset, cell.size)
    if ctx.data_dir and (Path(ctx.data_dir) / spec.file_name).is_file():
        return ctx.data_dir
    return None


def check_data(cell: Cell, ctx: WorkerContext) -> None:
    """The worker's file must be the file the driver planned the cell for (same MD5)."""
    if not cell.data_fingerprint:
        return
    spec = D.get_spec(cell.dataset, cell.size)
    path = F.locate(spec, F.data_dir(data_root(cell, ctx)))
    actual = F.file_md5(path)
    if actual != cell.data_fingerprint:
        raise CellRefused(f"data file {path} on {host()} has MD5 {actual}, but the driver planned this cell for MD5 "
                          f"{cell.data_fingerprint} (the cell id depends on it); give every worker the driver's "
                          f"{spec.file_name} (BENCH_DATA_DIR) -- nothing was trained on other data")


def wait_for_source(tracker, src: Cell, poll_s: float):
    """The source's FINISHED run, waiting while another process holds its claim (it is training it)."""
    said = False
    while not tracker.claims.is_free(src.cell_id):
        if not said:
            log.info("waiting for %s: another process is training it", src.run_name)
            said = True
        time.sleep(poll_s)
    return tracker.finished_run(src.cell_id)


def init_checkpoint(task: CellTask, ctx: WorkerContext, tracker) -> tuple[dict, str]:
    """The source cell's checkpoint, from the tracking server (never by retraining the source)."""
    cell, src = task.cell, task.source
    run = tracker.finished_run(src.cell_id)
    if run is None and not task.source_status:
        run = wait_for_source(tracker, src, ctx.source_poll_s)
    if run is None:
        raise CellRefused(f"{cell.run_name}: its init_from cell {src.run_name} did not finish "
                          f"({task.source_status or 'no FINISHED run'})")
    with tempfile.TemporaryDirectory(prefix="bench-init-") as tmp:
        try:
            path = tracker.download_artifact(run.info.run_id, CHECKPOINT, Path(tmp))
        except Exception as exc:  # e.g. a source logged with `checkpoints: needed` elsewhere, or a lost artifact
            raise CellRefused(f"{cell.run_name}: its init_from run {run.info.run_id} ({src.run_name}) has no usable "
                              f"{CHECKPOINT} ({type(exc).__name__}); run the source again with --rerun") from None
        return load_checkpoint(path), run.info.run_id


def _after_test(ctx: WorkerContext):
    if not ctx.shift:
        return None
    from bench.shift.scoring import after_test

    return after_test


def run_task(task: CellTask, ctx: WorkerContext, tracker) -> CellResult:
    """Run ``task`` with ``tracker``; ends every run it starts (FINISHED, FAILED or KILLED)."""
    cell = task.cell
    claim = tracker.claim(cell.cell_id)
    if claim is None:
        return CellResult(cell.cell_id, cell.run_name, "claimed")
    try:
        tracker.mark_dead_runs_of(cell.cell_id, claim)
        # another process may have finished it between the driver's query and our claim
        if not ctx.rerun and tracker.finished_run(cell.cell_id) is not None:
            return CellResult(cell.cell_id, cell.run_name, "skipped")
        try:
            check_code(ctx)
            check_data(cell, ctx)
            init_state, init_src = init_checkpoint(task, ctx, tracker) if task.source is not None else (None, None)
        except BenchError as exc:  # recorded as a FAILED run that says why, like a failure while training
            run = tracker.start_cell(cell, ctx.suite, ctx.parent_run_id, claim)
            run.end("FAILED", "failed", str(exc))
            return CellResult(cell.cell_id, cell.run_name, "failed", error=str(exc))
        return run_one(tracker, cell, ctx.suite, ctx.parent_run_id, claim, init_state=init_state, init_source=init_src,
                       data_root=data_root(cell, ctx), allow_unverified=ctx.allow_unverified, progress=ctx.progress,
                       after_test=_after_test(ctx), save_checkpoint=task.save_checkpoint)
    finally:
        claim.release()


# ---------------------------------------------------------------------------- remote workers
@functools.lru_cache(maxsize=4)
def _tracker(experiment: str, uri: str, reuse: tuple, claims_uri: str | None, executor: str,
             system_metrics: bool = False):
    """One tracker per worker process and suite (worker processes run many tasks)."""
    from bench.tracking import Tracker

    return Tracker(experiment, uri=uri, reuse=reuse, claims_uri=claims_uri, executor=executor,
                   system_metrics=system_metrics)


def ray_entry(task: CellTask, ctx: WorkerContext, threads: int) -> CellResult:
    """The body of a Ray task: the worker's environment from the context, then :func:`run_task`.

    User-caused problems (an unreachable tracking server, a missing plugin) come back as a
    failed result with one line; anything else raises, and Ray reports it with its traceback.
    """
    import torch

    os.environ.update(dict(ctx.http_env))
    os.environ["MLFLOW_TRACKING_URI"] = ctx.tracking_uri  # for MLflow code paths that read the global URI
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # progress bars of N workers interleave
    torch.set_num_threads(threads)  # the task's CPUs; Ray's default OMP_NUM_THREADS is 1
    try:
        tracker = _tracker(ctx.experiment, ctx.tracking_uri, tuple(ctx.reuse), ctx.claims_uri, ctx.executor,
                           ctx.system_metrics)
        tracker.context_tags.update(dict(ctx.run_tags))
    except BenchError as exc:
        msg = f"worker {host()}: {exc}"
        return CellResult(task.cell.cell_id, task.cell.run_name, "failed", error=msg)
    return run_task(task, ctx, tracker)


def pool_entry(task: CellTask, ctx: WorkerContext, threads: int, gpus: str | None) -> CellResult:
    """The body of a ``--jobs`` task (bench.executors.pool), in a fresh spawned process: its GPUs
    (``CUDA_VISIBLE_DEVICES``, set before torch touches CUDA), then the Ray task's body."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return ray_entry(task, ctx, threads)

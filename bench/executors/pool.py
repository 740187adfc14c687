"""``--jobs N``: N cells at once on this machine, in worker processes, without Ray.

For the researcher with one workstation (1-4 GPUs, no cluster): the plan's task graph is
honoured exactly as the Ray executor honours it (a fine-tune starts when its source has ended,
``bench.executors.graph.Schedule``), and each cell asks for the resources the suite declares
(``resources:``, ``bench.executors.resources``) -- the same requests Ray schedules with:

* GPUs: a cell asking for a fraction of a GPU is packed onto the GPU with the most free
  capacity that still fits it (four 2D cells at 0.25 share one GPU); a cell asking for whole
  GPUs gets that many free ones. Its process sees only its GPUs (``CUDA_VISIBLE_DEVICES``).
* CPUs: a cell starts only when its CPUs are free (one cell may always run), and its torch
  thread count is its CPU request, so a cell's numbers depend on its request, not on how many
  other cells run beside it (CPU float reductions depend on the thread count).

Every cell runs in a fresh spawned process (CUDA state and torch threads never leak from one
cell into the next) through :func:`bench.executors.worker.pool_entry`, the same task body as a Ray
worker. Claims are the store's usual ones (file locks next to SQLite, or PostgreSQL), so a
second driver on the same store shares the work as with the sequential executor.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
from typing import Iterator

from bench.errors import ConfigError
from bench.hardware import usable_cpus
from bench.executors import Cluster, Executor
from bench.executors.graph import Plan, Schedule
from bench.runner import CellResult

log = logging.getLogger("bench.driver")


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch CUDA build: a CPU machine
        return 0


class Slots:
    """Free CPUs and per-GPU free capacity on this machine; places a request or says it must wait."""

    def __init__(self, cpus: float, gpus: int):
        self.cpus, self.free_cpus = cpus, cpus
        self.gpu_free = [1.0] * gpus
        self.running = 0

    def place(self, res) -> tuple[int, ...] | None:
        """GPU ids for ``res`` (empty for a CPU cell), or None when it does not fit now."""
        if self.running and res.cpus > self.free_cpus + 1e-9:
            return None
        ids: tuple[int, ...] = ()
        if res.gpus > 0:
            if res.gpus <= 1:
                fits = [i for i, f in enumerate(self.gpu_free) if f + 1e-9 >= res.gpus]
                if not fits:
                    return None
                ids = (max(fits, key=lambda i: (self.gpu_free[i], -i)),)
            else:
                whole = [i for i, f in enumerate(self.gpu_free) if f >= 1.0 - 1e-9]
                if len(whole) < int(res.gpus):
                    return None
                ids = tuple(whole[: int(res.gpus)])
        self._take(res, ids, -1)
        return ids

    def release(self, res, ids: tuple[int, ...]) -> None:
        self._take(res, ids, +1)

    def _take(self, res, ids, sign: int) -> None:
        self.free_cpus += sign * res.cpus
        self.running -= sign
        share = res.gpus if res.gpus <= 1 else 1.0
        for i in ids:
            self.gpu_free[i] += sign * share


class PoolExecutor(Executor):
    """``bench suite NAME --jobs N``: at most N cells at once, in spawned processes on this machine."""

    name = "local"
    remote = True  # tasks run in other processes: everything they need travels in the context

    def __init__(self, jobs: int):
        if jobs < 1:
            raise ConfigError("--jobs must be >= 1")
        self.jobs = jobs
        self._cluster: Cluster | None = None

    def connect(self) -> None:
        n = float(usable_cpus())
        g = float(visible_gpus())
        self._cluster = Cluster(cpus=n, gpus=g, max_node_cpus=n, max_node_gpus=g, address=f"this machine, --jobs {self.jobs}")

    def cluster(self) -> Cluster:
        if self._cluster is None:
            self.connect()
        return self._cluster

    def run(self, plan: Plan, ctx, tracker) -> Iterator[CellResult]:
        from bench.executors.worker import pool_entry

        cluster = self.cluster()
        slots = Slots(cluster.cpus, int(cluster.gpus))
        schedule, in_flight, n, waiting = Schedule(plan), {}, 0, []
        pool = cf.ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                      max_tasks_per_child=1)
        try:
            while schedule or waiting:
                while len(in_flight) < self.jobs:
                    item = waiting.pop(0) if waiting else schedule.take()
                    if item is None:
                        break
                    ids = slots.place(item.resources)
                    if ids is None:  # does not fit beside the running cells: it goes first once one ends
                        waiting.insert(0, item)
                        break
                    gpus = ",".join(map(str, ids)) if cluster.gpus else None
                    fut = pool.submit(pool_entry, item.task, ctx, item.resources.threads, gpus)
                    in_flight[fut] = (item, ids)
                    log.info("started %s (%s%s)", item.task.cell.run_name, item.resources,
                             f", GPU {gpus}" if gpus else "")
                if not in_flight:
                    break
                done, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    item, ids = in_flight.pop(fut)
                    slots.release(item.resources, ids)
                    res = self._result(fut, item)
                    n += 1
                    log.info("cell %d/%d %s", n, len(plan), res.line())
                    schedule.done(item.cell_id, res.status, res.error)
                    yield res
        except (KeyboardInterrupt, GeneratorExit):
            for fut in in_flight:
                fut.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _result(fut, item) -> CellResult:
        cell = item.task.cell
        try:
            return fut.result()
        except Exception as exc:  # the worker process died (OOM, kill -9) or the task raised
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            return CellResult(cell.cell_id, cell.run_name, "failed", error=f"worker process failed: {msg}")

"""Executors: who runs the cells of a plan, and where.

Data flows one way: suite YAML -> cells -> :class:`~bench.executors.graph.Plan` (driver) ->
executor -> :func:`bench.executors.worker.run_task` (data -> fit -> score, in ``bench.runner``) ->
tracking -> leaderboard. An executor only decides *where and when* a task runs; what a task
does is the worker's, identical for every executor.

* ``local`` (default): sequential, in the driver's process, in plan order -- the behaviour
  from before executors existed. Never imports Ray.
* ``ray``: one Ray task per cell with declared resources; dependents start when their source
  ends; independent cells run in parallel up to the cluster's capacity.

The interface, in the order the driver calls it:

1. ``connect()`` before anything is recorded: every problem a user can cause (a missing
   extra, an unreachable or malformed address) is one line here, before any run starts.
2. ``cluster()`` -> :class:`Cluster`: what resource requests are checked against, and
   ``check_store(tracker)``: whether the tasks can reach the tracking store and artifacts.
3. ``run(plan, ctx, tracker)`` yields one :class:`bench.runner.CellResult` per planned cell,
   as they end (``ctx``: :class:`bench.executors.worker.WorkerContext`; ``tracker`` is used by
   in-process executors, remote tasks open their own from ``ctx``).
4. ``close()`` (executors are context managers).

New executors register a factory in :data:`EXECUTORS` (``--executor NAME`` finds them, with
a did-you-mean for typos).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator

from bench.hardware import usable_cpus
from bench.registry import Registry

EXECUTORS: Registry = Registry("executor")


@dataclass(frozen=True)
class Cluster:
    """Capacity of where the cells run (the largest node bounds what one cell may ask)."""

    cpus: float
    gpus: float = 0.0
    max_node_cpus: float = 0.0
    max_node_gpus: float = 0.0
    address: str = "this process"
    loopback: bool = True  # every node is on this machine (shares its files)


class Executor(abc.ABC):
    name: str = ""
    remote: bool = False  # tasks run in other processes (which do not inherit the driver's environment)

    def connect(self) -> None:
        """Check and connect (idempotent); raise a one-line BenchError on anything a user can fix."""

    def check_store(self, tracker) -> None:
        """Raise when the tasks could not reach ``tracker``'s store or artifacts (remote executors)."""

    @abc.abstractmethod
    def cluster(self) -> Cluster:
        """Capacity, after :meth:`connect`."""

    @abc.abstractmethod
    def run(self, plan, ctx, tracker) -> Iterator:
        """Run every planned cell; yield their ``CellResult`` as they end."""

    def close(self) -> None:
        """Release what :meth:`connect` acquired (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _local(jobs: int | None = None, **options):
    if jobs is not None and jobs > 1:  # N cells at once in worker processes (bench.executors.pool)
        from bench.executors.pool import PoolExecutor

        return PoolExecutor(jobs)
    from bench.executors.local import LocalExecutor

    return LocalExecutor(**options)


def _ray(**options):
    from bench.executors.ray_executor import (
        RayExecutor,  # imports no Ray until connect()
    )

    return RayExecutor(**options)


EXECUTORS.register("local", description="this machine: sequential in this process (default), or --jobs N cells at once")(_local)
EXECUTORS.register("ray", description="one Ray task per cell on a Ray cluster (pip install -e '.[ray]')")(_ray)


def get_executor(name: str, **options) -> Executor:
    """An executor by name; an unknown name is a one-line error with a did-you-mean."""
    return EXECUTORS.get(name, where="--executor")(**options)


def local_cluster() -> Cluster:
    n = float(usable_cpus())
    return Cluster(cpus=n, max_node_cpus=n)

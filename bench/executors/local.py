"""The default executor: every cell in this process, one after the other, in plan order.

This is the behaviour from before executors existed (file-lock claims next to a SQLite
store, Ctrl-C marks the running cell KILLED), and it imports nothing of Ray.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

from bench.executors import Cluster, Executor, local_cluster
from bench.executors.estimate import Eta
from bench.executors.graph import Plan, Schedule
from bench.executors.worker import run_task

log = logging.getLogger("bench.driver")


class LocalExecutor(Executor):
    name = "local"
    remote = False

    def __init__(self, speeds: dict | None = None):
        self.speeds = speeds  # model -> (train, eval) per second measured here (bench.budget), for the ETA

    def cluster(self) -> Cluster:
        return local_cluster()

    def run(self, plan: Plan, ctx, tracker) -> Iterator:
        schedule, eta, i = Schedule(plan), Eta([p.task.cell for p in plan.items], self.speeds), 0
        while (item := schedule.take()) is not None:
            i += 1
            log.info("cell %d/%d %s (ETA %.0f min)", i, len(plan), item.task.cell.run_name, eta.start(item.cell_id) / 60)
            t0 = time.perf_counter()
            res = run_task(item.task, ctx, tracker)
            if res.status == "finished":
                eta.finished(item.cell_id, time.perf_counter() - t0)
            log.info("  %s", res.line())
            schedule.done(item.cell_id, res.status, res.error)
            yield res


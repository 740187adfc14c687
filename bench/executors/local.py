"""The default executor: every cell in this process, one after the other, in plan order.

This is the behaviour from before executors existed (file-lock claims next to a SQLite
store, Ctrl-C marks the running cell KILLED), and it imports nothing of Ray.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

from bench.executors import Cluster, Executor, local_cluster
from bench.executors.estimate import estimate_seconds
from bench.executors.graph import Plan, Schedule
from bench.executors.worker import run_task

log = logging.getLogger("bench.driver")


class LocalExecutor(Executor):
    name = "local"
    remote = False

    def cluster(self) -> Cluster:
        return local_cluster()

    def run(self, plan: Plan, ctx, tracker) -> Iterator:
        schedule, t0, ran, i = Schedule(plan), time.perf_counter(), 0, 0
        while (item := schedule.take()) is not None:
            i += 1
            left = [p.task.cell for p in plan.items[i - 1:]]
            elapsed = time.perf_counter() - t0
            eta = elapsed / ran * len(left) if ran else sum(map(estimate_seconds, left))
            log.info("cell %d/%d %s (ETA %.0f min)", i, len(plan), item.task.cell.run_name, eta / 60)
            res = run_task(item.task, ctx, tracker)
            ran += res.status in ("finished", "failed")
            log.info("  %s", res.line())
            schedule.done(item.cell_id, res.status, res.error)
            yield res


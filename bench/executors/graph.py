"""The driver's plan: which cells run, what each asks for, and what waits for what.

A two-stage cell (``init_from``) depends on its source cell (``bench.config.source_cell``):
when the source has no FINISHED run, the source becomes a task of the plan, placed before
its first dependent, and the dependent waits for it. Everything else is independent. The
order of :attr:`Plan.items` is the suite's order with such sources inserted -- the order
the local executor runs cells in, exactly as before executors existed.
"""
from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

from bench.config import Cell, Suite, source_cell
from bench.errors import ConfigError
from bench.executors.resources import ResourcePolicy, Resources
from bench.executors.worker import CellTask
from bench.registry import did_you_mean

CHECKPOINT_POLICIES = {
    "all": "every cell keeps model.pt (bench shift and fine-tuning can use any run)",
    "needed": "only cells another cell starts from keep model.pt (bench shift cannot re-score the others)",
}


def checkpoint_policy(value: str | None, where: str = "--checkpoints") -> str:
    value = value or "all"
    if value not in CHECKPOINT_POLICIES:
        raise ConfigError(f"{where}: unknown value '{value}'{did_you_mean(value, list(CHECKPOINT_POLICIES))}; "
                          f"choose one of: {', '.join(CHECKPOINT_POLICIES)}")
    return value


@dataclass(frozen=True)
class PlannedCell:
    task: CellTask
    resources: Resources
    depends_on: str | None = None  # cell id of a planned cell that must end first

    @property
    def cell_id(self) -> str:
        return self.task.cell.cell_id


@dataclass(frozen=True)
class Plan:
    items: tuple[PlannedCell, ...]  # topological: a source always comes before its dependents

    def __len__(self) -> int:
        return len(self.items)

    def dependents(self, cell_id: str) -> list[PlannedCell]:
        return [p for p in self.items if p.depends_on == cell_id]

    def critical_path(self, seconds) -> tuple[float, list[PlannedCell]]:
        """Longest chain of dependent cells by ``seconds(planned_cell)``: no schedule is shorter."""
        finish: dict[str, tuple[float, list]] = {}
        for p in self.items:  # topological order: a dependency is already in `finish`
            before, chain = finish.get(p.depends_on, (0.0, []))
            finish[p.cell_id] = (before + seconds(p), [*chain, p])
        return max(finish.values(), key=lambda v: v[0], default=(0.0, []))


def needed_sources(suite: Suite, cells: list[Cell]) -> set[str]:
    """Cell ids some cell of ``cells`` starts from (its checkpoint must be kept)."""
    return {source_cell(suite.doc, suite.path, c).cell_id for c in cells if c.init_from}


def build_plan(suite: Suite, cells: list[Cell], finished: dict, *, rerun: bool, policy: ResourcePolicy,
               cluster_has_gpus: bool, checkpoints: str = "all", all_cells: list[Cell] | None = None) -> Plan:
    """Cells to run (not finished, or all with ``rerun``), with the unfinished sources they need.

    ``all_cells``: the whole suite (before ``--only``), for ``checkpoints: needed``.
    """
    keep = needed_sources(suite, all_cells if all_cells is not None else cells)
    items: dict[str, PlannedCell] = {}

    def add(cell: Cell) -> str:
        if cell.cell_id in items:
            return cell.cell_id
        source = source_cell(suite.doc, suite.path, cell) if cell.init_from else None
        depends = None
        if source is not None and (source.cell_id not in finished or source.cell_id in items):
            depends = add(source)
        task = CellTask(cell, source, save_checkpoint=checkpoints == "all" or cell.cell_id in keep)
        items[cell.cell_id] = PlannedCell(task, policy.request(cell, cluster_has_gpus), depends)
        return cell.cell_id

    for cell in cells:
        if rerun or cell.cell_id not in finished:
            add(cell)
    return Plan(tuple(items.values()))


class Schedule:
    """Which planned cells may start now: those whose dependency has ended, in plan order.

    A dependent is released whatever became of its source; when the source did not finish,
    the dependent carries the reason (``CellTask.source_status``) and the worker records it
    as a FAILED run naming the source.
    """

    def __init__(self, plan: Plan):
        self.index = {p.cell_id: i for i, p in enumerate(plan.items)}
        self.items = {p.cell_id: p for p in plan.items}
        self.waiting = {p.cell_id for p in plan.items if p.depends_on is not None}
        self.ready = [(self.index[p.cell_id], p.cell_id) for p in plan.items if p.depends_on is None]
        heapq.heapify(self.ready)
        self.running = 0

    def __bool__(self) -> bool:
        return bool(self.ready or self.waiting or self.running)

    def take(self) -> PlannedCell | None:
        if not self.ready:
            return None
        self.running += 1
        return self.items[heapq.heappop(self.ready)[1]]

    def done(self, cell_id: str, status: str, error: str = "") -> None:
        self.running -= 1
        ok = status in ("finished", "skipped", "claimed")  # claimed: the other process's run is looked up
        for cid in sorted(self.waiting, key=self.index.get):
            p = self.items[cid]
            if p.depends_on == cell_id:
                self.waiting.discard(cid)
                if not ok:
                    reason = status + (f": {error[:200]}" if error else "")
                    self.items[cid] = dataclasses.replace(p, task=dataclasses.replace(p.task, source_status=reason))
                heapq.heappush(self.ready, (self.index[cid], cid))

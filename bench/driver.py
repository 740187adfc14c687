"""Suite -> cells -> skip finished -> claim -> run -> summary.

Resumable by construction: a cell whose ``bench_cell_id`` has a FINISHED run in the
suite's experiment is skipped (one filtered query at start, and a re-check after the
claim), so an interrupted suite is finished by running the same command again.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from bench import data as D
from bench.config import Cell, Suite, load_suite, source_cell
from bench.errors import ConfigError
from bench.models import model_info
from bench.registry import did_you_mean
from bench.runner import CHECKPOINT, CellResult, load_checkpoint, run_one

log = logging.getLogger(__name__)

ONLY_KEYS = {"dataset": "dataset", "objective": "recipe", "recipe": "recipe", "aug": "aug", "seed": "seed",
             "protocol": "protocol", "fold": "fold", "model": "model"}


def data_fingerprint(data_root):
    """flag -> md5 of the file if present (cached), else the official md5 (ids stay stable)."""
    cache: dict = {}

    def fp(flag: str) -> str:
        if flag not in cache:
            spec = D.get_spec(flag)
            path = D.data_dir(data_root) / f"{flag}.npz"
            cache[flag] = D.file_md5(path) if path.is_file() else spec.md5
        return cache[flag]

    return fp


def parse_only(only: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for item in only:
        if "=" not in item:
            raise ConfigError(f"--only '{item}': expected KEY=VALUE, e.g. --only dataset=breastmnist")
        key, value = item.split("=", 1)
        if key not in ONLY_KEYS:
            raise ConfigError(f"--only: unknown key '{key}'{did_you_mean(key, list(ONLY_KEYS))}; known: {', '.join(ONLY_KEYS)}")
        out.append((ONLY_KEYS[key], value))
    return out


def select(cells: list[Cell], only: list[tuple[str, str]]) -> list[Cell]:
    def keep(c: Cell) -> bool:
        for attr, value in only:
            have = getattr(c, attr)
            if str(have).lower() != value.lower() and not (have is None and value.lower() in ("", "none")):
                return False
        return True

    # an --only value that matches nothing at all is almost always a typo
    for attr, value in only:
        present = {str(getattr(c, attr)).lower() for c in cells}
        if value.lower() not in present:
            raise ConfigError(f"--only {attr}={value} matches no cell{did_you_mean(value, sorted(present))}; values in this suite: {', '.join(sorted(present))}")
    return [c for c in cells if keep(c)]


# Measured on this project's reference machine (2 CPU cores, Zen4) with
# benchmarks/throughput.py and real cells: images or volumes per second (train, eval) in the
# precision actually used (2D bf16; 3D fp32, see bench.train.use_bf16). Estimates only.
CPU_SPEED = {
    "resnet18_28": (160.0, 470.0),
    "resnet18_3d": (2.1, 6.2),
    "resnet18_3d_s2": (14.3, 75.6),
    "resnet18_3d_tiny": (69.4, 314.6),
}


def estimate_seconds(cell: Cell) -> float:
    spec = D.get_spec(cell.dataset)
    n = spec.n_samples
    n_train = n["train"] if cell.protocol == "official" else int(0.8 * (n["train"] + n["val"]))
    n_val = n["val"] if cell.protocol == "official" else int(0.2 * (n["train"] + n["val"]))
    tr, ev = CPU_SPEED.get(cell.model, (50.0, 200.0))
    if model_info(cell.model).dims == 2 and spec.n_channels == 3:
        tr, ev = tr * 0.9, ev * 0.9
    per_epoch = n_train / tr + n_val / ev
    return cell.train.epochs * per_epoch + (n["test"] + n_val) / ev + 5


@dataclass
class Summary:
    suite: str
    results: list = field(default_factory=list)
    skipped: int = 0
    claimed: int = 0
    seconds: float = 0.0

    def counts(self) -> Counter:
        c = Counter(r.status for r in self.results)
        c["skipped"] += self.skipped
        c["claimed"] += self.claimed
        return c

    @property
    def failed(self) -> int:
        return self.counts()["failed"]

    def table(self) -> str:
        c = self.counts()
        return (f"suite {self.suite}: finished {c['finished']}, skipped {c['skipped']}, failed {c['failed']}, "
                f"not applicable {c['not_applicable']}, claimed by another process {c['claimed']} "
                f"({self.seconds / 60:.1f} min)")


def dry_run(suite: Suite, cells: list[Cell], finished: dict) -> str:
    rows, todo_s = [], 0.0
    for c in cells:
        done = c.cell_id in finished
        est = estimate_seconds(c)
        todo_s += 0 if done else est
        rows.append([c.cell_id, c.dataset, c.recipe, c.model, "on" if c.aug else "off", c.seed,
                     c.protocol + ("" if c.fold is None else f"/{c.fold}"), "finished" if done else "to run"])
    head = ["cell id", "dataset", "objective", "model", "aug", "seed", "fold", "status"]
    n_todo = sum(r[-1] == "to run" for r in rows)
    footer = (f"\n{len(cells)} cells, {len(cells) - n_todo} finished, {n_todo} to run; estimated "
              f"{todo_s / 3600:.1f} h on 2 CPU cores for the cells to run")
    if suite.runtime:
        footer += f"\nsuite file says: {suite.runtime}"
    return tabulate(rows, head, tablefmt="simple") + footer


class SuiteRunner:
    def __init__(self, suite: Suite, tracker, data_root=None, allow_unverified=None, rerun=False, progress=True):
        self.suite, self.tracker = suite, tracker
        self.data_root, self.allow_unverified = data_root, allow_unverified
        self.rerun, self.progress = rerun, progress
        self.after_test = None
        if suite.doc.get("shift"):  # score each selected model on corrupted test sets after its clean test
            from bench.shift.scoring import after_test, require_backends

            require_backends({c.dataset for c in suite.cells()})
            self.after_test = after_test
        self.parent = None
        self.done_this_invocation: set[str] = set()

    def _init_state(self, cell: Cell, summary: Summary) -> tuple[dict | None, str | None]:
        """The checkpoint of the finished ``init_from`` cell, running that cell first if needed."""
        if not cell.init_from:
            return None, None
        src = source_cell(self.suite.doc, self.suite.path, cell)
        run = self.tracker.finished_run(src.cell_id)
        if run is None:
            log.info("%s needs %s first: running it", cell.run_name, src.run_name)
            res = self.run_cell(src, summary)
            if res.status != "finished":
                raise ConfigError(f"{cell.run_name}: its init_from cell {src.run_name} did not finish ({res.status})")
            run = self.tracker.finished_run(src.cell_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = self.tracker.download_artifact(run.info.run_id, CHECKPOINT, Path(tmp))
            return load_checkpoint(path), run.info.run_id

    def run_cell(self, cell: Cell, summary: Summary) -> CellResult:
        if cell.cell_id in self.done_this_invocation:  # ran already, as another cell's init_from source
            return CellResult(cell.cell_id, cell.run_name, "skipped", error="ran earlier in this invocation")
        lock = self.tracker.cell_lock(cell.cell_id)
        if not lock.acquire():
            summary.claimed += 1
            return CellResult(cell.cell_id, cell.run_name, "claimed")
        try:
            # another invocation may have finished it between our first query and the claim
            if not self.rerun and self.tracker.finished_run(cell.cell_id) is not None:
                summary.skipped += 1
                return CellResult(cell.cell_id, cell.run_name, "skipped")
            try:
                init_state, init_src = self._init_state(cell, summary)
            except ConfigError as exc:  # its source cell failed: record this cell as FAILED too
                run = self.tracker.start_cell(cell, self.suite.name, self.parent.run_id if self.parent else None, lock)
                run.end("FAILED", "failed", str(exc))
                res = CellResult(cell.cell_id, cell.run_name, "failed", error=str(exc))
                summary.results.append(res)
                return res
            res = run_one(self.tracker, cell, self.suite.name, self.parent.run_id if self.parent else None, lock,
                          init_state=init_state, init_source=init_src, data_root=self.data_root,
                          allow_unverified=self.allow_unverified, progress=self.progress, after_test=self.after_test)
        finally:
            lock.release()
        self.done_this_invocation.add(cell.cell_id)
        summary.results.append(res)
        return res

    def run(self, cells: list[Cell], finished: dict) -> Summary:
        summary = Summary(self.suite.name)
        todo = [c for c in cells if self.rerun or c.cell_id not in finished]
        summary.skipped = len(cells) - len(todo)
        log.info("suite %s: %d cells, %d already finished, %d to run (experiment '%s', store %s)",
                 self.suite.name, len(cells), summary.skipped, len(todo), self.tracker.experiment_name,
                 self.tracker.uri)
        t0 = time.perf_counter()
        self.parent = self.tracker.start_parent(self.suite.name, {"bench_suite_file": str(self.suite.path),
                                                                  "bench_cells": len(cells)})
        status = "FINISHED"
        try:
            for i, cell in enumerate(todo, 1):
                elapsed = time.perf_counter() - t0
                ran = [r for r in summary.results if r.status in ("finished", "failed")]
                eta = (elapsed / len(ran) * (len(todo) - i + 1)) if ran else sum(map(estimate_seconds, todo[i - 1:]))
                log.info("cell %d/%d %s (ETA %.0f min)", i, len(todo), cell.run_name, eta / 60)
                res = self.run_cell(cell, summary)
                log.info("  %s", res.line())
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            summary.seconds = time.perf_counter() - t0
            c = summary.counts()
            try:
                self.parent.metrics({f"cells_{k}": v for k, v in c.items()})
                self.parent.end(status, "interrupted" if status == "KILLED" else "finished")
            except Exception:  # never mask the original error while closing the parent
                log.debug("could not close parent run", exc_info=True)
        return summary


def run_suite(name: str, *, rerun=False, only=(), max_cells=None, dry=False, data_root=None, allow_unverified=None,
              experiment=None, progress=True, leaderboard=True):
    from bench.tracking import Tracker  # the driver depends on tracking, never the reverse

    suite = load_suite(name)
    filters = parse_only(tuple(only))
    cells = select(suite.cells(data_fingerprint(data_root)), filters)
    if max_cells is not None:
        if max_cells < 1:
            raise ConfigError("--max-cells must be >= 1")
        cells = cells[:max_cells]
    tracker = Tracker(experiment or suite.experiment, reuse=suite.reuse)
    tracker.mark_stale()
    finished = tracker.finished_cells()
    if dry:
        return dry_run(suite, cells, finished)
    runner = SuiteRunner(suite, tracker, data_root, allow_unverified, rerun, progress)
    summary = runner.run(cells, finished)
    if suite.doc.get("ensembles"):
        from bench.ensemble import build_ensembles

        n = build_ensembles(tracker, suite.name, cells, runner.parent.run_id, data_root, allow_unverified)
        log.info("suite %s: %d seed ensemble(s) logged", suite.name, n)
    if leaderboard:
        try:
            from leaderboard.build import build_leaderboard

            build_leaderboard(suite.name, experiment=tracker.experiment_name, parent_run_id=runner.parent.run_id,
                              declared=suite)
        except Exception as exc:  # the leaderboard must never turn a good suite run red
            log.warning("leaderboard not regenerated: %s", exc)
    return summary

"""Suite -> cells -> plan -> executor -> summary.

Resumable by construction: a cell whose ``bench_cell_id`` has a FINISHED run in the
suite's experiment is left out of the plan (one filtered query at start), and the worker
re-checks after claiming the cell, so an interrupted suite is finished by running the same
command again. The driver builds the plan (``bench.executors.graph``: the cells to run, and
for two-stage cells the dependency on their source cell), opens the parent run, and hands
the plan to an executor (``bench.executors``: ``local`` in this process, ``ray`` on a
cluster); every executor runs a cell with the same code, ``bench.executors.worker.run_task``.

A ``search: {sampler: tpe}`` suite runs in rounds (:func:`_run_tpe`): each round asks every
searched family's Optuna study (``bench.tpe``) for its next trial, runs that trial's cells through
the same path as any cell, and tells the study their mean validation AUC.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from tabulate import tabulate

from bench import data as D
from bench import datafiles as F
from bench.config import Cell, Suite, load_suite
from bench.errors import ConfigError, TrackingError
from bench.executors import Executor
from bench.executors.estimate import estimate_seconds
from bench.hardware import usable_cpus
from bench.registry import did_you_mean

log = logging.getLogger(__name__)

ONLY_KEYS = {"dataset": "dataset", "objective": "recipe", "recipe": "recipe", "aug": "aug", "seed": "seed",
             "protocol": "protocol", "fold": "fold", "model": "model"}


def data_fingerprint(data_root):
    """(flag[, size]) -> md5 of the file if present (cached), else the official md5 (ids stay stable)."""
    cache: dict = {}

    def fp(flag: str, size: int = D.DEFAULT_SIZE) -> str:
        if (flag, size) not in cache:
            spec = D.get_spec(flag, size)
            path = F.data_dir(data_root) / spec.file_name
            cache[flag, size] = F.file_md5(path) if path.is_file() else spec.md5
        return cache[flag, size]

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
        rows.append([c.cell_id, c.dataset, c.recipe, c.model, c.aug, c.seed,
                     c.protocol + ("" if c.fold is None else f"/{c.fold}"), "finished" if done else "to run"])
    head = ["cell id", "dataset", "objective", "model", "aug", "seed", "fold", "status"]
    n_todo = sum(r[-1] == "to run" for r in rows)
    footer = (f"\n{len(cells)} cells, {len(cells) - n_todo} finished, {n_todo} to run; estimated "
              f"{todo_s / 3600:.1f} h on 2 CPU cores for the cells to run")
    if suite.runtime:
        footer += f"\nsuite file says: {suite.runtime}"
    from bench.search import describe  # search: one line per searched family and the budget line

    footer += "".join(f"\n{line}" for line in describe(suite.doc, suite.path))
    return tabulate(rows, head, tablefmt="simple") + footer


def power_report(suite: Suite, cells: list[Cell], pilot: str | None) -> str:
    """The dry run's power line (leaderboard.power): the primary endpoint's minimum detectable Δ."""
    if suite.analysis.primary is None:
        if pilot:
            raise ConfigError(f"--pilot: suite '{suite.name}' declares no analysis.primary, so there is no endpoint "
                              f"to state power for")
        return ""
    from leaderboard.power import power_line

    line = power_line(suite, cells, pilot)
    return "\n" + ("power: " + line.text() if line else "power: no pilot named (analysis.power.pilot or --pilot SUITE); "
                                            "the minimum detectable Δ is not stated")


def experiment_description(suite: Suite) -> str:
    """The experiment's description in the MLflow UI, from the suite file."""
    return (f"**{suite.name}**: {suite.description}\n\nRuntime: {suite.runtime}\n\nSuite file: `{suite.path.name}`; "
            f"leaderboard: `leaderboard/{suite.name}.md` (generated from these runs).")


def worker_context(suite: Suite, tracker, executor, parent_id: str | None, o: RunOptions):
    """What every task needs, explicit: remote workers do not inherit this process's environment."""
    from bench.claims import FileClaims
    from bench.executors.worker import WorkerContext
    from bench.provenance import code_digest
    from bench.tracking import http_retry_env

    claims = tracker.claims
    remote = executor.remote
    data_root, allow_unverified = o.data_root, o.allow_unverified
    if remote:  # the driver's data policy and folder travel with the task; the folder may not exist there
        allow_unverified = F.allow_unverified_default() if allow_unverified is None else allow_unverified
        data_root = str(F.data_dir(data_root)) if (data_root or os.environ.get("BENCH_DATA_DIR")) else None
    return WorkerContext(
        suite=suite.name, suite_path=str(suite.path), experiment=tracker.experiment_name, tracking_uri=tracker.uri,
        code_digest=code_digest(), reuse=tuple(tracker.reuse_names), plugins=tuple(suite.doc.get("plugins") or ()),
        parent_run_id=parent_id,
        claims_uri=str(claims.lock_dir) if isinstance(claims, FileClaims) else getattr(claims, "dsn", None),
        data_dir=data_root, data_dir_is_hint=remote, allow_unverified=allow_unverified, rerun=o.rerun,
        progress=o.progress and not remote, shift=bool(suite.doc.get("shift")), executor=executor.name,
        http_env=tuple(sorted(http_retry_env().items())), system_metrics=o.system_metrics,
        run_tags=_run_tags(o),
    )


def _run_tags(o: RunOptions) -> tuple:
    """Tags of every run of this invocation, parent and cells: a scaled suite says how it was scaled."""
    from bench.scaling import TAG

    return ((TAG, o.budget_tag),) if o.budget_tag else ()


def execute_plan(suite: Suite, plan, tracker, executor, n_cells: int, o: RunOptions) -> tuple[Summary, str]:
    """Open the parent run, let ``executor`` run ``plan``, close the parent; returns (summary, parent run id)."""
    summary = Summary(suite.name)
    log.info("suite %s: %d cells selected, %d task(s) to run, unfinished source cells included (experiment '%s', "
             "store %s, executor %s)", suite.name, n_cells, len(plan), tracker.experiment_name, tracker.uri,
             executor.name)
    t0 = time.perf_counter()
    tracker.context_tags.update(dict(_run_tags(o)))  # the parent and the cells run here
    parent = tracker.start_parent(suite.name, {"bench_suite_file": str(suite.path), "bench_cells": n_cells})
    status = "FINISHED"
    try:
        ctx = worker_context(suite, tracker, executor, parent.run_id, o)
        for res in executor.run(plan, ctx, tracker):
            if res.status == "claimed":
                summary.claimed += 1
            elif res.status == "skipped":
                summary.skipped += 1
            else:
                summary.results.append(res)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        summary.seconds = time.perf_counter() - t0
        c = summary.counts()
        try:
            parent.metrics({f"cells_{k}": v for k, v in c.items()})
            parent.end(status, "interrupted" if status == "KILLED" else "finished")
        except Exception:  # never mask the original error while closing the parent
            log.debug("could not close parent run", exc_info=True)
    return summary, parent.run_id


def plan_report(plan, tracker, suite: Suite, keep: set[str], workers, max_concurrent) -> str:
    """The dry run's storage line, and with ``workers`` the makespan plan (bench.executors.simulate)."""
    from bench.executors.simulate import makespan_report, storage_report

    text = storage_report(plan, keep)
    if workers is not None:
        text += "\n" + makespan_report(plan, tracker.measured_train_seconds(), workers, max_concurrent)
    return text


def make_executor(executor, address, max_concurrent, dry: bool, jobs: int | None = None, speeds: dict | None = None):
    """An executor from its name and options (None for a dry run, which only checks the name);
    an :class:`~bench.executors.Executor` instance is used as it is. ``speeds`` (measured by
    bench.budget) feed the sequential local executor's ETA."""
    from bench.executors import EXECUTORS, Executor

    if isinstance(executor, Executor):
        return executor
    factory = EXECUTORS.get(executor, where="--executor")  # a typo is an error even in a dry run
    options = {k: v for k, v in (("address", address), ("max_concurrent", max_concurrent)) if v is not None}
    if executor == "local" and options:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in options)}: only for --executor ray")
    if jobs is not None:
        if executor != "local":
            raise ConfigError("--jobs: only for --executor local (on Ray, --max-concurrent bounds the cells at once)")
        if jobs < 1:
            raise ConfigError("--jobs must be >= 1")
        options["jobs"] = jobs
    if executor == "local" and (jobs or 1) == 1 and speeds:
        options["speeds"] = speeds
    return None if dry else factory(**options)


@dataclass(frozen=True)
class RunOptions:
    """How to run a suite: built once (by the CLI, or from keywords) and read by everything below."""

    rerun: bool = False
    only: tuple = ()  # KEY=VALUE filters (--only)
    max_cells: int | None = None
    dry: bool = False
    data_root: str | None = None
    allow_unverified: bool | None = None
    experiment: str | None = None
    progress: bool = True
    leaderboard: bool = True
    executor: object = "local"  # a name in bench.executors.EXECUTORS, or an Executor instance
    address: str | None = None  # ray
    max_concurrent: int | None = None  # ray
    jobs: int | None = None  # local: cells at once in worker processes (bench.executors.pool)
    checkpoints: str | None = None
    workers: int | None = None  # dry run: the cluster to plan for
    gpus_per_worker: int | None = None
    cpus_per_worker: float | None = None
    system_metrics: bool = False
    pilot: str | None = None  # dry run: the suite whose runs give the power line's SD
    budget_minutes: float | None = None  # scale the suite's epochs to fit this many minutes here (bench.budget)
    budget_tag: str | None = None  # set by run_suite after bench.budget chose: recorded on the parent run
    budget_speeds: dict | None = None  # set with it: what bench.budget measured here (for the ETA)


def run_suite(name: str, options: RunOptions | None = None, **fields):
    """Run (or with ``options.dry`` plan) suite ``name``. ``fields`` are :class:`RunOptions` fields,
    for callers without an options value (tests, notebooks); they override ``options``."""
    o = dataclasses.replace(options or RunOptions(), **fields)
    if not o.dry and _is_tpe(name):
        return _run_tpe(name, o)
    return _run(name, o)


def _run(name: str, o: RunOptions, keep=None):
    """``keep``: a predicate on cells (after ``--only`` and ``--max-cells``): a tpe round's cells."""
    from bench.executors.graph import build_plan, checkpoint_policy, needed_sources
    from bench.executors.resources import check_requests, parse_resources
    from bench.tracking import (
        Tracker,  # the driver depends on tracking, never the reverse
    )

    rerun, dry, data_root, allow_unverified = o.rerun, o.dry, o.data_root, o.allow_unverified
    suite = load_suite(name)
    if o.budget_minutes is not None:  # fewer epochs where this machine is slow, said before anything runs
        from bench.budget import fit_budget
        from bench.scaling import tag_value

        suite, choice = fit_budget(suite, o.budget_minutes, data_fingerprint(data_root))
        o = dataclasses.replace(o, budget_tag=tag_value(choice, o.budget_minutes), budget_speeds=choice.speeds)
    filters = parse_only(tuple(o.only))
    all_cells = suite.cells(data_fingerprint(data_root))
    cells = select(all_cells, filters)
    if o.max_cells is not None:
        if o.max_cells < 1:
            raise ConfigError("--max-cells must be >= 1")
        cells = cells[:o.max_cells]
    if keep is not None:
        cells = [c for c in cells if keep(c)]
    policy = parse_resources(suite.doc.get("resources"), suite.path)
    keep = checkpoint_policy(o.checkpoints or suite.doc.get("checkpoints"),
                             "--checkpoints" if o.checkpoints else f"{suite.path}: checkpoints")
    ex = make_executor(o.executor, o.address, o.max_concurrent, dry, o.jobs, o.budget_speeds)
    tracker = Tracker(o.experiment or suite.experiment, reuse=suite.reuse, executor=ex.name if ex else o.executor,
                      description=experiment_description(suite), system_metrics=o.system_metrics)
    tracker.mark_stale()
    finished = tracker.finished_cells()
    other = tracker.other_code_cells({c.cell_id for c in cells} - set(finished))  # one query, not two
    other_note = (f"{other} of the selected cells have FINISHED runs of other code only (another bench_code_digest): "
                  "not reused, they run again; `bench leaderboard` still reads those runs (the newest of any code)"
                  if other else "")
    if other and not dry:
        log.warning(other_note)
    if dry:
        plan_for = _workers(o.workers, o.gpus_per_worker, o.cpus_per_worker)
        plan = build_plan(suite, cells, finished, rerun=rerun, policy=policy,
                          cluster_has_gpus=bool(plan_for and plan_for.gpus), checkpoints=keep, all_cells=all_cells)
        note = ""
        if plan_for and o.cpus_per_worker is None:
            from bench.executors.simulate import hold_largest_request

            plan_for, note = hold_largest_request(plan, plan_for)
        return (dry_run(suite, cells, finished) + "\n" + (other_note + "\n" if other else "") + note
                + plan_report(plan, tracker, suite, needed_sources(suite, all_cells), plan_for, o.max_concurrent)
                + power_report(suite, all_cells, o.pilot))
    if suite.doc.get("shift"):  # score each selected model on corrupted test sets after its clean test
        from bench.shift.scoring import require_backends

        require_backends({c.dataset for c in suite.cells()})
    with ex:
        ex.connect()  # before anything is recorded: a bad address or a missing extra is one line
        cluster = ex.cluster()
        if ex.remote:
            check_requests(cells, policy, cluster)
            ex.check_store(tracker)
        plan = build_plan(suite, cells, finished, rerun=rerun, policy=policy, cluster_has_gpus=cluster.gpus > 0,
                          checkpoints=keep, all_cells=all_cells)
        if keep == "needed":
            log.info("checkpoints: needed -- model.pt only for the %d cell(s) another cell starts from; `bench shift` "
                     "cannot re-score the others", sum(p.task.save_checkpoint for p in plan.items))
        log.info("runs table: %s", tracker.ui_url())
        summary, parent_id = execute_plan(suite, plan, tracker, ex, len(cells), o)
        planned = {p.cell_id for p in plan.items}
        summary.skipped += sum(c.cell_id not in planned for c in cells)
        if ex.remote:  # runs of workers that died for good (retries used up) must not stay RUNNING
            tracker.mark_stale()
    if suite.doc.get("ensembles"):
        from bench.ensemble import build_ensembles

        n = build_ensembles(tracker, suite.name, cells, parent_id, data_root, allow_unverified)
        log.info("suite %s: %d seed ensemble(s) logged", suite.name, n)
    if o.leaderboard:
        try:
            from leaderboard.build import build_leaderboard

            build_leaderboard(suite.name, experiment=tracker.experiment_name, parent_run_id=parent_id, declared=suite)
        except Exception as exc:  # the leaderboard must never turn a good suite run red
            log.warning("leaderboard not regenerated: %s", exc)
    return summary


def _workers(n, gpus, cpus):
    """The cluster a dry run plans for (``--workers``), or None (no makespan plan)."""
    from bench.executors.simulate import Workers

    if n is None and gpus is None and cpus is None:
        return None
    n = 1 if n is None else n
    if n < 1:
        raise ConfigError("--workers must be >= 1")
    return Workers(n, float(cpus or usable_cpus()), int(gpus or 0))


# --------------------------------------------------------------------------- search: {sampler: tpe}


def _is_tpe(name: str) -> bool:
    """Whether suite ``name`` declares ``search: {sampler: tpe}`` (read cheaply: no cells yet)."""
    from bench.suitefile import load_merged, suite_path

    search = load_merged(suite_path(name)).get("search")
    return isinstance(search, dict) and search.get("sampler") == "tpe"


def _tpe_families(suite: Suite) -> list:
    """The suite's tpe-searched families (``bench.search.Family``), as its study holds them now."""
    from bench.search import families

    return [f for f in families(suite.doc, suite.path, expanded=True) if f.sampler == "tpe"]


class _Shared(Executor):
    """One executor for every round of a tpe search: a Ray cluster or a worker pool is connected
    once, not once per round (each round's ``with ex:`` closes only this wrapper)."""

    def __init__(self, inner: Executor):
        self.inner, self.name, self.remote = inner, inner.name, inner.remote

    def connect(self) -> None:
        self.inner.connect()

    def check_store(self, tracker) -> None:
        self.inner.check_store(tracker)

    def cluster(self):
        return self.inner.cluster()

    def run(self, plan, ctx, tracker):
        return self.inner.run(plan, ctx, tracker)


def _run_tpe(name: str, o: RunOptions) -> Summary:
    """A tpe search: rounds, then the rest of the grid. Round ``t`` asks each family whose budget is
    not spent for trial ``t`` (unless its study holds it: a resumed search runs it with the stored
    parameters), runs the cells of those trials (every dataset and seed of the grid), and tells
    each study its trial's mean validation AUC. Every family gets its ``trials`` asks; a family
    whose trial cannot be scored (a cell failed) waits for the next invocation, since TPE's next
    proposal depends on that value."""
    from bench import tpe
    from bench.search import trial_names
    from bench.tracking import Tracker

    if o.max_cells is not None:
        raise ConfigError("--max-cells: a tpe search asks each trial from the results of the ones before, so it runs "
                          "whole trials; narrow it with --only, or run it to the end")
    suite = load_suite(name)
    fams = _tpe_families(suite)
    # MLflow opens (and if need be creates) the store before Optuna writes to it (bench.tpe)
    tracker = Tracker(o.experiment or suite.experiment, reuse=suite.reuse)
    url = tpe.storage_url(tracker.uri, f"{suite.path}: search.sampler")
    total, blocked = Summary(suite.name), set()
    trials = {r for f in fams for r in trial_names(f.recipe, f.trials)}
    with make_executor(o.executor, o.address, o.max_concurrent, False, o.jobs) as ex:
        rounds = dataclasses.replace(o, executor=_Shared(ex), leaderboard=False)
        for t in range(max(f.trials for f in fams)):
            due = [f for f in _tpe_families(load_suite(name)) if t < f.trials and f.recipe not in blocked]
            if not due:
                break
            for f in due:
                if f.asked <= t:
                    _ask(tracker, url, suite, f, t)
            names = {trial_names(f.recipe, f.trials)[t] for f in due}
            log.info("tpe round %d: %s", t + 1, ", ".join(sorted(names)))
            _merge(total, _run_round(name, rounds, tracker, names))
            suite = load_suite(name)
            blocked |= {f.recipe for f in due if not _tell(suite, tracker, url, f, t, o.data_root)}
        _merge(total, _run(name, dataclasses.replace(o, executor=_Shared(ex)), keep=lambda c: c.recipe not in trials))
    for recipe in sorted(blocked):
        log.warning("tpe: %s waits for a trial that could not be scored (a cell did not finish); run the same "
                    "command again to retry it and continue the search", recipe)
    return total


def _where(suite: Suite, f) -> str:
    return f"{suite.path}: search.space.{f.recipe}"


def _ask(tracker, url: str, suite: Suite, f, t: int, wait_s: float = 60.0) -> None:
    """Ask family ``f``'s study for trial ``t`` unless it holds it by now, under a claim on the study
    (``bench.claims``): two drivers of one suite never ask one trial twice."""
    from bench import tpe
    from bench.config import digest

    study, where = tpe.study_name(suite.name, f.recipe), _where(suite, f)
    deadline = time.monotonic() + wait_s
    while (claim := tracker.claim(f"tpe-{digest(study)}")) is None:  # held for a second or less
        if time.monotonic() > deadline:
            raise TrackingError(f"{where}: another process has held study '{study}' for {wait_s:.0f} s; "
                                f"is a driver of this suite stuck?")
        time.sleep(0.2)
    try:
        if len(tpe.stored_trials(url, study, f.dims, where)) <= t:
            tpe.ask(url, study, f.dims, f.seed, f.trials, where)
    finally:
        claim.release()


def _run_round(name: str, o: RunOptions, tracker, names: set) -> Summary:
    """The cells of this round's trials (after ``--only``), through the ordinary path; a round whose
    cells have all finished opens no parent run."""
    suite = load_suite(name)
    cells = [c for c in select(suite.cells(data_fingerprint(o.data_root)), parse_only(tuple(o.only)))
             if c.recipe in names]
    finished = tracker.finished_cells()
    if not o.rerun and all(c.cell_id in finished for c in cells):
        return Summary(suite.name, skipped=len(cells))
    return _run(name, o, keep=lambda c: c.recipe in names)


def _merge(total: Summary, part: Summary) -> None:
    total.results += part.results
    total.skipped += part.skipped
    total.claimed += part.claimed
    total.seconds += part.seconds


def _tell(suite: Suite, tracker, url: str, f, t: int, data_root) -> bool:
    """Tell family ``f``'s study the value of trial ``t`` unless it has one; False when it cannot be
    scored yet (a cell of the trial has no FINISHED run of this code)."""
    from bench import tpe
    from bench.search import trial_names

    study, where = tpe.study_name(suite.name, f.recipe), _where(suite, f)
    trial = tpe.stored_trials(url, study, f.dims, where)[t]
    if trial.state != "running":
        return True
    recipe = trial_names(f.recipe, f.trials)[t]
    value, missing = trial_value(tracker, [c for c in suite.cells(data_fingerprint(data_root)) if c.recipe == recipe])
    if missing:
        log.warning("tpe: %s has %d cell(s) without a FINISHED run; its value is not told", recipe, missing)
        return False
    tpe.tell(url, study, trial.number, None if math.isnan(value) else value, where)
    log.info("tpe: %s mean validation AUC %.4f told to %s", recipe, value, study)
    return True


def trial_value(tracker, cells: list[Cell]) -> tuple[float, int]:
    """(mean validation AUC of the cells' FINISHED runs, how many cells have none). Only ``val_auc``
    is read -- never a test metric -- so the search selects on validation alone; not-applicable
    cells have no AUC and are left out (NaN when no cell has one)."""
    finished = tracker.finished_cells()
    missing = sum(c.cell_id not in finished for c in cells)
    if missing:
        return math.nan, missing
    runs = [tracker.finished_run(c.cell_id) for c in cells]
    aucs = [r.data.metrics.get("val_auc") for r in runs if r is not None]
    aucs = [a for a in aucs if a is not None and math.isfinite(a)]
    return (sum(aucs) / len(aucs) if aucs else math.nan), 0

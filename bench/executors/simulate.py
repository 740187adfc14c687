"""Planning at scale (``bench suite NAME --dry-run --workers N [--gpus-per-worker G]``).

How long a suite takes on N workers, and how much artifact storage it needs -- before
renting anything. Durations come from the suite's own history where it exists (the mean
``train_seconds`` of FINISHED runs of the same group, i.e. the same config but another
seed or fold) and from ``bench.executors.estimate`` estimates otherwise. The makespan is a
greedy list schedule (longest remaining chain first) of the task graph on the declared
workers, packed by each cell's resource request; the report prints the critical path
and the work bound beside it, so the schedule can be judged.

Everything about GPUs here is an ASSUMPTION (:data:`GPU_SPEEDUP`), labelled as such in
the output: it was written without access to a GPU.
"""
from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass, replace

from bench import datasets as DS
from bench.executors.estimate import estimate_parts
from bench.executors.graph import Plan, PlannedCell
from bench.executors.resources import DEFAULTS, size_class

# ASSUMPTION (not measured; no GPU was available): speed of one cell on one data-centre GPU
# (A10G/L4 class) relative to the 2-core reference CPU of bench.executors.estimate. Small 28 px
# models are bound by per-step overheads, so they gain least; the paper's 3D model gains most.
GPU_SPEEDUP = {"2d": 15.0, "2d_large": 30.0, "3d_light": 20.0, "3d": 60.0}
REFERENCE_THREADS = 2  # the estimates and CPU measurements are for 2 threads
# Other artifacts of a cell: config.json, history.csv, ROC png (~40 KB) and two prediction
# CSVs (~25 bytes per sample and label). model.pt is computed from the network.
FIXED_ARTIFACT_BYTES = 60_000
BYTES_PER_PREDICTION = 25


@dataclass(frozen=True)
class Workers:
    n: int
    cpus: float
    gpus: int = 0


def hold_largest_request(plan: Plan, workers: Workers) -> tuple[Workers, str]:
    """Workers with at least the CPUs of the plan's largest cell request, and a line saying so
    when that changed them: a default taken from this machine's cores (a poor guess for a GPU
    node) must never plan a cluster on which some cells fit nowhere."""
    largest = max((p.resources.cpus for p in plan.items), default=0.0)
    if largest <= workers.cpus:
        return workers, ""
    note = (f"--cpus-per-worker not given: planning {largest:g} CPUs per worker (the largest cell request; "
            f"this machine has {workers.cpus:g})\n")
    return replace(workers, cpus=largest), note


@functools.lru_cache(maxsize=None)
def checkpoint_bytes(model: str, in_channels: int, outputs: int) -> int:
    """Size of a cell's ``model.pt`` (its state_dict), from the network built without memory."""
    import torch

    from bench.models import create_model

    with torch.device("meta"):
        net = create_model(model, in_channels, outputs)
    return sum(t.numel() * t.element_size() for t in net.state_dict().values()) + 20_000  # + pickle framing


def cell_checkpoint_bytes(cell) -> int:
    spec = DS.get_spec(cell.dataset, cell.size)
    return checkpoint_bytes(cell.model, spec.n_channels, spec.n_labels)


def artifact_bytes(cell, with_checkpoint: bool) -> int:
    spec = DS.get_spec(cell.dataset, cell.size)
    preds = (spec.n_samples["val"] + spec.n_samples["test"]) * spec.n_labels * BYTES_PER_PREDICTION
    return FIXED_ARTIFACT_BYTES + preds + (cell_checkpoint_bytes(cell) if with_checkpoint else 0)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def storage_report(plan: Plan, keep_needed: set[str]) -> str:
    """Artifact storage of the cells to run, with every checkpoint and with only the needed ones."""
    if not len(plan):
        return "storage: nothing to run"
    every = sum(artifact_bytes(p.task.cell, True) for p in plan.items)
    needed = sum(artifact_bytes(p.task.cell, p.cell_id in keep_needed) for p in plan.items)
    ckpt = {p.task.cell.model: cell_checkpoint_bytes(p.task.cell) for p in plan.items}
    sizes = ", ".join(f"{m} {_size(b)}" for m, b in sorted(ckpt.items()))
    kept = sum(p.cell_id in keep_needed for p in plan.items)
    return (f"storage for the {len(plan)} cells to run: {_size(every)} with --checkpoints all (model.pt: {sizes}); "
            f"{_size(needed)} with --checkpoints needed (model.pt kept for the {kept} cell(s) another cell starts from; "
            f"`bench shift` cannot re-score runs without model.pt)")


def cell_seconds(p: PlannedCell, measured: dict, gpu: bool) -> tuple[float, str]:
    """(seconds, how it was obtained) for one planned cell on a worker with or without GPUs."""
    cell = p.task.cell
    train, rest = estimate_parts(cell)
    by_device = measured.get(cell.group_id, {})
    speedup = GPU_SPEEDUP[size_class(cell)]
    if gpu and "cuda" in by_device:
        return by_device["cuda"] + rest / speedup, "measured on GPU"
    if "cpu" in by_device:
        t = by_device["cpu"] + rest
        return (t / speedup, "measured on CPU / assumed GPU speed-up") if gpu else (t * _thread_factor(p), "measured on CPU")
    t = train + rest
    return (t / speedup, "estimated / assumed GPU speed-up") if gpu else (t * _thread_factor(p), "estimated")


def _thread_factor(p: PlannedCell) -> float:
    """CPU time scales with threads up to the reference 2 (ASSUMPTION: linear)."""
    return max(1.0, REFERENCE_THREADS / max(p.resources.cpus, 1e-9))


def simulate(plan: Plan, seconds: dict[str, float], workers: Workers, max_concurrent: int | None = None) -> float:
    """Makespan of a greedy list schedule: ready cells, longest remaining chain first, on the first
    worker with room (CPUs, and a fraction of one GPU or whole GPUs)."""
    if not len(plan):
        return 0.0
    tail: dict[str, float] = {}
    for p in reversed(plan.items):  # longest chain from a cell to the end of the graph
        tail[p.cell_id] = seconds[p.cell_id] + max((tail[d.cell_id] for d in plan.dependents(p.cell_id)), default=0.0)
    cpu_free = [workers.cpus] * workers.n
    gpu_free = [[1.0] * workers.gpus for _ in range(workers.n)]
    deps = {p.cell_id: p.depends_on for p in plan.items}
    items = {p.cell_id: p for p in plan.items}
    ready = [(-tail[c], c) for c, d in deps.items() if d is None]
    heapq.heapify(ready)
    events: list = []  # (end time, cell id, worker, gpu slots)
    now, running, left = 0.0, 0, len(plan)

    def place(p: PlannedCell):
        need_c, need_g = p.resources.cpus, p.resources.gpus
        for w in range(workers.n):
            if cpu_free[w] + 1e-9 < need_c:
                continue
            if need_g == 0:
                return w, []
            if need_g <= 1:
                g = next((i for i, f in enumerate(gpu_free[w]) if f + 1e-9 >= need_g), None)
                if g is not None:
                    return w, [(g, need_g)]
            else:
                whole = [i for i, f in enumerate(gpu_free[w]) if f >= 1 - 1e-9][: int(need_g)]
                if len(whole) == int(need_g):
                    return w, [(i, 1.0) for i in whole]
        return None

    while left:
        waiting = []
        while ready and (max_concurrent is None or running < max_concurrent):
            key, cid = heapq.heappop(ready)
            spot = place(items[cid])
            if spot is None:
                waiting.append((key, cid))
                continue
            w, slots = spot
            cpu_free[w] -= items[cid].resources.cpus
            for g, f in slots:
                gpu_free[w][g] -= f
            heapq.heappush(events, (now + seconds[cid], cid, w, slots))
            running += 1
        for entry in waiting:
            heapq.heappush(ready, entry)
        if not events:  # nothing fits anywhere: a request larger than a worker
            return float("inf")
        now, cid, w, slots = heapq.heappop(events)
        running -= 1
        left -= 1
        cpu_free[w] += items[cid].resources.cpus
        for g, f in slots:
            gpu_free[w][g] += f
        for d in plan.dependents(cid):
            heapq.heappush(ready, (-tail[d.cell_id], d.cell_id))
    return now


def fits(r, workers: Workers) -> tuple[int, str]:
    """(cells of request ``r`` one worker runs at once, how a GPU is shared)."""
    by_cpu = math.floor(workers.cpus / r.cpus + 1e-9)
    if not r.gpus:
        return by_cpu, ""
    if r.gpus <= 1:
        per_gpu = math.floor(1 / r.gpus + 1e-9)
        return min(by_cpu, workers.gpus * per_gpu), f"{per_gpu} per GPU, "
    return min(by_cpu, workers.gpus // int(r.gpus)), f"{int(r.gpus)} GPUs each, "


def packing(plan: Plan, workers: Workers) -> str:
    parts = []
    for cls in DEFAULTS:
        for r in sorted({p.resources for p in plan.items if size_class(p.task.cell) == cls}, key=str):
            n, gpu = fits(r, workers)
            parts.append(f"{cls} cells ask {r}: {gpu}{n} per worker, {n * workers.n} at once")
    return "; ".join(parts)


def makespan_report(plan: Plan, measured: dict, workers: Workers, max_concurrent: int | None = None) -> str:
    gpu = workers.gpus > 0
    timed = {p.cell_id: cell_seconds(p, measured, gpu) for p in plan.items}
    seconds = {cid: s for cid, (s, _) in timed.items()}
    sources: dict[str, int] = {}
    for _, how in timed.values():
        sources[how] = sources.get(how, 0) + 1
    crit_s, chain = plan.critical_path(lambda p: seconds[p.cell_id])
    work = sum(seconds.values())
    too_big = sorted(str(r) for r in {p.resources for p in plan.items} if fits(r, workers)[0] < 1)
    span = simulate(plan, seconds, workers, max_concurrent) if not too_big else float("inf")
    out = [
        f"plan for {workers.n} worker(s) x ({workers.cpus:g} CPU" + (f", {workers.gpus} GPU" if gpu else "") + ")"
        + (f", at most {max_concurrent} cells at once" if max_concurrent else "") + ":",
        "  cell times: " + ", ".join(f"{n} {how}" for how, n in sorted(sources.items())) + " (measured = mean "
        "train_seconds of the group's FINISHED runs + scoring and start-up)",
        f"  packing: {packing(plan, workers)}",
        f"  critical path: {len(chain)} cell(s), {_hours(crit_s)}" + (f" ({' -> '.join(p.task.cell.run_name for p in chain)})"
                                                                     if 1 < len(chain) <= 4 else ""),
        f"  total work {_hours(work)}; " + (
            f"estimated makespan {_hours(span)} (greedy schedule, longest chain first; no schedule beats the critical path)"
            if not too_big else
            f"NO MAKESPAN: cells asking {', '.join(too_big)} fit on no worker of {workers.cpus:g} CPU"
            + (f" + {workers.gpus} GPU" if gpu else "") + "; plan with a larger --cpus-per-worker/--gpus-per-worker, "
            "or lower the suite's resources"),
    ]
    if gpu:
        out.append("  ASSUMPTIONS (not measured on a GPU): one cell on one GPU runs "
                   + ", ".join(f"{c} {x:g}x" for c, x in GPU_SPEEDUP.items())
                   + " faster than the 2-core reference CPU; cells sharing a GPU are assumed not to slow each other")
    else:
        out.append("  ASSUMPTION: each worker's CPUs are like the reference machine's; a cell with fewer than "
                   f"{REFERENCE_THREADS} CPUs runs proportionally slower")
    return "\n".join(out)

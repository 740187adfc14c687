"""``bench suite NAME --budget-minutes M``: fit a suite into a time budget on *this* machine.

The same suite takes 10 minutes on a CPU with AVX-512 BF16 and half an hour in fp32 on an AVX2
one (README, "Speed"). Rather than promise one figure, ``make run`` gives the default suite a
budget: it measures this machine's training and scoring throughput on the suite's models and
execution path (a few seconds per model, random data), estimates the suite with
:mod:`bench.executors.estimate`, and when the declared epochs do not fit it scales every epoch
budget (``train.epochs`` and ``finetune.epochs``, top level and per dataset) by one common factor
-- so CE and its fine-tunes keep their proportions and the LR schedule its fractions -- never
below the floors the suite declares::

    budget: {min_epochs: 12, min_finetune_epochs: 4}   # why these floors: a comment, with the measurement

It says what it measured and what it chose, in one log line, before any cell runs. The scaled
cells are ordinary cells with fewer epochs: their ids differ from the declared ones, so they never
pass for the declared suite's runs, and the leaderboard built at the end is of the cells that ran.
"""
from __future__ import annotations

import dataclasses
import logging
import time

from bench.errors import ConfigError
from bench.scaling import Floors, floors, scaled, seeds_of

log = logging.getLogger(__name__)

SCALES = [round(1.0 - 0.05 * i, 2) for i in range(20)]  # 1.0, 0.95, ..., 0.05: the factors tried, largest first
# The estimate aims at this share of the budget: per-cell start-up, artifacts and a busy machine are
# only roughly known (bench.executors.estimate), and the promise is the whole budget, not most of it.
SAFETY = 0.9


def measure_speed(model_name: str, n_channels: int, precision: str, path: str, seconds: float = 3.0) -> tuple[float, float]:
    """(training, scoring) images or volumes per second of ``model_name`` here, on the execution
    path a cell would take (batch 128 in 2D, 32 in 3D; one warm-up step first)."""
    import torch
    import torch.nn.functional as F

    from bench.catalog import model_info
    from bench.device import resolve_path
    from bench.evaluate import autocast
    from bench.models import as_input, load_model

    dims = model_info(model_name).dims
    xp = resolve_path(precision, path, None, dims)
    batch = 128 if dims == 2 else 32
    gen = torch.Generator().manual_seed(0)
    model = load_model(model_name, n_channels, 1, dims=dims, device=xp.device, channels_last=xp.channels_last)
    x = as_input(torch.rand(batch, n_channels, *([28] * dims), generator=gen).to(xp.device), xp.channels_last)
    y = torch.randint(0, 2, (batch, 1), generator=gen).float().to(xp.device)
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=xp.fused or None)

    def train_step():
        with autocast(xp.device, xp.bf16):
            out = model(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def eval_step():
        with autocast(xp.device, xp.bf16):
            model(x)

    def rate(step, share: float) -> float:
        step()  # warm-up: oneDNN picks and caches its kernels on the first call
        # the median of three windows: one window swung 46-61 img/s between runs on one machine
        rates = []
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - t0 < seconds * share / 3:
                step()
                n += batch
            if xp.device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(n / (time.perf_counter() - t0))
        return sorted(rates)[1]

    model.train()
    train = rate(train_step, 0.75)
    model.eval()
    return train, rate(eval_step, 0.25)


@dataclasses.dataclass(frozen=True)
class BudgetChoice:
    scale: float
    seeds: list | None  # the grid seeds kept (None: the suite has no seed list)
    seconds_declared: float
    seconds_chosen: float
    epochs: dict  # "train"/"finetune" -> top-level epochs chosen
    message: str
    doc: dict  # the suite document to run
    speeds: dict  # model -> (train, eval) per second measured here: the local executor's first ETA


def _candidates(doc: dict, fl: Floors):
    """(seeds kept, scale, document) from the declared suite down to its floors, largest first. Seeds go
    last: a seed less costs a third of a 3-seed suite at once, so every epoch scale above the floors is
    tried first; with one seed less the epochs start again from the declared ones, because epochs under
    the floors are what makes a number meaningless, and a seed less only widens its spread."""
    n = len(seeds_of(doc) or [None])
    for k in range(n, fl.seeds - 1, -1):
        last = None
        for s in SCALES:
            d = scaled(doc, s, fl.epochs, fl.finetune_epochs, k)
            if d != last:  # rounding and the floors make neighbouring scales the same suite
                yield k, s, d
            last = d


def choose(suite, minutes: float, speeds: dict, expand_cells) -> BudgetChoice:
    """The largest configuration whose estimate fits ``minutes``: the most seeds, then the largest epoch
    scale, never under the floors (see ``_candidates``). ``speeds``: model -> (train, eval) per second
    measured here; ``expand_cells(doc)`` -> the cells of a suite document."""
    from bench.executors.estimate import estimate_seconds

    if minutes <= 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {minutes}")
    fl = floors(suite)

    def seconds(doc):
        return sum(estimate_seconds(c, speeds) for c in expand_cells(doc))

    declared, limit = seconds(suite.doc), minutes * 60 * SAFETY
    chosen = None
    for k, s, doc in _candidates(suite.doc, fl):
        chosen = (k, s, doc, declared if doc == suite.doc else seconds(doc))
        if chosen[3] <= limit:
            break
    k, scale, doc, secs = chosen
    seeds = seeds_of(doc)
    epochs = {key: (doc.get(key) or {}).get("epochs") for key in ("train", "finetune")}
    rates = ", ".join(f"{m} {tr:.0f}/s training, {ev:.0f}/s scoring" for m, (tr, ev) in sorted(speeds.items()))
    what = " and ".join(f"{key} {v}" for key, v in epochs.items() if v is not None)
    if doc == suite.doc:
        msg = f"budget {minutes:g} min: measured {rates}; {suite.name} as declared ({what} epochs) needs ~{declared / 60:.0f} min: it fits"
    else:
        over = "" if secs <= limit else (f" -- still over the budget: the suite's floors (min_epochs {fl.epochs}, "
                                         f"min_finetune_epochs {fl.finetune_epochs}, min_seeds {fl.seeds}) come first")
        kept = "" if seeds == seeds_of(suite.doc) else f", seeds {seeds} of {seeds_of(suite.doc)}"
        msg = (f"budget {minutes:g} min: measured {rates}; {suite.name} as declared needs ~{declared / 60:.0f} min, "
               f"so it runs {what} epochs (x{scale:g}){kept}, ~{secs / 60:.0f} min{over}")
    return BudgetChoice(scale, seeds, declared, secs, epochs, msg, doc, speeds)


def fit_budget(suite, minutes: float, fingerprint, seconds_per_probe: float = 3.0):
    """``suite`` scaled to fit ``minutes`` here (or unchanged when it fits), and the choice made."""
    from bench import datasets as DS
    from bench.config import expand

    cells = suite.cells(fingerprint)
    speeds = {}
    for model in sorted({c.model for c in cells}):
        c = next(c for c in cells if c.model == model)  # its first cell's channels, precision and path
        speeds[model] = measure_speed(model, DS.get_spec(c.dataset).n_channels, c.train.precision, c.train.path,
                                      seconds_per_probe)
    choice = choose(suite, minutes, speeds, lambda doc: expand(doc, suite.path, fingerprint))
    log.info("%s", choice.message)
    return (suite if choice.doc == suite.doc else dataclasses.replace(suite, doc=choice.doc)), choice

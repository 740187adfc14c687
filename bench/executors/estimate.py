"""How long a cell takes: estimates from measured throughput, or a group's measured runs.

Estimates feed the ETA log lines, ``bench suite --dry-run`` and the makespan plan
(``bench.executors.simulate``).
"""
from __future__ import annotations

from bench import datasets as DS
from bench.catalog import model_info
from bench.config import Cell

# Measured on this project's reference machine (2 CPU cores, Zen4) with
# benchmarks/throughput.py and real cells: images or volumes per second (train, eval) in the
# precision actually used (2D bf16; 3D fp32, see bench.device.use_bf16). Estimates only.
CPU_SPEED = {
    "resnet18_28": (160.0, 470.0),
    "resnet18_3d": (2.1, 6.2),
    "resnet18_3d_s2": (14.3, 75.6),
    "resnet18_3d_tiny": (69.4, 314.6),
}
START_SECONDS = 5.0  # per cell: data load, model build, artifacts (measured: 3-6 s here)
# A real epoch is slower than bench.budget's probe of full batches on random data: the last partial
# batch, the validation pass, the checkpoint copy, logging and LibAUC's samplers (which oversample
# positives into longer epochs). Measured on `quick` in fp32 (AVX2 emulated on Zen 4): probe 61 img/s
# predicted 9.3 s per epoch; CE epochs took 10.5 s (x1.13), DualSampler fine-tunes 12 s (x1.28).
PROBE_TO_EPOCH = 1.2


def estimate_parts(cell: Cell, speeds: dict | None = None) -> tuple[float, float]:
    """(training incl. per-epoch validation, the rest: test scoring and start-up) in seconds on the
    reference CPU, or at ``speeds`` (model -> (train, eval) per second, measured here: bench.budget)."""
    spec = DS.get_spec(cell.dataset)
    n = spec.n_samples
    n_train = n["train"] if cell.protocol == "official" else int(0.8 * (n["train"] + n["val"]))
    n_val = n["val"] if cell.protocol == "official" else int(0.2 * (n["train"] + n["val"]))
    if speeds and cell.model in speeds:
        tr, ev = (v / PROBE_TO_EPOCH for v in speeds[cell.model])
    else:
        tr, ev = CPU_SPEED.get(cell.model, (50.0, 200.0))
        if model_info(cell.model).dims == 2 and spec.n_channels == 3:
            tr, ev = tr * 0.9, ev * 0.9
    per_epoch = n_train / tr + n_val / ev
    return cell.train.epochs * per_epoch, (n["test"] + n_val) / ev + START_SECONDS


def estimate_seconds(cell: Cell, speeds: dict | None = None) -> float:
    train, rest = estimate_parts(cell, speeds)
    return train + rest


class Eta:
    """Time left in a plan that runs one cell after another, for the driver's ETA lines.

    The estimates above are for the reference machine (or for ``speeds`` measured here by
    bench.budget); on another machine they are off by a common factor -- fp32 on an AVX2 CPU is
    several times slower than bf16 -- while their proportions (a 30-epoch CE cell against a
    4-epoch fine-tune) hold. So once a cell has finished, the estimates of the cells left are
    scaled by (seconds the finished cells took) / (their estimates). Counting cells instead, as
    this once did, promised 84 minutes after a long first cell of a 15-minute suite.
    """

    def __init__(self, cells, speeds: dict | None = None):
        self.estimate = {c.cell_id: estimate_seconds(c, speeds) for c in cells}
        self.started: set[str] = set()
        self.spent = self.spent_estimated = 0.0

    def start(self, cell_id: str) -> float:
        """Seconds left, ``cell_id`` and every cell not started yet included; marks it started."""
        left = sum(v for k, v in self.estimate.items() if k not in self.started)
        self.started.add(cell_id)
        return left * self.factor

    @property
    def factor(self) -> float:
        """How much slower (>1) or faster this machine runs than the estimates, from finished cells."""
        return self.spent / self.spent_estimated if self.spent_estimated > 0 and self.spent > 0 else 1.0

    def finished(self, cell_id: str, seconds: float) -> None:
        """A cell that ran to the end (skipped, claimed or failed cells say nothing about speed)."""
        self.spent += seconds
        self.spent_estimated += self.estimate.get(cell_id, 0.0)

"""The primary endpoint of a suite, as its ``analysis.primary`` declares it (bench.analysis).

One function turns units (leaderboard.aggregate.units) into the endpoint's pairs, so the
findings, the power line and the pilot SD of a later suite all use the same definition.
"""
from __future__ import annotations

import pandas as pd

from bench import catalog
from bench.analysis import DAM, Analysis
from leaderboard.aggregate import PAIR_KEYS, pair_diffs


def unit_column(metric: str, selection: str) -> str:
    """The unit column of ``metric`` for a candidate: ``ungated_<metric>`` for the ungated one."""
    return f"ungated_{metric}" if selection == "ungated" else metric


def endpoint_metric(a: Analysis) -> str:
    """The unit column the endpoint compares: ``ungated_<metric>`` when it is declared ungated."""
    return unit_column(a.primary.metric, a.primary.selection)


def arms(a: Analysis, recipes) -> list[tuple[str, str]]:
    """(treatment, control) pairs of recipes the endpoint compares, among ``recipes``."""
    p = a.primary
    present = set(recipes)
    treatments = [r for r in a.dam if r in present] if p.treatment == DAM else [p.treatment]
    out = []
    for t in treatments:
        c = a.matched_control(t) if p.control == "matched" else p.control
        if c and c in present and t in present:
            out.append((t, c))
    return out


def primary_pairs(units: pd.DataFrame, a: Analysis) -> pd.DataFrame:
    """One row per pair of the primary endpoint (each dataset's treatment against its control)."""
    metric = endpoint_metric(a)
    u = units[units["protocol"] == a.primary.protocol]
    if u.empty or metric not in u:
        return pd.DataFrame(columns=PAIR_KEYS + ["d", "treatment", "control"])
    frames = [pair_diffs(u, t, c, metric) for t, c in arms(a, u["recipe"].unique())]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIR_KEYS + ["d", "treatment", "control"])


def declared_pairs(cells, a: Analysis) -> int:
    """How many pairs the endpoint will have once every cell of ``cells`` has run."""
    keys = lambda c: (c.dataset, c.size, c.model, c.aug, c.seed)  # noqa: E731
    cells = [c for c in cells if c.protocol == a.primary.protocol]
    n = 0
    for t, ctl in arms(a, {c.recipe for c in cells}):
        n += len({keys(c) for c in cells if c.recipe == t} & {keys(c) for c in cells if c.recipe == ctl})
    return n


def describe(a: Analysis) -> str:
    p = a.primary
    treatment = "each dataset's DAM recipe" if p.treatment == DAM else f"`{p.treatment}`"
    control = "its sampler- and optimizer-matched control (the loss effect)" if p.control == "matched" else f"`{p.control}`"
    metric = f"test {catalog.metric(p.metric).short}"
    return f"Δ {metric} of {treatment} − {control}, {p.selection}, {p.protocol} split, pooled over datasets"

"""A suite document scaled to a time budget: the pure part of ``--budget-minutes`` (no torch).

bench.budget measures this machine and chooses a scale and the seeds to keep; this module turns
that choice into a suite document, and back from what the runs record (their ``bench_budget`` tag),
so the driver, ``bench leaderboard`` and a leaderboard rebuilt from a runs CSV all read the same cells.
"""
from __future__ import annotations

import copy
import dataclasses
import json

from bench.errors import ConfigError

TAG = "bench_budget"  # on the parent and cell runs of a scaled suite: {"minutes", "scale", "seeds"}


def _epoch_keys(doc: dict):
    """(settings dict, key) of every epoch budget in a suite document: train/finetune, top level and per dataset."""
    for key in ("train", "finetune"):
        if isinstance(doc.get(key), dict) and "epochs" in doc[key]:
            yield doc[key], key
        for over in (doc.get("datasets") or {}).values():
            if isinstance(over, dict) and isinstance(over.get(key), dict) and "epochs" in over[key]:
                yield over[key], key


@dataclasses.dataclass(frozen=True)
class Floors:
    """What ``--budget-minutes`` never goes below (the suite's ``budget:``)."""
    epochs: int
    finetune_epochs: int
    seeds: int  # grid seeds kept (the first ones); the declared count when the suite does not say


def floors(suite) -> Floors:
    """The suite's declared ``budget: {min_epochs, min_finetune_epochs, min_seeds}``; a suite without them cannot be scaled."""
    b = suite.doc.get("budget")
    if not isinstance(b, dict) or "min_epochs" not in b:
        raise ConfigError(f"{suite.path}: --budget-minutes needs the suite to declare its floors, e.g. "
                          "'budget: {min_epochs: 20, min_finetune_epochs: 5, min_seeds: 1}' (below them its numbers stop meaning what it says)")
    n_seeds = len(seeds_of(suite.doc) or [None])
    lo, lo_ft, lo_seeds = b["min_epochs"], b.get("min_finetune_epochs", 1), b.get("min_seeds", n_seeds)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (lo, lo_ft, lo_seeds)):
        raise ConfigError(f"{suite.path}: budget.min_epochs, budget.min_finetune_epochs and budget.min_seeds must be integers >= 1")
    return Floors(lo, lo_ft, min(lo_seeds, n_seeds))


def seeds_of(doc: dict) -> list | None:
    seeds = (doc.get("grid") or {}).get("seed")
    return seeds if isinstance(seeds, list) else None


def scaled(doc: dict, scale: float, lo: int, lo_ft: int, n_seeds: int | None = None) -> dict:
    """``doc`` with every epoch budget times ``scale`` (rounded), never below the floors nor above the declared
    value, and with only the first ``n_seeds`` seeds of its grid (all when None)."""
    out = copy.deepcopy(doc)
    for settings, key in _epoch_keys(out):
        declared = int(settings["epochs"])
        floor = lo if key == "train" else lo_ft
        settings["epochs"] = min(declared, max(floor, round(declared * scale)))
    if n_seeds is not None and seeds_of(out) is not None:
        out["grid"]["seed"] = out["grid"]["seed"][:n_seeds]
    return out


def tag_value(choice, minutes: float) -> str:
    """What the runs of a scaled suite record (``TAG``) from a ``bench.budget.BudgetChoice``: enough for
    :func:`reapply` to rebuild the same suite document; the tag's writer and reader live here together."""
    return json.dumps({"minutes": minutes, "scale": choice.scale, "seeds": choice.seeds})


def reapply(suite, value: str):
    """``suite`` as a ``--budget-minutes`` run recorded it (the ``bench_budget`` tag of its runs)."""
    try:
        rec = json.loads(value)
        scale, seeds = float(rec["scale"]), rec["seeds"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"suite {suite.name}: unreadable {TAG} tag {value!r} on its runs") from None
    fl = floors(suite)
    doc = scaled(suite.doc, scale, fl.epochs, fl.finetune_epochs, None if seeds is None else len(seeds))
    return suite if doc == suite.doc else dataclasses.replace(suite, doc=doc)

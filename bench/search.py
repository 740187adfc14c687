"""``search:``: declared hyperparameter search spaces with an equal budget per family.

A suite may declare, per recipe of its grid, a space of hyperparameters and a number of trials::

    search:
      trials: 8            # per family (recipe): every searched recipe gets the same number
      sampler: sobol       # sobol (default) | halton  (scipy.stats.qmc, scrambled with `seed`) | tpe
      seed: 0
      space:
        ce: {lr: {log_uniform: [1.0e-4, 1.0e-2]}, weight_decay: {log_uniform: [1.0e-6, 1.0e-3]}}
        aucm_ft: {lr: {log_uniform: [1.0e-3, 0.3]}, margin: {uniform: [0.5, 1.0]}}

:func:`expand_search` turns it, at load time and deterministically, into ordinary recipes: trial
``t`` of recipe ``R`` is the recipe ``R@t<t>`` (e.g. ``aucm_ft@t03``), i.e. ``R`` with the sampled
values as ``params`` overrides (a fine-tune recipe's trials keep its ``init_from``), and the grid's
``recipe`` axis lists the trials instead of ``R``. Trials are therefore plain cells: their ids hold
their hyperparameters, they resume, run on every executor and are one MLflow run each.

Distributions: ``log_uniform: [low, high]`` (low > 0; uniform in log space), ``uniform: [low, high]``,
``int_uniform: [a, b]`` (integers a..b inclusive, equally likely) and ``choice: [v1, v2, ..]``. One
recipe's dimensions are sorted by name, so the draw does not depend on the order of the YAML keys.

``sampler: tpe`` (Optuna's TPE; ``bench.tpe``) proposes each trial from the values of the ones
before, so it cannot be expanded here in full: a tpe family's trials are those its Optuna study
already holds (read from the tracking database, never written here), or -- before any -- its first
trial, which depends on no result. The driver asks the rest, one round at a time. The naming,
the recipes and the cells are the same as Sobol's.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from bench import schema as S
from bench.errors import ConfigError
from bench.registry import did_you_mean, unknown

SAMPLERS = ("sobol", "halton", "tpe")
KINDS = ("choice", "int_uniform", "log_uniform", "uniform")
DEFAULT_SAMPLER = "sobol"
DEFAULT_SEED = 0


class SearchSpec(BaseModel):
    """``search:`` (structure only; the values are checked in :func:`families`)."""

    model_config = S.STRICT
    trials: int | dict[str, int] = None  # required: checked in families
    sampler: str = None  # sobol | halton | tpe
    seed: int = None
    space: dict[str, dict[str, dict[str, list]]] = None  # recipe -> hyperparameter -> {kind: [..]}
    unequal_budget_reason: str = None  # required only when per-recipe trials differ


@dataclass(frozen=True)
class Family:
    """One searched recipe: its trials' names and sampled hyperparameters."""

    recipe: str
    trials: int
    sampler: str
    seed: int
    dims: tuple  # sorted (name, kind, values) triples
    names: tuple = ()  # the trial recipes, R@t00 .. (tpe: those in its study, or its first before any)
    params: tuple = ()  # per trial: {name: value}
    asked: int = 0  # tpe: trials in the study
    complete: int = 0  # tpe: ... of which have a value


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_dim(kind: str, values: list, where: str) -> None:
    if kind == "choice":
        if not values:
            raise ConfigError(f"{where}.choice needs at least one value")
        return
    if len(values) != 2 or not all(_number(v) for v in values):
        raise ConfigError(f"{where}.{kind} must be [low, high] (two numbers), got {values!r}")
    low, high = values
    if kind == "int_uniform" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}.int_uniform bounds must be integers, got {values!r}")
    if kind == "log_uniform" and min(low, high) <= 0:
        raise ConfigError(f"{where}.log_uniform: a log-uniform bound must be > 0, got {values!r}")
    if low >= high:
        raise ConfigError(f"{where}.{kind}: low must be < high, got {values!r}")


def _grid_recipes(doc: dict) -> list:
    blocks = [doc.get("grid")] + (doc.get("grids") if isinstance(doc.get("grids"), list) else [])
    out = []
    for block in blocks:
        if isinstance(block, dict) and isinstance(block.get("recipe"), list):
            out += [r for r in block["recipe"] if isinstance(r, str)]
    return list(dict.fromkeys(out))


def _objective_params(doc: dict, recipe: str, path: Path) -> tuple[str, list]:
    """The objective of ``recipe`` and its hyperparameter names."""
    from bench.objectives import OBJECTIVES  # layer 2; imported here so the module stays cheap to import

    spec = (doc.get("recipes") or {}).get(recipe)
    if isinstance(spec, dict):
        if "objective" not in spec:
            raise ConfigError(f"{path}: recipes.{recipe} needs 'objective' (one of {', '.join(OBJECTIVES.names())})")
        objective = spec["objective"]
    else:
        objective = recipe
    cls = OBJECTIVES.get(objective, where=f"{path}: recipes.{recipe}.objective")
    return objective, [f.name for f in dataclasses.fields(cls.Params)]


def _trial_counts(search: dict, space: dict, path: Path) -> dict:
    where = f"{path}: search.trials"
    trials = search.get("trials")
    if trials is None:
        raise ConfigError(f"{where} is required: the number of trials of every searched recipe (e.g. trials: 8)")
    counts = dict(trials) if isinstance(trials, dict) else {r: trials for r in space}
    for r in counts:
        if r not in space:
            raise ConfigError(f"{where}.{r}: '{r}' has no search space{did_you_mean(r, list(space))}; "
                              f"searched recipes: {', '.join(space)}")
    for r in space:
        if r not in counts:
            raise ConfigError(f"{where}: no trials for '{r}'; give every recipe of search.space a number")
    for r, n in counts.items():
        if n < 1:
            at = f"{where}.{r}" if isinstance(trials, dict) else where
            raise ConfigError(f"{at} must be >= 1, got {n}")
    if len(set(counts.values())) > 1 and not search.get("unequal_budget_reason"):
        shown = ", ".join(f"{r} {n}" for r, n in counts.items())
        raise ConfigError(f"{where}: unequal budgets ({shown}); give every family the same number of trials "
                          f"or say why in search.unequal_budget_reason")
    return counts


def families(doc: dict, path: Path, expanded: bool = False) -> list[Family]:
    """The searched recipes of ``doc`` (a merged suite document), validated and sampled; [] without ``search``.
    ``expanded``: ``doc`` is :func:`expand_search`'s result (its grid lists the trials, not the recipes)."""
    search = doc.get("search")
    if search is None:
        return []
    if not isinstance(search, dict):
        raise ConfigError(f"{path}: search must be a mapping (trials, sampler, seed, space), got {search!r}")
    sampler = search.get("sampler", DEFAULT_SAMPLER)
    if isinstance(sampler, str) and sampler not in SAMPLERS:
        raise unknown("sampler", sampler, SAMPLERS, where=f"{path}: search.sampler")
    if sampler == "tpe":
        from bench.tpe import require

        require(f"{path}: search.sampler")  # a missing extra first: every later message assumes it
    space = search.get("space")
    for recipe, dims in (space.items() if isinstance(space, dict) else ()):
        for name, dist in (dims.items() if isinstance(dims, dict) else ()):
            for kind in (dist if isinstance(dist, dict) else ()):
                if kind not in KINDS:
                    raise unknown("distribution kind", kind, KINDS, where=f"{path}: search.space.{recipe}.{name}")
    S.check(SearchSpec, search, str(path), ("search",))
    seed = search.get("seed", DEFAULT_SEED)
    if seed < 0:
        raise ConfigError(f"{path}: search.seed must be an integer >= 0, got {seed}")
    if not space:
        raise ConfigError(f"{path}: search.space is required and names no recipe; e.g. space: {{ce: {{lr: "
                          f"{{log_uniform: [1.0e-4, 1.0e-2]}}}}}}")
    counts = _trial_counts(search, space, path)
    in_grid = _grid_recipes(doc)
    out = []
    for recipe, dims in space.items():
        where = f"{path}: search.space.{recipe}"
        if not expanded and recipe not in in_grid:
            raise ConfigError(f"{where}: recipe '{recipe}' is not in the grid{did_you_mean(recipe, in_grid)}; "
                              f"grid recipes: {', '.join(in_grid)}")
        if not dims:
            raise ConfigError(f"{where} names no hyperparameter; e.g. {{lr: {{log_uniform: [1.0e-4, 1.0e-2]}}}}")
        objective, known = _objective_params(doc, recipe, path)
        checked = []
        for name in sorted(dims):
            if name not in known:
                raise ConfigError(f"{where}.{name}: '{name}' is not a hyperparameter of objective '{objective}'"
                                  f"{did_you_mean(name, known)}; its hyperparameters: {', '.join(known)}")
            dist = dims[name]
            if len(dist) != 1:
                raise ConfigError(f"{where}.{name} must give exactly one distribution (one of {', '.join(KINDS)}), "
                                  f"got {', '.join(dist) or 'none'}")
            (kind, values), = dist.items()
            _check_dim(kind, values, f"{where}.{name}")
            checked.append((name, kind, tuple(values)))
        n, dims = counts[recipe], tuple(checked)
        if sampler == "tpe":
            params, asked, complete = _tpe_params(doc, path, recipe, dims, n, seed)
        else:
            points = draw(n, len(dims), sampler, seed)
            params = tuple({name: _value(kind, values, u) for (name, kind, values), u in zip(dims, row)}
                           for row in points)
            asked = complete = 0
        out.append(Family(recipe, n, sampler, seed, dims, trial_names(recipe, n)[:len(params)], params, asked, complete))
    return out


def trial_names(recipe: str, n: int) -> tuple:
    """The recipes of ``recipe``'s ``n`` trials: ``R@t00`` .. (wider when ``n`` > 100)."""
    width = max(2, len(str(n - 1)))
    return tuple(f"{recipe}@t{t:0{width}d}" for t in range(n))


def _tpe_params(doc: dict, path: Path, recipe: str, dims: tuple, n: int, seed: int) -> tuple[tuple, int, int]:
    """A tpe family's trial parameters (those in its study, at most ``n``; before any, its first
    trial), how many trials the study holds and how many of them have a value."""
    from bench import tpe
    from bench.environ import tracking_uri

    where = f"{path}: search.space.{recipe}"
    url = tpe.storage_url(tracking_uri(), f"{path}: search.sampler")
    stored = tpe.stored_trials(url, tpe.study_name(doc.get("suite") or path.stem, recipe), dims, where)[:n]
    raw = [t.params for t in stored] or [tpe.first_trial(dims, seed, n, where)]
    params = tuple({name: _rounded(kind, values, r[name]) for name, kind, values in dims} for r in raw)
    return params, len(stored), sum(t.state == "complete" for t in stored)


def draw(n: int, d: int, sampler: str, seed: int) -> list[list[float]]:
    """``n`` scrambled quasi-random points in [0, 1)^d (scipy.stats.qmc)."""
    from scipy.stats import qmc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sobol with n not a power of 2: balance warning; the draw stays valid
        if sampler == "sobol":
            engine = qmc.Sobol(d, scramble=True, seed=seed)
            points = engine.random_base2(n.bit_length() - 1) if n & (n - 1) == 0 else engine.random(n)
        else:
            points = qmc.Halton(d, scramble=True, seed=seed).random(n)
    return points.tolist()


def _value(kind: str, values: tuple, u: float):
    if kind == "choice":
        return values[min(len(values) - 1, int(u * len(values)))]
    low, high = values
    if kind == "int_uniform":  # equally likely integers low..high
        return int(min(high, low + math.floor(u * (high - low + 1))))
    if kind == "log_uniform":
        x = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        x = low + u * (high - low)
    return _rounded(kind, values, x)


def _rounded(kind: str, values: tuple, x):
    """A sampled value as the trial's recipe holds it: floats to 6 significant digits (readable ids
    and params), within the bounds; a tpe trial's value (as Optuna proposed it) likewise."""
    if kind == "choice":
        return x
    low, high = values
    if kind == "int_uniform":
        return int(x)
    return float(min(high, max(low, float(f"{x:.6g}"))))


def expand_search(doc: dict, path: Path) -> dict:
    """``doc`` with each searched recipe replaced, in the grid, by its trial recipes (a new document)."""
    fams = families(doc, path)
    if not fams:
        return doc
    out = copy.deepcopy(doc)
    recipes = dict(out.get("recipes") or {})
    trials_of = {}
    for fam in fams:
        base = recipes.get(fam.recipe)
        base = base if isinstance(base, dict) else {"objective": fam.recipe}
        for t, (name, sampled) in enumerate(zip(fam.names, fam.params)):
            spec = copy.deepcopy(base)
            spec["params"] = {**(base.get("params") or {}), **sampled}
            spec["description"] = (f"{fam.recipe}, search trial {t} of {fam.trials} ({fam.sampler}, seed {fam.seed}): "
                                   + ", ".join(f"{k}={v}" for k, v in sampled.items()))
            recipes[name] = spec
        for over in (out.get("datasets") or {}).values():  # per-dataset overrides of R apply to its trials
            per = over.get("recipes") if isinstance(over, dict) else None
            if isinstance(per, dict) and isinstance(per.get(fam.recipe), dict):
                for name, sampled in zip(fam.names, fam.params):
                    spec = copy.deepcopy(per[fam.recipe])
                    spec["params"] = {**(spec.get("params") or {}), **sampled}
                    per[name] = spec
        trials_of[fam.recipe] = list(fam.names)
    out["recipes"] = recipes
    blocks = [out.get("grid")] + (out.get("grids") if isinstance(out.get("grids"), list) else [])
    for block in blocks:
        if isinstance(block, dict) and isinstance(block.get("recipe"), list):
            block["recipe"] = [t for r in block["recipe"] for t in trials_of.get(r, [r])]
    return out


def describe(doc: dict, path: Path) -> list[str]:
    """The dry run's lines for an expanded suite document (``Suite.doc``): one per searched family,
    then the budget line; [] without ``search``."""
    fams = families(doc, path, expanded=True)
    if not fams:
        return []
    lines = [_family_line(f) for f in fams]
    counts = {f.recipe: f.trials for f in fams}
    if len(set(counts.values())) == 1:
        lines.append(f"equal budget: every family {fams[0].trials} trials")
    else:
        shown = ", ".join(f"{r} {n}" for r, n in counts.items())
        lines.append(f"unequal budget ({shown}): {doc['search']['unequal_budget_reason']}")
    if fams[0].sampler == "tpe":
        lines.append("tpe asks each family's trials one at a time, from the validation AUC of the ones before: the "
                     "cells listed are those of the trials already in the study (a family with none: its first "
                     "trial), and running the suite asks the rest, round by round")
    return lines


def _family_line(f: Family) -> str:
    head = f"search: {f.recipe} {f.trials} {f.sampler} trials over {', '.join(d[0] for d in f.dims)} (seed {f.seed}"
    if f.sampler != "tpe":
        return head + ")"
    from bench.tpe import startup_trials

    return head + f", the first {startup_trials(f.trials)} random): {f.asked} in the study, {f.complete} with a value"


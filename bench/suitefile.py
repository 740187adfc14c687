"""Suite files on disk: where they live, ``include:`` chains, and the merged YAML document.

Torch-free (the leaderboard reads ``_base.yaml`` through it): turning the document into cells
is :mod:`bench.config`'s job.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import yaml

from bench.errors import ConfigError
from bench.registry import unknown

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def suites_dir() -> Path:
    return Path(os.environ.get("BENCH_SUITES_DIR", PROJECT_ROOT / "suites")).resolve()


def _load_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read suite file ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)  # safe: no python objects from a suite file
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML ({problem})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a suite file must be a mapping of keys, got {type(doc).__name__}")
    return doc


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def rename_grid_keys(doc: dict, path: Path) -> dict:
    """The grid axis of recipe names is ``recipe:``. Files written before it was named so say
    ``objective:`` (a misnomer: it held recipes, e.g. ``aucm_ft``); they load with one warning."""
    blocks = [doc.get("grid")] + (doc.get("grids") if isinstance(doc.get("grids"), list) else [])
    for i, block in enumerate(blocks):
        if isinstance(block, dict) and "objective" in block:
            where = "grid" if i == 0 else f"grids[{i - 1}]"
            if "recipe" in block:
                raise ConfigError(f"{path}: {where} has both 'recipe' and 'objective'; keep 'recipe' (the grid axis of "
                                  f"recipe names)")
            block["recipe"] = block.pop("objective")
            log.warning("%s: %s.objective is deprecated: call the axis 'recipe' (it lists recipe names)", path, where)
    return doc


def load_merged(path: Path, _seen: tuple = ()) -> dict:
    """Load ``path`` with its ``include:`` chain merged in (cycles are errors)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: include cycle ({' -> '.join(p.name for p in (*_seen, path))})")
    doc = rename_grid_keys(_load_yaml(path), path)
    includes = doc.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: 'include' must be a file name or a list of them")
    merged: dict = {}
    for inc in includes:
        inc_path = (path.parent / inc).resolve()
        if not inc_path.is_file() and (suites_dir() / inc).is_file():
            inc_path = (suites_dir() / inc).resolve()  # an outside suite including the benchmark's defaults
        if not inc_path.is_file():
            raise ConfigError(f"{path}: included file '{inc}' not found in {path.parent} or {suites_dir()}")
        merged = deep_merge(merged, load_merged(inc_path, (*_seen, path)))
    return deep_merge(merged, doc)


def available_suites() -> list[str]:
    return sorted(p.stem for p in suites_dir().glob("*.yaml") if not p.stem.startswith("_"))


def suite_path(name: str) -> Path:
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate.resolve()
    path = suites_dir() / f"{name}.yaml"
    if not path.is_file() or name.startswith("_"):
        raise unknown("suite", name, available_suites(), where=str(suites_dir()))
    return path

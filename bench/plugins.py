"""Plugins: outside objectives, models, datasets and augmentations, without forking ``bench/``.

A plugin is a Python module that registers with the same decorators the built-ins use
(``@OBJECTIVES.register``, ``register_model``, ``register_dataset``, ``AUGMENTATIONS.register``).
Two ways in:

* a suite's ``plugins:`` list: module names (``my_package.my_losses``) or ``.py`` files
  (relative to the suite file), imported before the suite is validated;
* Python entry points in the groups ``medauc_bench.objectives``, ``medauc_bench.models``,
  ``medauc_bench.datasets`` (an installed package declares them), loaded on first use.

Every loaded plugin module becomes part of the code digest (``bench.provenance``): its code
decides numbers just as the built-ins do.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from bench import provenance
from bench.errors import ConfigError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUPS = ("medauc_bench.objectives", "medauc_bench.models", "medauc_bench.datasets")
_loaded: dict[str, str] = {}  # spec as written -> module name


def _import_file(path: Path) -> str:
    name = f"bench_plugin_{path.stem}"
    if name in sys.modules:
        return name
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return name


def load_plugin(spec: str, base: Path | None = None, where: str = "") -> str:
    """Import one plugin (a module name or a .py path); returns the module name."""
    if spec in _loaded:
        return _loaded[spec]
    loc = f"{where}: " if where else ""
    try:
        if spec.endswith(".py"):
            path = (base / spec if base and not Path(spec).is_absolute() else Path(spec)).resolve()
            if not path.is_file():
                raise ConfigError(f"{loc}plugin file {spec} not found (looked at {path})")
            name = _import_file(path)
        else:
            importlib.import_module(spec)
            name = spec
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{loc}plugin '{spec}' cannot be imported ({exc}); install it or give a path to a .py file") from None
    except ConfigError:
        raise
    except Exception as exc:  # the plugin's own code failed: say which plugin and why, in one line
        raise ConfigError(f"{loc}plugin '{spec}' failed while loading ({type(exc).__name__}: {exc})") from None
    provenance.add_module(name)
    _loaded[spec] = name
    log.info("loaded plugin %s", spec)
    return name


def load_plugins(specs, suite_path: Path | None = None) -> list[str]:
    """A suite's ``plugins:`` list, then the installed entry points."""
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise ConfigError(f"{suite_path}: 'plugins' must be a list of module names or .py files")
    names = [load_plugin(s, suite_path.parent if suite_path else None, str(suite_path or "")) for s in specs]
    return names + load_entry_points()


def load_entry_points() -> list[str]:
    names = []
    for group in ENTRY_POINT_GROUPS:
        for ep in entry_points(group=group):
            names.append(load_plugin(ep.module, where=f"entry point {ep.name} ({group})"))
    return names

"""What one cell asks of a cluster: CPUs, and a fraction of a GPU where the cluster has GPUs.

Why per model size and not per cell: the cost of a cell is dominated by its network and
input size (a 28 px 2D ResNet-18 leaves most of a GPU idle, the paper's 3D ResNet-18 fills
one), so four classes cover every model. The defaults are data, in :data:`DEFAULTS`, and a
suite may override them with a ``resources:`` key::

    resources:
      cpus: 2                    # every class
      3d: {cpus: 4, gpus: 1}     # one class: 2d | 2d_large | 3d_light | 3d

A cluster without GPUs gets CPU-only requests from the defaults; a suite that *explicitly*
asks for GPUs there is an error (one line), never silently run on CPUs. Ray packs tasks by
these numbers: four 0.25-GPU cells share one GPU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bench.catalog import model_info
from bench.config import Cell
from bench.datasets import DEFAULT_SIZE
from bench.errors import ConfigError
from bench.registry import did_you_mean


@dataclass(frozen=True)
class Resources:
    """The request of one cell: ``cpus`` (also its torch threads) and ``gpus`` (0-1, or whole GPUs)."""

    cpus: float
    gpus: float = 0.0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def ray_options(self) -> dict:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}

    def __str__(self) -> str:
        return f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")


# The one place the defaults live. 2d: 28 px 2D models; 2d_large: 64-224 px (MedMNIST+);
# 3d_light: the CPU-sized 3D variants (stride-2 stem, half width); 3d: the paper's 3D models.
DEFAULTS: dict[str, Resources] = {
    "2d": Resources(cpus=1, gpus=0.25),
    "2d_large": Resources(cpus=2, gpus=0.5),
    "3d_light": Resources(cpus=2, gpus=0.25),
    "3d": Resources(cpus=4, gpus=1.0),
}
FIELDS = tuple(f.name for f in dataclasses.fields(Resources))


def size_class(cell: Cell) -> str:
    """The :data:`DEFAULTS` key of a cell: 2D/3D, light/paper model, 28 px or larger."""
    info = model_info(cell.model)
    if info.dims == 2:
        return "2d" if cell.size == DEFAULT_SIZE else "2d_large"
    return "3d" if info.paper_faithful else "3d_light"


@dataclass(frozen=True)
class ResourcePolicy:
    """Resolved requests per size class, and which classes the suite explicitly gave GPUs."""

    classes: tuple[tuple[str, Resources], ...]
    explicit_gpus: frozenset = frozenset()

    def request(self, cell: Cell, cluster_has_gpus: bool) -> Resources:
        r = dict(self.classes)[size_class(cell)]
        return r if cluster_has_gpus else dataclasses.replace(r, gpus=0.0)

    def asks_gpus(self, cell: Cell) -> bool:
        return size_class(cell) in self.explicit_gpus


def _number(value, where: str, path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: '{where}' must be a number, got {value!r}")
    return float(value)


def _fields(over, where: str, path) -> dict:
    if not isinstance(over, dict):
        raise ConfigError(f"{path}: '{where}' must be a mapping of {', '.join(FIELDS)}, got {over!r}")
    out = {}
    for key, value in over.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown key '{where}.{key}'{did_you_mean(key, FIELDS)}; known: {', '.join(FIELDS)}")
        out[key] = _number(value, f"{where}.{key}", path)
    if out.get("cpus", 1.0) <= 0:
        raise ConfigError(f"{path}: '{where}.cpus' must be > 0, got {out['cpus']:g}")
    gpus = out.get("gpus", 0.0)
    if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
        raise ConfigError(f"{path}: '{where}.gpus' must be a fraction in [0, 1] or a whole number of GPUs, got {gpus:g}")
    return out


def parse_resources(value, path: Path | str = "suite") -> ResourcePolicy:
    """A suite's ``resources:`` value (None = defaults) -> :class:`ResourcePolicy`; typos get a did-you-mean."""
    value = value or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: 'resources' must be a mapping, e.g. {{cpus: 2, 3d: {{gpus: 1}}}}, got {value!r}")
    known = [*FIELDS, *DEFAULTS]
    for key in value:
        if key not in known:
            raise ConfigError(f"{path}: unknown key 'resources.{key}'{did_you_mean(str(key), known)}; "
                              f"known: {', '.join(known)}")
    common = _fields({k: v for k, v in value.items() if k in FIELDS}, "resources", path)
    classes, explicit = [], set()
    for name, default in DEFAULTS.items():
        over = {**common, **_fields(value.get(name) or {}, f"resources.{name}", path)}
        if over.get("gpus", 0) > 0:
            explicit.add(name)
        classes.append((name, dataclasses.replace(default, **over)))
    return ResourcePolicy(tuple(classes), frozenset(explicit))


def check_requests(cells, policy: ResourcePolicy, cluster) -> None:
    """Fail before anything runs when the cluster cannot serve a request: GPUs the suite asks for
    explicitly on a cluster without any, or more than its largest node has (Ray would wait forever)."""
    for cell in cells:
        cls = size_class(cell)
        if policy.asks_gpus(cell) and cluster.gpus <= 0:
            raise ConfigError(f"the suite asks for GPUs ({cls} cells: resources gpus {dict(policy.classes)[cls].gpus:g}) "
                              f"but the Ray cluster at {cluster.address} has none; add GPU nodes or remove the gpus "
                              f"entries under 'resources:' to run on CPUs")
        r = policy.request(cell, cluster.gpus > 0)
        if r.cpus > cluster.max_node_cpus or r.gpus > cluster.max_node_gpus:
            raise ConfigError(f"{cell.run_name} asks for {r} but the largest node of the Ray cluster at {cluster.address} "
                              f"has {cluster.max_node_cpus:g} CPU + {cluster.max_node_gpus:g} GPU; lower resources.{cls} "
                              f"in the suite or add a larger node")

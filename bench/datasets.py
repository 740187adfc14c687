"""Dataset registry: one registration makes a dataset usable by data, models, suites and the
leaderboard.

The built-ins are declared as data in ``bench/datasets.yaml``; everything medmnist already
knows (task, label names, channels, split sizes, per-size MD5 and URL) is read from
``medmnist.INFO``. A plugin adds a dataset with :func:`register_dataset` -- by a flag of
``medmnist.INFO`` (e.g. ``register_dataset("dermamnist", dims=2, positive=...)``) or with its
own ``info`` dict of the same shape for data that medmnist does not ship.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.errors import ConfigError
from bench.registry import Registry, unknown

DATASETS: Registry = Registry("dataset")
DECLARATIONS = Path(__file__).with_name("datasets.yaml")
DIGEST_FILES = ("datasets.yaml",)  # part of the code digest (bench.provenance)
DEFAULT_SIZE = 28
MINORITY = "minority"


@dataclass(frozen=True)
class DatasetSpec:
    """What the benchmark needs to know about one dataset at one image size."""

    flag: str
    task: str  # "binary" or "multilabel"
    n_labels: int  # logits the model outputs: 1 for binary, 14 for ChestMNIST
    n_channels: int
    dims: int  # 2 or 3
    size: int  # image side in pixels/voxels
    md5: str  # official MD5 of the file at this size ("" when none is published)
    url: str
    n_samples: dict
    label_names: tuple
    positive: int | str  # clinically positive label (int) or "minority" (see datasets.yaml)
    positive_name: str
    positive_source: str
    shape_mask: bool = False
    sizes: tuple = (DEFAULT_SIZE,)
    builtin: bool = True

    @property
    def is_3d(self) -> bool:
        return self.dims == 3

    @property
    def file_name(self) -> str:
        """medmnist's naming: ``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` otherwise."""
        return f"{self.flag}.npz" if self.size == DEFAULT_SIZE else f"{self.flag}_{self.size}.npz"

    @property
    def image_shape(self) -> tuple:
        """Shape of one image as stored in the npz (without the sample axis)."""
        s = self.size
        if self.is_3d:
            return (s, s, s)
        return (s, s) if self.n_channels == 1 else (s, s, self.n_channels)


@dataclass(frozen=True)
class _Declared:
    dims: int
    positive: int | str
    positive_name: str
    positive_source: str
    shape_mask: bool
    sizes: tuple
    info: dict | None = field(default=None, compare=False)  # None: read medmnist.INFO[flag]
    builtin: bool = True


def register_dataset(flag: str, *, dims: int, positive: dict, sizes=(DEFAULT_SIZE,), shape_mask: bool = False,
                     info: dict | None = None, builtin: bool = False) -> None:
    """Register a dataset.

    Args:
        flag: the name used in suites and for the data file (``<flag>.npz``).
        dims: 2 or 3.
        positive: ``{label: <int> | 'minority', name: ..., source: ...}`` -- the clinically positive
            class for AUPRC/F1 and where that choice comes from.
        sizes: image sizes for which files exist.
        shape_mask: volumes are binary masks (enables ``train.voxel_scale``).
        info: a ``medmnist.INFO``-shaped dict (task, label, n_channels, n_samples, MD5[_size],
            url[_size]); omit it for a flag that medmnist knows.
    """
    where = f"dataset '{flag}'"
    if dims not in (2, 3):
        raise ConfigError(f"{where}: dims must be 2 or 3, got {dims!r}")
    if not isinstance(positive, dict) or "label" not in positive:
        raise ConfigError(f"{where}: positive must be a mapping with 'label' (an int or 'minority'), 'name' and 'source'")
    label = positive["label"]
    if not (label == MINORITY or (isinstance(label, int) and not isinstance(label, bool) and label in (0, 1))):
        raise ConfigError(f"{where}: positive.label must be 0, 1 or 'minority', got {label!r}")
    if info is None and not builtin:  # built-ins are medmnist's flags (a test checks): no torch at import
        import medmnist

        if flag not in medmnist.INFO:
            raise unknown("medmnist flag", flag, list(medmnist.INFO), where=f"{where} (pass info= for other data)")
    DATASETS.register(flag)(_Declared(dims, label, str(positive.get("name", label)), str(positive.get("source", "")),
                                      bool(shape_mask), tuple(int(s) for s in sizes), info, builtin))


def _load_builtins() -> None:
    for flag, d in yaml.safe_load(DECLARATIONS.read_text()).items():
        register_dataset(flag, dims=d["dims"], positive=d["positive"], sizes=d.get("sizes", (DEFAULT_SIZE,)),
                         shape_mask=d.get("shape_mask", False), builtin=True)


def _info(flag: str, decl: _Declared) -> dict:
    if decl.info is not None:
        return decl.info
    import medmnist  # only when a spec is needed

    return medmnist.INFO[flag]


def get_spec(flag: str, size: int = DEFAULT_SIZE) -> DatasetSpec:
    """The :class:`DatasetSpec` of a registered flag at ``size``; unknown flags get a did-you-mean."""
    decl: _Declared = DATASETS.get(flag)
    if size not in decl.sizes:
        raise ConfigError(f"dataset '{flag}' has no {size} px files; sizes: {', '.join(map(str, decl.sizes))}")
    info = _info(flag, decl)
    task = info["task"]
    if task == "binary-class":
        kind, n_labels = "binary", 1
    elif task.startswith("multi-label"):
        kind, n_labels = "multilabel", len(info["label"])
    else:
        raise ConfigError(f"dataset '{flag}': task '{task}' is not supported (binary or multi-label only)")
    suffix = "" if size == DEFAULT_SIZE else f"_{size}"
    return DatasetSpec(
        flag=flag, task=kind, n_labels=n_labels, n_channels=int(info["n_channels"]), dims=decl.dims, size=size,
        md5=info.get(f"MD5{suffix}", ""), url=info.get(f"url{suffix}", ""), n_samples=dict(info["n_samples"]),
        label_names=tuple(info["label"][k] for k in sorted(info["label"], key=int)),
        positive=decl.positive, positive_name=decl.positive_name, positive_source=decl.positive_source,
        shape_mask=decl.shape_mask, sizes=decl.sizes, builtin=decl.builtin,
    )


def dims_of(flag: str) -> int:
    """2 or 3, without reading medmnist (config validation uses it for every cell)."""
    return DATASETS.get(flag).dims


def names() -> list[str]:
    return DATASETS.names()


_load_builtins()

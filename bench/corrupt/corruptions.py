"""The registry of corruption sets: which dataset is scored on which corruptions, and building one.

``sets.yaml`` maps each dataset to a backend: MedMNIST-C's own 2D registry
(:mod:`bench.corrupt.medmnistc_compat`) or the TorchIO 3D transforms of ``corruptions3d.yaml``
(:mod:`bench.corrupt.torchio3d`). A dataset not listed there, or whose backend package is not
installed, has no corruption set; :func:`not_applicable_reason` says which and why, so a run
can record "not applicable" instead of failing.

Building is deterministic: image ``i`` of (flag, corruption, severity) is corrupted with
:func:`bench.corrupt.seeds.image_seed`, so the bytes do not depend on the order, the process
or the machine (given the library versions that :func:`versions` reports). Every image is
checked; a corruption that raises or returns the wrong shape or dtype stops the build with
:class:`~bench.errors.CorruptionFailed` naming it, its severity and the image index.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import yaml

from bench.corrupt import medmnistc_compat, torchio3d
from bench.corrupt.seeds import SCHEME, image_seed
from bench.errors import ConfigError, CorruptionFailed, MissingExtra, NotApplicable
from bench.registry import unknown

SETS_FILE = Path(__file__).with_name("sets.yaml")
SEVERITIES = (1, 2, 3, 4, 5)
# The distributions whose code decides the corrupted bytes, per backend: part of the cache key.
BACKEND_PACKAGES = {
    "medmnistc": ("medmnistc", "Wand", "numpy", "pillow", "opencv-python", "opencv-python-headless",
                  "scikit-image", "scipy", "torch", "torchvision"),
    "torchio": ("torchio", "numpy", "torch", "SimpleITK", "scipy"),
}


@lru_cache(maxsize=1)
def sets() -> dict:
    """``sets.yaml``: flag -> {backend, registry | exclude}."""
    data = yaml.safe_load(SETS_FILE.read_text())
    for flag, entry in data.items():
        if entry.get("backend") not in BACKEND_PACKAGES:
            raise ConfigError(f"{SETS_FILE}: {flag} has backend {entry.get('backend')!r}; "
                              f"expected one of {sorted(BACKEND_PACKAGES)}")
    return data


def corruption_set(flag: str) -> dict:
    """The ``sets.yaml`` entry of ``flag``; :class:`NotApplicable` when it has none."""
    entry = sets().get(flag)
    if entry is None:
        raise NotApplicable(f"{flag}: no corruption set is declared for this dataset in {SETS_FILE.name} "
                            f"(declared: {', '.join(sorted(sets()))})")
    return entry


def corruption_names(flag: str) -> list[str]:
    """The corruptions ``flag`` is scored on, in the backend's order.

    Raises :class:`NotApplicable` for a dataset without a corruption set and
    :class:`MissingExtra` when its backend package is not installed.
    """
    entry = corruption_set(flag)
    if entry["backend"] == "medmnistc":
        return list(medmnistc_compat.registry()[entry["registry"]])
    torchio3d.torchio()
    return [name for name in torchio3d.specs() if name not in entry.get("exclude", {})]


def not_applicable_reason(flag: str) -> str | None:
    """Why ``flag`` cannot be scored under shift here (one line), or None when it can."""
    try:
        corruption_names(flag)
    except (NotApplicable, MissingExtra) as exc:
        return str(exc)
    return None


def has_shift(flag: str) -> bool:
    return not_applicable_reason(flag) is None


def check(flag: str, corruption: str, severity: int) -> None:
    """ConfigError (with a did-you-mean) for an unknown corruption or a severity outside 1..5."""
    names = corruption_names(flag)
    if corruption not in names:
        raise unknown("corruption", corruption, names, where=flag)
    if severity not in SEVERITIES:
        raise ConfigError(f"{flag}: severity {severity!r} of corruption '{corruption}' is not one of "
                          f"{', '.join(map(str, SEVERITIES))}")


@contextmanager
def _corruptor(flag: str, corruption: str, severity: int) -> Iterator[Callable[[np.ndarray, int], np.ndarray]]:
    entry = corruption_set(flag)
    if entry["backend"] == "medmnistc":
        with medmnistc_compat.corruptor(entry["registry"], corruption, severity) as fn:
            yield fn
    else:
        with torchio3d.corruptor(corruption, severity) as fn:
            yield fn


def build_corrupted(flag: str, images_uint8: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    """``images_uint8`` (N, ...) in the npz layout, corrupted image by image; same shape, uint8."""
    check(flag, corruption, severity)
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ConfigError(f"{flag}: images to corrupt must be uint8 (the npz layout), got {images.dtype}")
    with _corruptor(flag, corruption, severity) as fn:
        seeds = [image_seed(flag, corruption, severity, i) for i in range(len(images))]
        return apply_each(flag, corruption, severity, images, fn, seeds)


def apply_each(flag: str, name: str, severity: int | None, images: np.ndarray,
               fn: Callable[[np.ndarray, int], np.ndarray], seeds, where: str = "test image") -> np.ndarray:
    """``fn(image, seed)`` over every image; any failure or a wrong shape/dtype is a
    :class:`CorruptionFailed` naming the corruption, severity and image index (never skipped)."""
    out = np.empty_like(images)
    for i, (img, seed) in enumerate(zip(images, seeds, strict=True)):
        try:
            res = np.asarray(fn(img, int(seed)))
        except Exception as exc:  # whatever the library raised, named and re-raised
            raise CorruptionFailed(flag, name, severity, i, f"{type(exc).__name__}: {exc}", where) from exc
        if res.shape != img.shape or res.dtype != np.uint8:
            raise CorruptionFailed(flag, name, severity, i,
                                   f"returned {res.dtype} {res.shape}, expected uint8 {img.shape}", where)
        out[i] = res
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _imagemagick_version() -> str | None:
    try:
        from wand.version import MAGICK_VERSION
    except (ImportError, OSError):
        return None
    return MAGICK_VERSION


def versions() -> dict:
    """Versions of everything that decides the corrupted bytes (None: not installed), to log with a run."""
    dists = sorted({d for ds in BACKEND_PACKAGES.values() for d in ds}, key=str.lower)
    out = {dist.lower(): _version(dist) for dist in dists}
    out["imagemagick"] = _imagemagick_version()
    return out


def corruption_digest(flag: str, corruption: str, severity: int) -> str:
    """sha256 naming one corruption's implementation: seed scheme, parameters and library versions.

    It keys the cache, so a changed parameter or an upgraded library never serves bytes built
    by the old one.
    """
    entry = corruption_set(flag)
    backend = entry["backend"]
    if backend == "medmnistc":
        params = repr(medmnistc_compat.registry()[entry["registry"]][corruption].severity_params[severity - 1])
    else:
        spec = torchio3d.specs()[corruption]
        params = repr((spec["transform"], spec["fixed"], spec["severity"][severity - 1]))
    libs = {d: _version(d) for d in BACKEND_PACKAGES[backend]}
    if backend == "medmnistc":
        libs["imagemagick"] = _imagemagick_version()
    key = {"scheme": SCHEME, "backend": backend, "flag": flag, "corruption": corruption,
           "severity": severity, "params": params, "libs": libs}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

"""TorchIO as the 3D corruption backend: the transforms of ``corruptions3d.yaml``.

TorchIO's ``Random*`` intensity transforms draw everything random from torch's global CPU
generator. Each volume runs inside ``torch.random.fork_rng`` seeded with its own seed, so
the draws are reproducible and the caller's torch stream is left exactly as it was.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import yaml

from bench.corrupt.threads import single_threaded
from bench.errors import ConfigError, MissingExtra

SPEC_FILE = Path(__file__).with_name("corruptions3d.yaml")
N_SEVERITIES = 5


@lru_cache(maxsize=1)
def specs() -> dict:
    """``corruptions3d.yaml``, checked: a transform name, ``fixed`` and five ``severity`` entries each."""
    data = yaml.safe_load(SPEC_FILE.read_text())
    for name, spec in data.items():
        missing = {"transform", "why", "fixed", "severity"} - set(spec)
        if missing:
            raise ConfigError(f"{SPEC_FILE}: corruption '{name}' lacks {sorted(missing)}")
        if len(spec["severity"]) != N_SEVERITIES:
            raise ConfigError(f"{SPEC_FILE}: corruption '{name}' has {len(spec['severity'])} severities, "
                              f"expected {N_SEVERITIES}")
    return data


def torchio():
    """The ``torchio`` module; :class:`MissingExtra` when it is not installed."""
    try:
        import torchio as tio
    except ImportError as exc:
        raise MissingExtra("torchio", exc) from None
    return tio


def _tuples(kwargs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def transform(name: str, severity: int):
    """The TorchIO transform of ``name`` at ``severity`` (1..5), built from the YAML as written."""
    spec = specs()[name]
    return getattr(torchio(), spec["transform"])(**_tuples(spec["fixed"]), **_tuples(spec["severity"][severity - 1]))


@contextmanager
def corruptor(name: str, severity: int) -> Iterator[Callable[[np.ndarray, int], np.ndarray]]:
    """Yields ``fn(volume_uint8, seed) -> volume_uint8`` applying ``name`` at ``severity``."""
    import torch

    tf = transform(name, severity)

    def fn(volume: np.ndarray, seed: int) -> np.ndarray:
        x = torch.from_numpy(volume.astype(np.float32)[None] / 255.0)  # (1, D, H, W): TorchIO's channel axis
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            y = np.asarray(tf(x))[0]
        return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)

    with single_threaded():
        yield fn

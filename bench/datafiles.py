"""MedMNIST data files: where they are, whether they are the official ones, what they hold.

Numpy only (no torch): the data location is resolved here, once, for the trainer, the driver,
``bench doctor`` and the leaderboard (which reads test labels for its hierarchical interval).
:mod:`bench.data` turns the arrays into tensors and protocols.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from bench.datasets import DEFAULT_SIZE, DatasetSpec, get_spec
from bench.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ALLOW_UNVERIFIED_ENV = "BENCH_ALLOW_UNVERIFIED_DATA"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (``--data-dir``) > ``$BENCH_DATA_DIR`` > medmnist's ``~/.medmnist``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("BENCH_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path("~/.medmnist").expanduser()


def allow_unverified_default() -> bool:
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def locate(spec: DatasetSpec, root: Path, download: bool = True) -> Path:
    """Path of the data file in ``root``; try medmnist's download when it is missing."""
    path = root / spec.file_name
    if path.is_file():
        return path
    reason = "download disabled"
    if download and not spec.url:
        reason = "no download URL is registered for it"
    elif download:
        try:
            from torchvision.datasets.utils import (
                download_url,  # what medmnist itself uses
            )

            root.mkdir(parents=True, exist_ok=True)
            log.info("%s not in %s: downloading from %s", path.name, root, spec.url)
            download_url(spec.url, root=str(root), filename=path.name, md5=spec.md5)
            if path.is_file():
                return path
            reason = "download produced no file"
        except Exception as exc:  # offline: urllib/requests errors of many kinds
            reason = f"download failed: {type(exc).__name__}"
            path.unlink(missing_ok=True)
    raise DataError(
        f"data file {path.name} not found in {root} ({reason}); copy the official MedMNIST "
        f"file there, or point --data-dir / BENCH_DATA_DIR at the folder that has it"
    )


def _md5_cache_path() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR", "~/.cache/medauc-bench")).expanduser() / "md5.json"


def file_md5(path: Path) -> str:
    """MD5 of a file, cached per (path, size, mtime) so a suite hashes each file once."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = _md5_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)  # atomic: concurrent suites never see half a file
    except OSError:
        pass  # a read-only home only costs us the cache
    return digest


def verify(spec: DatasetSpec, path: Path, allow_unverified: bool) -> tuple[str, bool]:
    """Return (actual md5, verified). A mismatch is an error unless explicitly allowed."""
    actual = file_md5(path)
    if actual == spec.md5:
        return actual, True
    official = f"the official {spec.md5}" if spec.md5 else "no official MD5 (none is registered)"
    msg = (
        f"{path}: MD5 {actual} does not match {official} for {spec.flag} at {spec.size} px; "
        f"use the official file, or opt in with --allow-unverified-data / {ALLOW_UNVERIFIED_ENV}=1"
    )
    if not allow_unverified:
        raise DataError(msg)
    log.warning("UNVERIFIED DATA: %s (runs are tagged data_verified=false)", msg.split(";")[0])
    return actual, False


def _read_npz(spec: DatasetSpec, path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise DataError(
            f"{path}: cannot read npz ({type(exc).__name__}: {exc}); the file is truncated or "
            f"damaged -- replace it with the official {spec.flag}.npz"
        ) from None
    expected = {f"{s}_{k}" for s in SPLITS for k in ("images", "labels")}
    missing = sorted(expected - set(arrays))
    if missing:
        raise DataError(
            f"{path}: wrong layout, missing keys {missing} (found {sorted(arrays)}); "
            f"expected the official MedMNIST keys {sorted(expected)}"
        )
    return arrays


def _check_split(spec: DatasetSpec, path: Path, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    where = f"{path}: {name}"
    if images.dtype != np.uint8:
        raise DataError(f"{where}_images has dtype {images.dtype}, expected uint8 (official layout)")
    if images.shape[1:] != spec.image_shape:
        raise DataError(
            f"{where}_images has shape {images.shape}, expected (N, {', '.join(map(str, spec.image_shape))})"
            f" for {spec.flag} at size {spec.size}"
        )
    if labels.ndim != 2 or labels.shape[1] != spec.n_labels:
        raise DataError(f"{where}_labels has shape {labels.shape}, expected (N, {spec.n_labels})")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}_labels has dtype {labels.dtype}, expected an integer type")
    if labels.size and (labels.min() < 0 or labels.max() > 1):
        raise DataError(
            f"{where}_labels has values in [{labels.min()}, {labels.max()}], expected 0/1 for a "
            f"{spec.task} task"
        )
    if images.shape[0] == 0:
        raise DataError(f"{where} is empty")


def read_arrays(flag: str, root: str | os.PathLike | None = None, *, size: int = DEFAULT_SIZE,
                allow_unverified: bool | None = None, download: bool = True):
    """Locate and verify ``flag``'s file, read and check its splits: (spec, path, md5, verified, arrays)."""
    spec = get_spec(flag, size)
    path = locate(spec, data_dir(root), download=download)
    if allow_unverified is None:
        allow_unverified = allow_unverified_default()
    md5, verified = verify(spec, path, allow_unverified)
    arrays = _read_npz(spec, path)
    for name in SPLITS:
        _check_split(spec, path, name, arrays[f"{name}_images"], arrays[f"{name}_labels"])
    return spec, path, md5, verified, arrays


def labels(flag: str, split: str, root: str | os.PathLike | None = None, size: int = DEFAULT_SIZE) -> np.ndarray:
    """The official labels (N, L) of one split."""
    return read_arrays(flag, root, size=size, download=False)[4][f"{split}_labels"]

"""Corrupted test sets built once per (dataset, corruption, severity) and kept as .npy files.

Scoring every finished model on every corrupted set would otherwise rebuild the same
arrays for each run. Layout::

    <cache_dir>/<flag>/<data_md5>/<corruption>_s<severity>_<impl>.npy
    <cache_dir>/<flag>/<data_md5>/<corruption>_s<severity>_<impl>.npy.sha256

``data_md5`` identifies the clean test images; ``impl`` is the first 16 hex digits of
:func:`~bench.corrupt.corruptions.corruption_digest` (parameters, seed scheme, library
versions), so an upgrade builds new files instead of serving stale ones. The ``.sha256``
file holds the sha256 of the array bytes and is verified on every read: a file that does
not match (damaged, truncated or edited) is logged and rebuilt. Both files are written to
a temporary name and renamed into place, so a concurrent reader sees the old file, the new
file or none -- never half of one; two processes that build the same set at once write
identical bytes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from bench.corrupt.corruptions import build_corrupted, check, corruption_digest
from bench.errors import ConfigError

log = logging.getLogger(__name__)

_DIGEST_RE = re.compile(r"[0-9a-fA-F]{8,64}")


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR/shift``, else ``~/.cache/medauc-bench/shift`` (read at call time)."""
    return Path(os.environ.get("BENCH_CACHE_DIR", "~/.cache/medauc-bench")).expanduser() / "shift"


def array_digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def cache_path(flag: str, data_md5: str, corruption: str, severity: int,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the set is (or will be) stored; validates the names that become path parts."""
    check(flag, corruption, severity)
    if not _DIGEST_RE.fullmatch(data_md5):
        raise ConfigError(f"{flag}: data_md5 {data_md5!r} is not a hex digest of the data file")
    impl = corruption_digest(flag, corruption, severity)[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / flag / data_md5.lower() / f"{corruption}_s{severity}_{impl}.npy"


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_verified(path: Path, shape: tuple) -> np.ndarray | None:
    """The cached array, or None (with a warning when a file exists but fails verification)."""
    digest_file = _digest_path(path)
    if not path.is_file() or not digest_file.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        log.warning("%s: unreadable (%s); rebuilding it", path, exc)
        return None
    recorded = digest_file.read_text().strip()
    if arr.dtype != np.uint8 or arr.shape != shape or array_digest(arr) != recorded:
        log.warning("%s: content does not match its recorded sha256 %s (or shape %s, dtype uint8): "
                    "damaged or edited; rebuilding it", path, recorded[:16], shape)
        return None
    return arr


def corrupted_test_set(flag: str, data_md5: str, test_images: np.ndarray, corruption: str, severity: int,
                       cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """``test_images`` (the clean split of the file with MD5 ``data_md5``) under ``corruption`` at
    ``severity``: read from the cache when present and verified, else built and stored."""
    test_images = np.asarray(test_images)
    path = cache_path(flag, data_md5, corruption, severity, cache_dir)
    arr = _read_verified(path, test_images.shape)
    if arr is not None:
        log.debug("shift cache hit: %s", path)
        return arr
    log.info("building %s %s severity %d (%d images) -> %s", flag, corruption, severity, len(test_images), path)
    arr = build_corrupted(flag, test_images, corruption, severity)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda f: np.save(f, arr, allow_pickle=False))
    _write_atomic(_digest_path(path), lambda f: f.write((array_digest(arr) + "\n").encode()))
    return arr

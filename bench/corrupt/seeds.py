"""Per-image seeds that are the same on every machine and in every process.

Python's ``hash()`` is salted per process, so seeds are derived from a sha256 of the
image's identity instead: (flag, corruption, severity, image index). Changing any one of
them gives an unrelated stream, and building one corruption never shifts the random
numbers of another, so sets can be built in any order or in parallel.
"""
from __future__ import annotations

import hashlib

SCHEME = "medauc-bench/shift/v1"  # part of every seed: bump it to re-draw every corrupted set


def image_seed(flag: str, corruption: str, severity: int, index: int) -> int:
    """A 32-bit seed (what ``numpy.random.RandomState`` and ``torch.manual_seed`` both take)."""
    key = f"{SCHEME}/{flag}/{corruption}/{severity}/{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")

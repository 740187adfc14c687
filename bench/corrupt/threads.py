"""Per-image corruption work runs on one torch thread.

A 28x28 image or a 28^3 volume is far too small to split across threads: with torch's
default (all cores) the thread hand-off dominates, and on a loaded 2-core machine TorchIO's
transforms ran 5-20x slower than on one thread (benchmarks/shift_build.py). The results do
not depend on the thread count (tests/test_shift.py builds with 1 and 2 threads and
compares bytes); the caller's setting is restored on exit.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def single_threaded() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Generalization under shift: score finished models on corrupted test sets.

The corruptions themselves are :mod:`bench.corrupt`'s (the same that ``aug: medmnistc`` trains
with). Here: corrupted test sets, deterministic and cached on disk (:mod:`bench.shift.cache`),
scoring a cell's selected model on them (:mod:`bench.shift.scoring`), and re-scoring finished
runs from their checkpoints (:mod:`bench.shift.posthoc`). The metric names are declared in
:mod:`bench.catalog`.
"""
from bench.shift.cache import corrupted_test_set, default_cache_dir

__all__ = ["corrupted_test_set", "default_cache_dir"]

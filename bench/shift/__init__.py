"""Generalization under shift: score finished models on corrupted test sets.

2D datasets use MedMNIST-C's own corruption registry (PyPI ``medmnistc``); 3D datasets use
TorchIO intensity transforms declared in ``corruptions3d.yaml``; ``sets.yaml`` says which
dataset gets which. Corrupted sets are deterministic and cached on disk
(:mod:`bench.shift.cache`); :func:`medmnistc_augment` is the matching training
augmentation. Importing this package is cheap: medmnistc and torchio are imported only
when a corruption is built, and their absence is a one-line error naming the extra.
"""
from bench.shift.augment import medmnistc_augment
from bench.shift.cache import corrupted_test_set, default_cache_dir
from bench.shift.corruptions import (
    SEVERITIES,
    build_corrupted,
    corruption_names,
    has_shift,
    not_applicable_reason,
    versions,
)
from bench.shift.metrics import metric_name, summarize

__all__ = [
    "SEVERITIES",
    "build_corrupted",
    "corrupted_test_set",
    "corruption_names",
    "default_cache_dir",
    "has_shift",
    "medmnistc_augment",
    "metric_name",
    "not_applicable_reason",
    "summarize",
    "versions",
]

"""Corruptions: data-level transforms of uint8 images, below both their users.

2D datasets use MedMNIST-C's own corruption registry (PyPI ``medmnistc``); 3D datasets use
TorchIO intensity transforms declared in ``corruptions3d.yaml``; ``sets.yaml`` says which
dataset gets which. Two layers use them and neither reaches into the other:
:mod:`bench.augment` trains with them (``aug: medmnistc``) and :mod:`bench.shift` scores
finished models on corrupted test sets built from them. Importing this package is cheap:
medmnistc and torchio are imported only when a corruption is built, and their absence is a
one-line error naming the extra.
"""
from bench.corrupt.corruptions import (
    SEVERITIES,
    build_corrupted,
    corruption_names,
    has_shift,
    not_applicable_reason,
    versions,
)

__all__ = ["SEVERITIES", "build_corrupted", "corruption_names", "has_shift", "not_applicable_reason", "versions"]

"""MedMNIST-C (PyPI ``medmnistc``) as the 2D corruption backend, made to run beside our pins.

medmnistc 0.1.0 is the field's own corruption library (Di Salvo et al. 2024): a registry
``CORRUPTIONS_DS[dataset][corruption]`` of corruption objects whose ``apply(img, severity)``
takes a PIL RGB image and a severity index 0..4, and an ``AugMedMNISTC`` training
augmentation. We call that code as it is and fix only what breaks here, inside this module:

* **numpy 2.** ``MotionBlur`` decodes ImageMagick's output with ``np.fromstring(bytes,
  np.uint8)``, whose binary mode numpy 2 removed (``ValueError``). medmnistc's modules see a
  numpy view whose ``fromstring`` does what numpy 1 did: ``frombuffer(...).copy()``.
* **28x28 greyscale.** ``MotionBlur`` decodes with ``cv2.IMREAD_UNCHANGED`` and tells RGB
  from greyscale by ``img.shape != (224, 224)``: correct only at 224 px. ImageMagick writes a
  grey PNG for grey content, so at 28 px the RGB branch indexes *columns* and returns
  (28, 3). Its modules see a cv2 view that always decodes to 3-channel BGR
  (``IMREAD_COLOR``), which is what that branch expects.
* **Global random state.** medmnistc draws from ``np.random.*`` and ``random.*`` (module
  globals). Its modules see ``np.random`` / ``random`` bound to a private ``RandomState`` /
  ``random.Random`` that we reseed per image, so results are deterministic and the
  process-wide numpy and random streams are never read, seeded or advanced.

The views are bound into medmnistc's already-imported modules only for the duration of
:func:`patched` (under a lock) and unbound afterwards: numpy, cv2 and random themselves are
never modified. Its pins (medmnist==3.0.1, scikit-image==0.23.2) are not needed: it uses
neither medmnist API nor anything of scikit-image that changed up to 0.26.
"""
from __future__ import annotations

import copy
import random
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from bench.corrupt.threads import single_threaded
from bench.errors import MissingExtra

_LOCK = threading.Lock()  # the views are module globals of medmnistc: one user at a time


def registry() -> dict:
    """medmnistc's ``CORRUPTIONS_DS``; :class:`MissingExtra` when medmnistc or Wand's
    ImageMagick library cannot be imported (Wand raises ImportError for the latter)."""
    try:
        from medmnistc.corruptions.registry import CORRUPTIONS_DS
    except (ImportError, OSError) as exc:
        raise MissingExtra("medmnistc", exc) from None
    return CORRUPTIONS_DS


def is_rgb(key: str) -> bool:
    """Whether medmnistc keeps ``key``'s corrupted images in RGB (else it converts them to L)."""
    from medmnistc.corruptions.registry import DATASET_RGB

    return bool(DATASET_RGB[key])


def augmenter(key: str):
    """medmnistc's own ``AugMedMNISTC`` over ``key``'s corruption registry."""
    corruptions = registry()[key]
    try:
        from medmnistc.augmentation import AugMedMNISTC
    except ImportError as exc:
        raise MissingExtra("medmnistc", exc) from None
    return AugMedMNISTC(corruptions)


class _RandomView:
    """``np.random`` for medmnistc: draws come from ``state``; the rest is numpy.random."""

    def __init__(self, state: np.random.RandomState):
        self._state = state

    def __getattr__(self, name: str):
        return getattr(self._state, name) if hasattr(self._state, name) else getattr(np.random, name)


class _NumpyView:
    """``np`` for medmnistc: numpy with a private ``random`` and numpy 1's binary ``fromstring``."""

    def __init__(self, state: np.random.RandomState):
        self.random = _RandomView(state)

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def fromstring(string, dtype=float, count=-1, *, sep=""):
        if sep:
            return np.fromstring(string, dtype=dtype, count=count, sep=sep)
        return np.frombuffer(string, dtype=dtype, count=count).copy()


class _Cv2View:
    """``cv2`` for medmnistc: ``imdecode`` always returns 3-channel BGR (see module doc)."""

    def __init__(self, cv2_module):
        self._cv2 = cv2_module

    def __getattr__(self, name: str):
        return getattr(self._cv2, name)

    def imdecode(self, buf, flags):
        return self._cv2.imdecode(buf, self._cv2.IMREAD_COLOR)


@contextmanager
def patched() -> Iterator[Callable[[int], None]]:
    """Bind the views into medmnistc's modules; yields ``reseed(seed)`` for the next image.

    Also runs on one torch thread (torchvision's blur and gamma), see :mod:`bench.corrupt.threads`.
    """
    import cv2

    registry()  # import every corruption module before binding into them
    state, rnd = np.random.RandomState(0), random.Random(0)
    views = {"np": (np, _NumpyView(state)), "random": (random, rnd), "cv2": (cv2, _Cv2View(cv2))}

    def reseed(seed: int) -> None:
        state.seed(seed)
        rnd.seed(seed)

    with _LOCK, single_threaded():
        saved = []
        for name, module in list(sys.modules.items()):
            if module is None or not (name == "medmnistc" or name.startswith("medmnistc.")):
                continue
            for attr, (real, view) in views.items():
                if getattr(module, attr, None) is real:
                    saved.append((module, attr, real))
                    setattr(module, attr, view)
        try:
            yield reseed
        finally:
            for module, attr, real in saved:
                setattr(module, attr, real)


def _to_pil_rgb(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img).convert("RGB")  # medmnistc's corruptions take RGB, as its DatasetManager feeds them


def _from_output(out, key: str) -> np.ndarray:
    """Back to our layout as medmnistc's DatasetManager does: 'L' unless the dataset is RGB."""
    from PIL import Image

    out = np.asarray(out)
    if not is_rgb(key):
        out = np.asarray(Image.fromarray(out).convert("L"))
    return out


@contextmanager
def corruptor(key: str, name: str, severity: int) -> Iterator[Callable[[np.ndarray, int], np.ndarray]]:
    """Yields ``fn(image_uint8, seed) -> image_uint8`` applying ``name`` at ``severity`` (1..5)."""
    corruption = copy.copy(registry()[key][name])  # a copy: we set its rng, the registry stays untouched
    with patched() as reseed:

        def fn(img: np.ndarray, seed: int) -> np.ndarray:
            reseed(seed)
            # ImpulseNoise reads self.rng (medmnistc's DatasetManager sets it); the others ignore it.
            corruption.rng = np.random.default_rng(seed)
            return _from_output(corruption.apply(_to_pil_rgb(img), severity - 1), key)

        yield fn


@contextmanager
def augmentation(key: str) -> Iterator[Callable[[np.ndarray, int], np.ndarray]]:
    """Yields ``fn(image_uint8, seed) -> image_uint8``: one ``AugMedMNISTC`` draw per call."""
    aug = augmenter(key)
    with patched() as reseed:

        def fn(img: np.ndarray, seed: int) -> np.ndarray:
            reseed(seed)
            return _from_output(aug(_to_pil_rgb(img)), key)

        yield fn

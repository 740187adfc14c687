"""Batch augmentation on float tensors, on the batch's device, deterministic under a torch.Generator.

Augmenting whole batches with one ``affine_grid``/``grid_sample`` call costs ~1 ms per
batch on CPU, versus a per-sample PIL pipeline that would dominate a 28x28 training step; on
a GPU the batch never leaves the device (the generator lives there too).

2D: horizontal flip (p=0.5), rotation U(-15, 15) degrees, scale U(0.9, 1.1), translation
U(-2, 2) pixels. 3D: flips along each axis (p=0.5 each), rotation U(-10, 10) degrees
about the first (axial) axis, scale U(0.9, 1.1), translation U(-2, 2) voxels. Borders
are padded by replication so no artificial black frame appears. Translations are in pixels
of a 28 px image and scale with the image size.

Suites name an augmentation in ``grid.aug``: ``off`` (false), ``on`` (true) or ``medmnistc``
(the standard augmentation plus a random MedMNIST-C corruption per image, for
corruption-aware training; needs the ``shift`` extra; the corruptions are :mod:`bench.corrupt`'s,
the same that build the corrupted test sets). ``AUGMENTATIONS`` is a registry, so a
plugin can add its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from bench.corrupt import medmnistc_compat
from bench.corrupt.corruptions import apply_each, corruption_set
from bench.errors import ConfigError
from bench.registry import Registry

AUGMENTATIONS: Registry = Registry("augmentation")


@dataclass(frozen=True)
class Augmentation:
    """``batch(x_float, g, is_3d)`` on scaled float batches; ``raw(x_uint8, rng, flag)`` (optional)
    on the stored uint8 images before scaling, for corruptions defined on pixel values."""

    batch: Callable[[torch.Tensor, torch.Generator, bool], torch.Tensor] | None
    raw: Callable | None = None
    description: str = ""


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def augment_2d(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    angle = _uniform(n, -15, 15, g, dev) * math.pi / 180
    s = _uniform(n, 0.9, 1.1, g, dev)
    flip = torch.where(torch.rand(n, generator=g, device=dev) < 0.5, -1.0, 1.0)
    shift = _uniform(2 * n, -2 / 14, 2 / 14, g, dev).view(n, 2)  # 2 px of 28 in [-1, 1] coordinates
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_3d(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    for dim in (2, 3, 4):
        mask = (torch.rand(n, generator=g, device=dev) < 0.5).view(n, 1, 1, 1, 1)
        x = torch.where(mask, x.flip(dim), x)
    angle = _uniform(n, -10, 10, g, dev) * math.pi / 180
    s = _uniform(n, 0.9, 1.1, g, dev)
    shift = _uniform(3 * n, -2 / 14, 2 / 14, g, dev).view(n, 3)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    zero, inv = torch.zeros(n, device=dev), 1 / s
    # affine_grid's coordinates are (x, y, z) = (W, H, D); rotate in the H-W plane
    theta = torch.stack(
        [
            torch.stack([cos, -sin, zero, shift[:, 0]], 1),
            torch.stack([sin, cos, zero, shift[:, 1]], 1),
            torch.stack([zero, zero, inv, shift[:, 2]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, is_3d: bool, g: torch.Generator) -> torch.Tensor:
    return augment_3d(x, g) if is_3d else augment_2d(x, g)


def _medmnistc_raw(x_uint8: torch.Tensor, rng, flag: str) -> torch.Tensor:
    return medmnistc_augment(flag, x_uint8, rng)


AUGMENTATIONS.register("off")(Augmentation(None, None, "no augmentation"))
AUGMENTATIONS.register("on")(Augmentation(lambda x, g, is_3d: augment(x, is_3d, g), None,
                                          "flips and small affine transforms (see module doc)"))
AUGMENTATIONS.register("medmnistc")(Augmentation(
    lambda x, g, is_3d: augment(x, is_3d, g), _medmnistc_raw,
    "`on` plus a random MedMNIST-C corruption per image (2D; needs pip install -e '.[shift]')"))


def aug_name(value, where: str = "") -> str:
    """A ``grid.aug`` value -> registry name: ``false``/``true`` stay the YAML spelling of off/on."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    if not isinstance(value, str):
        raise ConfigError(f"{where}: aug values are true, false or a name ({', '.join(AUGMENTATIONS.names())}), got {value!r}")
    AUGMENTATIONS.get(value, where=where)
    return value


# AugMedMNIST-C: MedMNIST-C reports that training on its own corruptions improves robustness;
# medmnistc ships that as ``AugMedMNISTC``: per image, one corruption of the dataset's registry or
# the identity, chosen uniformly, at an intensity drawn uniformly between the corruption's
# severity-1 and severity-5 parameters. We call that class as it is, one image at a time, with its
# random draws taken from a seed that ``rng`` gives each image, so a batch is reproducible under
# the caller's numpy Generator and nothing else's state moves. Upstream behaviour kept as is: in
# augmentation mode medmnistc's impulse noise uses a fixed ``default_rng(99999)``, so its pixel
# pattern is the same every time and only its amount varies.
def medmnistc_augment(flag: str, images_uint8_batch, rng: np.random.Generator):
    """A new uint8 batch (same shape and type): each image through one ``AugMedMNISTC`` draw.

    Takes the npz layout ((N, H, W) or (N, H, W, C) numpy) or the training loop's channel-first
    uint8 tensor ((N, C, H, W), what ``bench.augment`` passes) and returns the same kind.
    ``flag`` must have a medmnistc corruption set (the 2D sets of ``sets.yaml``).
    """
    if isinstance(images_uint8_batch, torch.Tensor):  # channel-first batch of the training loop
        x = images_uint8_batch.cpu()
        npz = x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()
        out = torch.from_numpy(np.ascontiguousarray(medmnistc_augment(flag, npz, rng)))
        return out.unsqueeze(1) if x.shape[1] == 1 else out.permute(0, 3, 1, 2).contiguous()
    entry = corruption_set(flag)
    if entry["backend"] != "medmnistc":
        raise ConfigError(f"{flag}: aug 'medmnistc' needs a MedMNIST-C corruption set; this dataset's "
                          f"corruptions come from {entry['backend']} (use it on a 2D dataset)")
    images = np.asarray(images_uint8_batch)
    if images.dtype != np.uint8:
        raise ConfigError(f"{flag}: images to augment must be uint8, got {images.dtype}")
    seeds = rng.integers(0, 2**32, size=len(images), dtype=np.uint64)
    with medmnistc_compat.augmentation(entry["registry"]) as fn:
        return apply_each(flag, "AugMedMNISTC", None, images, fn, seeds, where="batch image")

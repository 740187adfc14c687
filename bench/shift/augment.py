"""AugMedMNIST-C: MedMNIST-C's corruptions as a training augmentation (``aug: medmnistc``).

MedMNIST-C reports that training on its own corruptions improves robustness; medmnistc
ships that as ``AugMedMNISTC``: per image, one corruption of the dataset's registry or
the identity, chosen uniformly, at an intensity drawn uniformly between the corruption's
severity-1 and severity-5 parameters. We call that class as it is, one image at a time,
with its random draws taken from a seed that ``rng`` gives each image, so a batch is
reproducible under the caller's numpy Generator and nothing else's state moves.

Upstream behaviour kept as is: in augmentation mode medmnistc's impulse (salt-and-pepper)
noise uses a fixed ``default_rng(99999)``, so its pixel pattern is the same every time and
only its amount varies.
"""
from __future__ import annotations

import numpy as np

from bench.errors import ConfigError
from bench.shift import medmnistc_compat
from bench.shift.corruptions import apply_each, corruption_set


def medmnistc_augment(flag: str, images_uint8_batch, rng: np.random.Generator):
    """A new uint8 batch (same shape and type): each image through one ``AugMedMNISTC`` draw.

    Takes the npz layout ((N, H, W) or (N, H, W, C) numpy) or the training loop's channel-first
    uint8 tensor ((N, C, H, W), what ``bench.augment`` passes) and returns the same kind.
    ``flag`` must have a medmnistc corruption set (the 2D sets of ``sets.yaml``).
    """
    import torch

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

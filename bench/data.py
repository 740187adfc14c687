"""MedMNIST data: locate, verify, load whole splits into memory, build protocols.

Why not ``medmnist.BreastMNIST(...)``? Its dataset classes assert the official sample
counts and return one PIL image at a time. We read ``<flag>.npz`` (``<flag>_<size>.npz`` for
MedMNIST+ sizes) ourselves, keep every split as a uint8 tensor (a 3D set at size 28 is a few
MB) and form batches by indexing, which is ~10x faster than a per-sample pipeline on 2 CPU
cores -- and on a GPU the uint8 splits move to the device once (``Split.to``).

Two labels matter for a binary dataset, and they differ on PneumoniaMNIST:
* ``positive_label``: the **clinically positive class** declared in ``bench/datasets.yaml``
  (malignant, pneumonia, ...). AUPRC, F1 and partial AUC are reported for it.
* ``sampler_label``: the **minority class of the training split**. The model scores this
  class and LibAUC's samplers oversample it, because that is what DualSampler and the DAM
  losses are designed for. Scores are mapped to P(label 1) for AUC/ACC (which depend on
  neither label) and for the medmnist-format prediction files.
Multi-label ChestMNIST uses label 1 (a finding) for both, on every label.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.datafiles import SPLITS, read_arrays
from bench.datasets import DEFAULT_SIZE, MINORITY, DatasetSpec, get_spec, names
from bench.errors import DataError
from bench.registry import unknown

log = logging.getLogger(__name__)

# Fixed, independent of the training seed, so that fold k is the same for every seed.
DEFAULT_SPLIT_SEED = 20230141
__all__ = ["DatasetSpec", "get_spec", "names", "load", "make_protocol"]


@dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images (N, C, H, W) or (N, C, D, H, W), uint8 labels (N, L)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device) -> "Split":
        """The same split on ``device``: uint8 stays uint8, so a 2D set is tens of MB on a GPU."""
        if self.x.device == torch.device(device):
            return self
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class MedData:
    """A verified dataset with its three official splits."""

    spec: DatasetSpec
    path: Path
    md5: str
    verified: bool
    splits: dict = field(repr=False)  # name -> Split

    @property
    def sampler_label(self) -> int:
        """Binary: the minority class of the official train split -- what the model scores and
        the samplers oversample (see module doc). Multi-label: 1."""
        if self.spec.task != "binary":
            return 1
        y = self.splits["train"].y[:, 0]
        n1 = int(y.sum())
        return 1 if n1 <= len(y) - n1 else 0

    @property
    def positive_label(self) -> int:
        """The clinically positive class (``bench/datasets.yaml``): AUPRC, F1 and pAUC use it."""
        if self.spec.task != "binary":
            return 1
        return self.sampler_label if self.spec.positive == MINORITY else int(self.spec.positive)


def load(
    flag: str,
    root: str | os.PathLike | None = None,
    *,
    size: int = DEFAULT_SIZE,
    allow_unverified: bool | None = None,
    download: bool = True,
) -> MedData:
    """Locate, verify and load ``flag`` at ``size`` into memory; every failure is one :class:`DataError` line."""
    spec, path, md5, verified, arrays = read_arrays(flag, root, size=size, allow_unverified=allow_unverified,
                                                    download=download)
    splits = {}
    for name in SPLITS:
        images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"]
        x = torch.from_numpy(np.ascontiguousarray(images))
        # channel axis first: 2D gray (N,28,28)->(N,1,28,28); RGB (N,28,28,3)->(N,3,28,28);
        # 3D (N,28,28,28)->(N,1,28,28,28)
        if spec.is_3d or spec.n_channels == 1:
            x = x.unsqueeze(1)
        else:
            x = x.permute(0, 3, 1, 2).contiguous()
        splits[name] = Split(x=x, y=torch.from_numpy(labels.astype(np.uint8)))
    return MedData(spec=spec, path=path, md5=md5, verified=verified, splits=splits)


def train_targets(y: torch.Tensor, sampler_label: int) -> torch.Tensor:
    """Official labels (N, L) -> float targets of the class the model scores (see the module doc)."""
    return (y == sampler_label).float() if y.shape[1] == 1 else y.float()


def eval_x_scale(voxel_scale: bool, spec) -> float:
    """The factor evaluation inputs get: MedMNIST's shape transform scales binary masks by
    U(0, 1) in training and by its mean, 0.5, at evaluation (``train.voxel_scale``); else 1."""
    return 0.5 if voxel_scale and spec.shape_mask else 1.0


def scale(x: torch.Tensor, is_3d: bool) -> torch.Tensor:
    """uint8 -> float as the paper: 2D (x/255 - 0.5)/0.5 in [-1, 1]; 3D x/255 in [0, 1]."""
    x = x.float().div_(255.0)
    if not is_3d:
        x = x.sub_(0.5).div_(0.5)
    return x


# --------------------------------------------------------------------------- protocols


def stratify_key(y: np.ndarray) -> np.ndarray:
    """Stratification key for a (N, L) 0/1 label matrix.

    Binary: the label. Multi-label: the index of each sample's *rarest* positive label
    (L for no finding), so that every label -- rare ones first -- is spread evenly over
    the folds; keys with fewer than 5 members are pooled into one "rare" key so that
    StratifiedKFold(5) can place them.
    """
    if y.shape[1] == 1:
        return y[:, 0].astype(np.int64)
    freq = y.sum(axis=0)
    order = np.argsort(freq, kind="stable")  # rarest label first
    key = np.full(len(y), y.shape[1], dtype=np.int64)
    for lab in order[::-1]:  # commonest first, so rarer ones overwrite
        key[y[:, lab] == 1] = lab
    values, counts = np.unique(key, return_counts=True)
    rare = values[counts < 5]
    key[np.isin(key, rare)] = -1
    return key


PROTOCOLS = ("official", "cv5")
N_FOLDS = 5


@dataclass(frozen=True)
class Protocol:
    """Train/val/test splits of one cell. ``train`` indices are renumbered 0..n-1."""

    train: Split
    val: Split
    test: Split
    name: str
    fold: int | None


def make_protocol(data: MedData, protocol: str, fold: int | None, split_seed: int = DEFAULT_SPLIT_SEED) -> Protocol:
    """``official``: splits as released. ``cv5``: fold ``k`` of a stratified 5-fold split of
    train ∪ val (fixed ``split_seed``); fold k's held-out part is validation; test is always
    the official test split."""
    s = data.splits
    if protocol == "official":
        if fold is not None:
            raise DataError("protocol 'official' takes no fold; use protocol 'cv5' with fold 0-4")
        return Protocol(s["train"], s["val"], s["test"], protocol, None)
    if protocol != "cv5":
        raise unknown("protocol", protocol, PROTOCOLS)
    if fold is None or not 0 <= int(fold) < N_FOLDS:
        raise DataError(f"protocol 'cv5' needs a fold in 0..{N_FOLDS - 1}, got {fold}")
    from sklearn.model_selection import StratifiedKFold

    x = torch.cat([s["train"].x, s["val"].x])
    y = torch.cat([s["train"].y, s["val"].y])
    skf = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=split_seed)
    tr, va = list(skf.split(np.zeros(len(y)), stratify_key(y.numpy())))[int(fold)]
    tr, va = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va))
    # Indexing copies: the subset is contiguous and its own 0..n-1 index space, which is
    # what LibAUC's index-based losses (APLoss, pAUC) need.
    return Protocol(Split(x[tr], y[tr]), Split(x[va], y[va]), s["test"], protocol, int(fold))


class IndexedDataset(torch.utils.data.Dataset):
    """A view of a :class:`Split` that yields ``(x, y, idx)`` with ``idx`` in ``[0, n)``.

    ``targets`` is what LibAUC's samplers read. Training itself indexes whole batches
    (see ``bench.train``), this view exists for the samplers and for anyone who wants a
    standard DataLoader.
    """

    def __init__(self, split: Split, is_3d: bool, positive_label: int = 1):
        self.split = split
        self.is_3d = is_3d
        y = split.y.numpy().astype(np.int64)
        self.targets = (y == positive_label).astype(np.int64) if y.shape[1] == 1 else y
        if y.shape[1] == 1:
            self.targets = self.targets[:, 0]

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        x = scale(self.split.x[i : i + 1], self.is_3d)[0]
        return x, torch.as_tensor(self.targets[i]).float(), i

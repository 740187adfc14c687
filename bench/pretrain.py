"""``techniques: {pretrain: [flags]}``: the training data of a multi-dataset pretraining stage.

The union is the cell's own training split *as its protocol defines it* (a cv5 fold's training
part, never the official train split the fold's validation images came from) plus the official
training splits of the listed datasets. Labels are namespaced: the network gets one block of
logits per dataset (BreastMNIST 1, PneumoniaMNIST 1, ChestMNIST 14), each sample's target lives
in its dataset's block, and a mask says which logits it supervises (:func:`bench.techniques.bce_loss`).
Each block is coded as its dataset's cells code it (binary: the training split's minority class).

Leakage is checked, not assumed: before training, every image the union adds is hashed and
compared with the cell's validation and test images; one identical image refuses the run
(:class:`bench.errors.DataError`, naming the first). Duplicates *within* a dataset's official
splits are the dataset's own and are not the union's doing, so the cell's own training part is
not re-checked.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from bench import data as D
from bench.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Union:
    """The pretraining set: uint8 images, (N, total) targets and mask, and the cell's block of logits."""

    x: torch.Tensor
    targets: torch.Tensor  # float, 0/1 in the sample's block, 0 elsewhere
    mask: torch.Tensor  # float, 1 on the sample's block
    block: tuple  # (lo, hi): the cell's dataset's logits
    parts: tuple  # (flag, n_images) in order, the cell's own first

    @property
    def n_outputs(self) -> int:
        return int(self.targets.shape[1])


def _digests(x: torch.Tensor) -> list[bytes]:
    arr = x.numpy()
    return [hashlib.blake2b(arr[i].tobytes(), digest_size=16).digest() for i in range(len(arr))]


def build(cell, data: D.MedData, proto: D.Protocol, sampler_label: int, *, data_root=None,
          allow_unverified=None) -> Union:
    """The union for ``cell`` (its ``pretrain`` technique); refuses one that would hold a val/test image."""
    flags = [f for f in dict(cell.techniques)["pretrain"] if f != cell.dataset]
    parts = [(cell.dataset, proto.train.x, D.train_targets(proto.train.y, sampler_label))]
    for flag in flags:
        other = D.load(flag, data_root, size=cell.size, allow_unverified=allow_unverified)
        if other.spec.n_channels != data.spec.n_channels:
            raise DataError(f"pretrain: {flag} has {other.spec.n_channels} channel(s), {cell.dataset} "
                            f"{data.spec.n_channels}; the union needs one input format")
        train = other.splits["train"]
        parts.append((flag, train.x, D.train_targets(train.y, other.sampler_label)))
    held_out = {d: f"{cell.dataset} {name} #{i}" for name, split in (("val", proto.val), ("test", proto.test))
                for i, d in enumerate(_digests(split.x))}
    for flag, x, _ in parts[1:]:
        for i, d in enumerate(_digests(x)):
            if d in held_out:
                raise DataError(f"pretrain: {flag} train #{i} is identical to {held_out[d]}: the union would train on "
                                f"an image the cell validates or tests on; drop {flag} from pretrain")
    total = sum(t.shape[1] for _, _, t in parts)
    xs, ts, ms, lo = [], [], [], 0
    for flag, x, t in parts:
        n, k = len(x), t.shape[1]
        block_t = torch.zeros(n, total)
        block_m = torch.zeros(n, total)
        block_t[:, lo:lo + k] = t
        block_m[:, lo:lo + k] = 1
        xs.append(x), ts.append(block_t), ms.append(block_m)
        lo += k
    own = parts[0][2].shape[1]
    union = Union(torch.cat(xs), torch.cat(ts), torch.cat(ms), (0, own), tuple((f, len(x)) for f, x, _ in parts))
    log.info("%s: pretraining union of %s (%d images, %d logits)", cell.run_name,
             ", ".join(f"{f} {n}" for f, n in union.parts), len(union.x), total)
    return union


def own_block(state: dict, head_keys: tuple, block: tuple) -> dict:
    """``state`` with the classifier cut to the cell's own block of logits: an ordinary model of its dataset."""
    lo, hi = block
    return {k: (v[lo:hi].clone() if k in head_keys else v) for k, v in state.items()}

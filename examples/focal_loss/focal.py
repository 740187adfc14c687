"""An outside objective, registered exactly like the built-ins: focal loss (Lin et al., 2017).

.. math:: \\ell(p_t) = -\\alpha_t (1 - p_t)^\\gamma \\log p_t

It down-weights easy examples, which is the other classic answer to class imbalance besides
AUC maximization. Nothing in ``bench/`` changes: a suite lists this file under ``plugins:`` (or a
package declares it as a ``medauc_bench.objectives`` entry point) and names ``focal`` in its grid.
Its hyperparameters are validated like every objective's (unknown names get a did-you-mean), and
this file's code enters the runs' code digest.
"""
from __future__ import annotations  # hyperparameter types are read as names ("float"), as in bench.objectives

from dataclasses import dataclass

import torch
from torchvision.ops import sigmoid_focal_loss

from bench.objectives import OBJECTIVES, Objective, Recipe, ScheduleParams, lr_decay, shuffled_batches


@OBJECTIVES.register("focal")
class FocalLoss(Objective):
    """Focal loss on logits with Adam and the CE schedule (LR divided by decay_factor at decay_epochs).

    Args (``objectives.focal`` in the suite):
        lr, weight_decay, decay_epochs, decay_factor: as for ``ce``.
        gamma: focusing parameter (2.0 in the paper; 0 is plain weighted BCE).
        alpha: weight of the positive class (0.25 in the paper; -1 switches weighting off).

    Reference: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar. "Focal Loss for Dense Object
    Detection", ICCV 2017.
    """

    name = "focal"

    @dataclass(frozen=True)
    class Params(ScheduleParams):
        gamma: float
        alpha: float

    @classmethod
    def build(cls, model, p, ctx):
        opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)

        def loss(logits, y, idx, task):
            return sigmoid_focal_loss(logits, y.float(), alpha=p.alpha, gamma=p.gamma, reduction="mean")

        return Recipe(loss, opt, shuffled_batches(ctx), lr_decay(opt, ctx.epochs, p, False))

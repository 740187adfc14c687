"""Training objectives: each name builds loss, optimizer, sampler and LR schedule.

Every objective is a small class with a frozen ``Params`` dataclass (its hyperparameters;
the *values* live once, in ``suites/_base.yaml``) and a ``build`` method returning a
:class:`Recipe`. The training loop (``bench.train``) only talks to :class:`Recipe`, so a
new objective is one registered class and needs no change anywhere else.

Conventions shared by all objectives
------------------------------------
* The model outputs one logit per label for the *positive* class (binary: the minority
  class of the training split, see ``bench.data``). Logits are cast to float32 before any
  loss (bf16 autocast would otherwise feed bf16 into LibAUC's squared losses).
* LibAUC's AUC losses expect scores in [0, 1], so they receive ``sigmoid(logits)``.
* ``decay_epochs`` are fractions of the epoch budget; at each one the LR is divided by
  ``decay_factor``. For PESG/PDSCA/SOAP/SOPA the decay goes through
  ``optimizer.update_regularizer``, which also moves the ``epoch_decay`` reference point
  to the current averaged weights (LibAUC's recipe).
* Samplers: DAM objectives use LibAUC's ``DualSampler`` (binary) or ``TriSampler``
  (multi-label), which *oversample* positives to ``sampling_rate`` of each batch, so an
  "epoch" is the sampler's length, not the dataset's. They are given ``labels=`` and the
  cell seed; they reseed numpy's global RNG, which is why nothing else uses it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from bench import schema
from bench.errors import ConfigError, NotApplicable
from bench.registry import Registry, did_you_mean
from bench.techniques import bce_loss

OBJECTIVES: Registry = Registry("objective")


@dataclass(frozen=True)
class TrainContext:
    """What an objective needs to know about the training data and the run."""

    labels: np.ndarray  # (N,) 0/1 positive-coded for binary, (N, L) for multi-label
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    # CE techniques (bench.techniques): class weights (2, L), label smoothing, and -- for a
    # pretraining union -- the (N, L) mask of the logits each sample supervises. Off by default.
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    mask: torch.Tensor | None = None
    # the execution path's fused optimizer step (bench.device.ExecPath): Adam's update as one kernel
    # over all parameters instead of a loop of per-tensor ops; the same update up to rounding
    fused: bool = False

    def adam(self, params, lr: float, weight_decay: float) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=self.fused or None)

    def bce(self):
        """The BCE loss with this run's CE techniques (exactly plain BCE without them)."""
        return bce_loss(self.class_weights, self.label_smoothing, self.mask)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2


Batch = tuple  # (indices: LongTensor, task_ids: LongTensor | None)


@dataclass
class Recipe:
    """Everything the training loop needs from an objective."""

    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    optimizer: torch.optim.Optimizer
    batches: Callable[[int], Iterator[Batch]]  # epoch -> batches of training indices
    end_epoch: Callable[[int], None]  # called after epoch e (1-based): LR decays etc.
    zero_grad: Callable[[], None] | None = None  # before each backward; default optimizer.zero_grad

    def __post_init__(self):
        if self.zero_grad is None:
            self.zero_grad = self.optimizer.zero_grad


def milestones(epochs: int, fractions) -> set[int]:
    """Epochs (1-based, after which to decay) for fractions of the budget."""
    return {max(1, int(round(f * epochs))) for f in fractions if 0 < f < 1}


def shuffled_batches(ctx: TrainContext) -> Callable[[int], Iterator[Batch]]:
    """Plain shuffling, seeded per (seed, epoch); drops a last batch of one (BatchNorm)."""

    def batches(epoch: int):
        g = torch.Generator().manual_seed(ctx.seed * 100_003 + epoch)
        perm = torch.randperm(ctx.n, generator=g)
        for i in range(0, ctx.n, ctx.batch_size):
            idx = perm[i : i + ctx.batch_size]
            if len(idx) > 1:
                yield idx, None

    return batches


def sampler_batches(ctx: TrainContext, sampling_rate: float) -> Callable[[int], Iterator[Batch]]:
    """LibAUC DualSampler (binary) or TriSampler (multi-label) chunked into batches."""
    from libauc.sampler import DualSampler, TriSampler

    if ctx.multilabel:
        n_tasks = ctx.labels.shape[1]
        per_task = max(2, ctx.batch_size // n_tasks)
        sampler = TriSampler(
            None, batch_size_per_task=per_task, sampling_rate=sampling_rate, labels=ctx.labels,
            random_seed=ctx.seed,
        )
        size = per_task * n_tasks
    else:
        sampler = DualSampler(
            None, batch_size=ctx.batch_size, labels=ctx.labels, sampling_rate=sampling_rate,
            random_seed=ctx.seed,
        )
        size = ctx.batch_size

    def batches(epoch: int):
        items = list(iter(sampler))
        if ctx.multilabel:
            idx = torch.as_tensor(np.array([i for i, _ in items]), dtype=torch.long)
            task = torch.as_tensor(np.array([t for _, t in items]), dtype=torch.long)
        else:
            idx, task = torch.as_tensor(np.asarray(items), dtype=torch.long), None
        for i in range(0, len(idx), size):
            yield idx[i : i + size], (None if task is None else task[i : i + size])

    return batches


def lr_decay(optimizer, epochs: int, params, via_regularizer: bool, inner_lr: bool = False) -> Callable[[int], None]:
    """Divide the LR by ``decay_factor`` after each milestone epoch.

    ``inner_lr``: PDSCA has a second LR (``lr0``, the inner CE step) that decays only when its
    own factor is passed too, as LibAUC's example does
    (``update_regularizer(decay_factor=10, decay_factor0=10)``).
    """
    steps = milestones(epochs, params.decay_epochs)

    def end_epoch(epoch: int) -> None:
        if epoch not in steps:
            return
        if via_regularizer and inner_lr:
            optimizer.update_regularizer(decay_factor=params.decay_factor, decay_factor0=params.decay_factor)
        elif via_regularizer:
            optimizer.update_regularizer(decay_factor=params.decay_factor)
        else:
            for group in optimizer.param_groups:
                group["lr"] /= params.decay_factor

    return end_epoch


class Objective:
    """Base class: subclasses set ``Params`` and implement ``build``."""

    name: ClassVar[str]
    Params: ClassVar[type]
    multilabel: ClassVar[str | None] = None  # None: supported; else the reason it is not
    bce: ClassVar[bool] = False  # its loss is BCE on logits: CE techniques apply (bench.techniques)

    @classmethod
    def params(cls, values: dict, where: str = "") -> object:
        """Validate a dict of hyperparameters into the frozen ``Params`` dataclass (checked by the
        pydantic model of its fields, :func:`params_model`)."""
        loc = f" in {where}" if where else ""
        try:
            checked = params_model(cls.Params).model_validate(values)
        except ValidationError as exc:
            raise _params_error(cls, exc, values, loc) from None
        return cls.Params(**{k: getattr(checked, k) for k in checked.model_fields_set})  # dataclass defaults stay

    @classmethod
    def check_task(cls, multilabel: bool) -> None:
        if multilabel and cls.multilabel is not None:
            raise NotApplicable(f"objective '{cls.name}' has no multi-label form: {cls.multilabel}")

    @classmethod
    def build(cls, model: torch.nn.Module, p, ctx: TrainContext) -> Recipe:  # pragma: no cover
        raise NotImplementedError


_PARAMS_MODELS: dict[type, type[BaseModel]] = {}
_EXPECTED = {"float": "a number", "int": "an integer", "str": "a string", "bool": "true or false",
             "tuple": "a list of numbers"}


def params_model(params_cls: type) -> type[BaseModel]:
    """The strict pydantic model of a ``Params`` dataclass (cached): its fields are annotated
    ``float`` (an int is accepted and converted; a bool, a string or nan/inf is not), ``int``,
    ``str``, ``bool`` or ``tuple`` (a list of finite numbers, kept as a tuple of floats)."""
    if params_cls not in _PARAMS_MODELS:
        _PARAMS_MODELS[params_cls] = schema.dataclass_model(params_cls, f"{params_cls.__qualname__}Model")
    return _PARAMS_MODELS[params_cls]


def _params_error(cls, exc: ValidationError, values, loc: str) -> ConfigError:
    """The first problem as today's one line: unknown names, then missing ones, then a wrong value."""
    fields = {f.name: schema.type_name(f.type) for f in dataclasses.fields(cls.Params)}
    errors = exc.errors()
    extra = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        key = extra[0]
        return ConfigError(f"unknown hyperparameter '{key}' for objective '{cls.name}'{loc}"
                           f"{did_you_mean(key, list(fields))}; known: {', '.join(fields)}")
    missing = [k for k in fields if any(e["type"] == "missing" and e["loc"] == (k,) for e in errors)]
    if missing:
        return ConfigError(f"objective '{cls.name}'{loc} lacks hyperparameters {missing} (set them in suites/_base.yaml)")
    err = errors[0]
    if not err["loc"]:
        return ConfigError(f"objective '{cls.name}'{loc}: hyperparameters must be a mapping of names to values, "
                           f"got {values!r}")
    key = str(err["loc"][0])
    expected = _EXPECTED[fields[key]]
    if err["type"] == "finite_number":
        expected = expected.replace("number", "finite number")
    return ConfigError(f"{cls.name}.{key}{loc}: expected {expected}, got {values[key]!r}")


@dataclass(frozen=True)
class ScheduleParams:
    """Fields every objective has (subclass field order: these first)."""

    lr: float
    weight_decay: float
    decay_epochs: tuple
    decay_factor: float


@dataclass(frozen=True)
class SampledParams(ScheduleParams):
    """DAM objectives also set the share of positives per batch of their sampler."""

    sampling_rate: float


def sigmoid_loss(fn, ctx: TrainContext, indexed: bool, **kwargs):
    """Adapt a LibAUC loss to ``loss(logits, y, idx, task)``: sigmoid scores, float targets,
    the per-sample index for index-based losses, task ids for multi-label ones, and fixed
    keyword arguments (e.g. ``auto=False``)."""

    def loss(logits, y, idx, task):
        args = (torch.sigmoid(logits), y.float()) + ((idx,) if indexed else ())
        if ctx.multilabel:
            return fn(*args, task_id=task if task is not None else [], **kwargs)
        return fn(*args, **kwargs)

    return loss


def class_prior(p, ctx: TrainContext) -> tuple[dict, dict]:
    """(constructor kwargs, forward kwargs) that fix AUCM's class prior ``p`` for ``version='v1'``.

    LibAUC's v1 loss re-estimates ``p`` from every batch unless ``auto=False`` is passed, and
    with DualSampler every batch holds ``sampling_rate`` positives by construction: the loss
    sees the *sampler's* rate, not the data's imbalance. The v1 objective is an expectation
    over the distribution the batches are drawn from, so that rate is the right ``p``; we set
    it explicitly (``imratio`` = that rate, ``auto=False``), which also fixes it for a short
    last batch. Alternatives considered: ``p`` = the data's imbalance (wrong for sampled
    batches: it weights the class terms by a prior the batches do not have) and ``version='v2'``
    (LibAUC's docstring recommends it with DualSampler, but its examples, whose learning rates
    our defaults follow, use v1; ``version: v2`` remains available per suite).
    Sources: libauc 2.0.1 ``AUCMLoss`` docstring and ``forward(auto=True)``;
    LibAUC examples/02_Optimizing_AUROC_with_ResNet20_on_Imbalanced_CIFAR10 (AUCMLoss() with
    DualSampler(sampling_rate=0.2), PESG lr 0.1).
    Multi-label (TriSampler): each label's positive rate in a batch varies with the tasks drawn
    into it, so LibAUC's per-batch estimate is kept there.
    """
    if p.version != "v1" or ctx.multilabel:
        return {}, {}
    return {"imratio": batch_positive_rate(p.sampling_rate, ctx.batch_size)}, {"auto": False}


def batch_positive_rate(sampling_rate: float, batch_size: int) -> float:
    """The share of positives in a DualSampler batch: it puts ``max(1, int(rate * size))`` of them."""
    return max(1, int(sampling_rate * batch_size)) / batch_size


# ----------------------------------------------------------------------------- objectives


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    r"""Binary cross-entropy on logits (the MedMNIST v2 paper's recipe).

    .. math:: \min_w -\frac1n\sum_i y_i\log\sigma(h_w(x_i)) + (1-y_i)\log(1-\sigma(h_w(x_i)))

    Optimizer Adam; the LR is divided by ``decay_factor`` at ``decay_epochs`` (paper:
    lr 1e-3, x0.1 at 50% and 75% of 100 epochs, batch 128). Plain shuffled batches.

    Args (``suites/_base.yaml``, ``objectives.ce``):
        lr: Adam learning rate.  weight_decay: Adam (L2) weight decay.
        decay_epochs: fractions of the epoch budget at which the LR decays.
        decay_factor: the LR is divided by this at each decay epoch.

    Practical tips: the paper trains 100 epochs and keeps the best-validation-AUC model; on
    BreastMNIST the validation set has 78 images, so expect epoch-to-epoch noise of a few
    AUC points -- report several seeds.

    Reference: Yang et al., "MedMNIST v2", Scientific Data 10:41 (2023).
    """

    name = "ce"
    bce = True
    Params = ScheduleParams

    @classmethod
    def build(cls, model, p, ctx):
        opt = ctx.adam(model.parameters(), p.lr, p.weight_decay)
        return Recipe(ctx.bce(), opt, shuffled_batches(ctx), lr_decay(opt, ctx.epochs, p, False))


@OBJECTIVES.register("aucm")
class AUCM(Objective):
    r"""AUC-margin (AUCM) min-max loss optimized by PESG (Yuan et al., ICCV 2021).

    .. math::
        \min_{w,a,b}\max_{\alpha\ge0} (1-p)\,E[(h-a)^2|y=1] + p\,E[(h-b)^2|y=0]
        + 2\alpha(p(1-p)m + E[p\,h\,1_{y=0} - (1-p)\,h\,1_{y=1}]) - p(1-p)\alpha^2

    with :math:`h=\sigma(\text{logit})`, margin :math:`m`, and :math:`p` the class prior of the
    batches (``version='v1'``): fixed to the share of positives DualSampler puts in every batch
    (``sampling_rate``, rounded down to whole samples) (see :func:`class_prior` for the decision and its sources) -- ``v2`` drops :math:`p`.
    Multi-label data uses ``MultiLabelAUCMLoss`` (one AUCM term per label) and TriSampler.

    Args (``objectives.aucm``):
        lr: PESG step size (0.1).  margin: AUC margin m (1.0).
        epoch_decay: pull toward the reference weights, re-anchored at each LR decay (3e-3).
        weight_decay: L2 (1e-4).  momentum: PESG momentum (0.9).
        sampling_rate: share of positives per batch in DualSampler (0.2).
        version: 'v1' (with class prior) or 'v2' (without).
        decay_epochs, decay_factor: as for ``ce``; applied via ``update_regularizer``.

    Practical tips (LibAUC): pretrain with CE and fine-tune with AUCM at a smaller LR
    (``init_from: ce`` in a suite); ``epoch_decay`` is tuned like weight decay;
    ``version='v2'`` is recommended with DualSampler.

    Reference: Z. Yuan, Y. Yan, M. Sonka, T. Yang. "Large-scale Robust Deep AUC
    Maximization: A New Surrogate Loss and Empirical Studies on Medical Image
    Classification", ICCV 2021.
    """

    name = "aucm"

    @dataclass(frozen=True)
    class Params(SampledParams):
        margin: float
        epoch_decay: float
        momentum: float
        version: str

    @classmethod
    def build(cls, model, p, ctx):
        from libauc.losses import AUCMLoss, MultiLabelAUCMLoss
        from libauc.optimizers import PESG

        init_kw, call_kw = class_prior(p, ctx)
        if ctx.multilabel:
            fn = MultiLabelAUCMLoss(margin=p.margin, version=p.version, num_labels=ctx.labels.shape[1], device=ctx.device)
        else:
            fn = AUCMLoss(margin=p.margin, version=p.version, device=ctx.device, **init_kw)
        opt = PESG(
            model.parameters(), loss_fn=fn, lr=p.lr, margin=p.margin, epoch_decay=p.epoch_decay,
            weight_decay=p.weight_decay, momentum=p.momentum, verbose=False, device=ctx.device,
        )

        return Recipe(sigmoid_loss(fn, ctx, indexed=False, **call_kw), opt, sampler_batches(ctx, p.sampling_rate),
                      lr_decay(opt, ctx.epochs, p, True))


@OBJECTIVES.register("ap")
class AveragePrecision(Objective):
    r"""Average-precision (AUPRC) surrogate optimized by SOAP (Qi et al., NeurIPS 2021).

    .. math::
        \min_w \frac{1}{n_+}\sum_{y_i=1}
        \frac{-\sum_s 1[y_s=1]\,\ell(w; x_s, x_i)}{\sum_s \ell(w; x_s, x_i)}

    with a squared-hinge surrogate :math:`\ell` and moving-average estimates ``u`` of
    numerator and denominator per positive sample -- which is why the loss needs each
    sample's index in ``[0, n_train)`` (CV subsets are renumbered by ``bench.data``).
    Multi-label data uses ``meanAveragePrecisionLoss`` with TriSampler.

    Args (``objectives.ap``):
        lr: SOAP (adam mode) LR (1e-3).  margin: surrogate margin (1.0).
        gamma: moving-average weight of the u estimators (0.9).
        weight_decay: L2.  sampling_rate: positives per batch (0.5; every batch must hold one).
        decay_epochs, decay_factor: as for ``ce``.

    Practical tips (LibAUC): tune ``gamma`` in {0.1, ..., 0.9} and ``margin`` in
    {0.6, 0.8, 1.0}; AP rewards ranking the positive class on top, so which class is
    positive matters (here: the minority class).

    Reference: Q. Qi, Y. Luo, Z. Xu, S. Ji, T. Yang. "Stochastic Optimization of Areas
    Under Precision-Recall Curves with Provable Convergence", NeurIPS 2021.
    """

    name = "ap"

    @dataclass(frozen=True)
    class Params(SampledParams):
        margin: float
        gamma: float

    @classmethod
    def build(cls, model, p, ctx):
        from libauc.losses import APLoss, meanAveragePrecisionLoss
        from libauc.optimizers import SOAP

        if ctx.multilabel:
            fn = meanAveragePrecisionLoss(
                data_len=ctx.n, num_labels=ctx.labels.shape[1], margin=p.margin, gamma=p.gamma, device=ctx.device
            )
        else:
            fn = APLoss(data_len=ctx.n, margin=p.margin, gamma=p.gamma, device=ctx.device)
        opt = SOAP(model.parameters(), lr=p.lr, mode="adam", weight_decay=p.weight_decay, verbose=False, device=ctx.device)

        return Recipe(sigmoid_loss(fn, ctx, indexed=True), opt, sampler_batches(ctx, p.sampling_rate), lr_decay(opt, ctx.epochs, p, False))


@OBJECTIVES.register("pauc")
class PartialAUC(Objective):
    r"""One-way partial AUC, FPR in [0, beta], via DRO-CVaR, optimized by SOPA (Zhu et al., ICML 2022).

    .. math::
        \min_{w,s}\frac{1}{n_+}\sum_{x_i\in S_+}\Big(s_i + \frac{1}{\beta n_-}
        \sum_{x_j\in S_-}(L(w; x_i, x_j) - s_i)_+\Big)

    Only the hardest ``beta`` share of negatives per positive contributes, so the model is
    pushed to rank positives above the *top-scored* negatives (the low-FPR region). Needs
    the per-sample index (dual variable ``s_i``) and a positive in every batch.
    Multi-label data uses ``MultiLabelpAUCLoss(mode='SOPA')``.

    Args (``objectives.pauc``):
        lr: SOPA (adam mode) LR (1e-3).  beta: the FPR bound (0.2 = pAUC over FPR <= 0.2).
        eta: step size of the dual variables (1.0).  margin: surrogate margin (1.0).
        weight_decay: L2.  sampling_rate: positives per batch (0.5).
        decay_epochs, decay_factor: as for ``ce``.

    Practical tips (LibAUC): tune ``margin`` in {0.1, ..., 1.0} and ``eta`` in
    {10, 1, 0.1, 0.01}; choose ``beta`` by the FPR your application tolerates. The
    leaderboard still ranks by full AUC.

    Reference: D. Zhu, G. Li, B. Wang, X. Wu, T. Yang. "When AUC meets DRO: Optimizing
    Partial AUC for Deep Learning with Non-Convex Convergence Guarantee", ICML 2022.
    """

    name = "pauc"

    @dataclass(frozen=True)
    class Params(SampledParams):
        beta: float
        eta: float
        margin: float

    @classmethod
    def build(cls, model, p, ctx):
        from libauc.losses import MultiLabelpAUCLoss, pAUC_CVaR_Loss
        from libauc.optimizers import SOPA

        if ctx.multilabel:
            fn = MultiLabelpAUCLoss(
                mode="SOPA", num_labels=ctx.labels.shape[1], device=ctx.device, data_len=ctx.n,
                pos_len=int(ctx.labels.sum()), margin=p.margin, beta=p.beta, eta=p.eta,
            )
        else:
            fn = pAUC_CVaR_Loss(
                data_len=ctx.n, pos_len=int(ctx.labels.sum()), margin=p.margin, beta=p.beta, eta=p.eta,
                device=ctx.device,
            )
        opt = SOPA(model.parameters(), mode="adam", lr=p.lr, eta=p.eta, weight_decay=p.weight_decay, device=ctx.device)

        return Recipe(sigmoid_loss(fn, ctx, indexed=True), opt, sampler_batches(ctx, p.sampling_rate), lr_decay(opt, ctx.epochs, p, False))


@OBJECTIVES.register("pauc_dro")
class PartialAUCDRO(Objective):
    r"""One-way partial AUC via KL-DRO, optimized by SOPA-s (Zhu et al., ICML 2022).

    .. math::
        \min_w \frac{1}{n_+}\sum_{x_i\in S_+}\lambda\log\frac{1}{n_-}
        \sum_{x_j\in S_-}\exp\Big(\frac{L(w; x_i, x_j)}{\lambda}\Big)

    A soft version of :class:`PartialAUC`: ``Lambda`` (KL weight) sets how strongly hard
    negatives are up-weighted instead of a hard FPR bound. Binary only here.

    Args (``objectives.pauc_dro``): lr (1e-3), Lambda (1.0), gamma (0.9), margin (1.0),
    weight_decay, sampling_rate (0.5), decay_epochs, decay_factor.

    Practical tips (LibAUC): ``Lambda`` in (0.1, 10); ``gamma`` in {0.1, ..., 0.9}.

    Reference: as :class:`PartialAUC`.
    """

    name = "pauc_dro"
    multilabel = "use 'pauc' (MultiLabelpAUCLoss, SOPA) for multi-label data"

    @dataclass(frozen=True)
    class Params(SampledParams):
        Lambda: float
        gamma: float
        margin: float

    @classmethod
    def build(cls, model, p, ctx):
        from libauc.losses import pAUC_DRO_Loss
        from libauc.optimizers import SOPAs

        fn = pAUC_DRO_Loss(data_len=ctx.n, gamma=p.gamma, margin=p.margin, Lambda=p.Lambda, device=ctx.device)
        opt = SOPAs(model.parameters(), mode="adam", lr=p.lr, weight_decay=p.weight_decay, verbose=False, device=ctx.device)

        return Recipe(sigmoid_loss(fn, ctx, indexed=True), opt, sampler_batches(ctx, p.sampling_rate), lr_decay(opt, ctx.epochs, p, False))


@OBJECTIVES.register("compauc")
class CompositionalAUC(Objective):
    r"""Compositional AUC loss optimized by PDSCA (Yuan et al., ICLR 2022).

    .. math:: \min_w L_{AUC}\big(w - \alpha\nabla L_{CE}(w)\big)

    Training alternates ``k`` cross-entropy steps (the inner gradient step) with ``k`` AUCM
    steps, so the features learned by CE are refined for AUC end to end -- a one-stage
    alternative to CE pretraining + AUCM fine-tuning. LibAUC's loss needs sigmoid outputs
    and float targets; PDSCA must be given the device (it defaults to 'cuda').

    Args (``objectives.compauc``):
        lr: PDSCA LR of the outer (AUC) step (0.1).  margin (1.0).  k: inner CE steps (1).
        beta1, beta2: PDSCA moving-average weights (0.99, 0.999).
        epoch_decay (2e-3), weight_decay (1e-4), sampling_rate (0.2), version ('v1'),
        decay_epochs, decay_factor: as for ``aucm``.

    Practical tips (LibAUC): increasing ``k`` may help; no multi-label form exists in
    LibAUC 2.0.1, so ChestMNIST cells end as "not applicable".

    Two LibAUC 2.0.1 pitfalls handled here, without patching the library: PDSCA chooses its CE or
    AUC branch by ``alpha.grad is None`` and nothing clears that gradient (we clear it before
    every backward, so steps alternate k and k), and its inner LR ``lr0`` decays only when
    ``decay_factor0`` is passed (we pass both factors, as LibAUC's example does). The class prior
    ``p`` is fixed as for :class:`AUCM`.

    Reference: Z. Yuan, Z. Guo, N. Chawla, T. Yang. "Compositional Training for End-to-End
    Deep AUC Maximization", ICLR 2022.
    """

    name = "compauc"
    multilabel = "LibAUC 2.0.1 has no multi-label CompositionalAUCLoss"

    @dataclass(frozen=True)
    class Params(SampledParams):
        margin: float
        k: int
        beta1: float
        beta2: float
        epoch_decay: float
        version: str

    @classmethod
    def build(cls, model, p, ctx):
        from libauc.losses import CompositionalAUCLoss
        from libauc.optimizers import PDSCA

        init_kw, call_kw = class_prior(p, ctx)
        fn = CompositionalAUCLoss(margin=p.margin, k=p.k, version=p.version, device=ctx.device, **init_kw)
        opt = PDSCA(
            model.parameters(), loss_fn=fn, lr=p.lr, beta1=p.beta1, beta2=p.beta2, epoch_decay=p.epoch_decay,
            weight_decay=p.weight_decay, verbose=False, device=ctx.device,
        )

        def zero_grad():
            # PDSCA takes its CE branch iff ``alpha.grad is None``, but alpha is not among its
            # parameters, so ``zero_grad`` never clears it: from the first AUC step on, every step
            # would take the AUC branch and training would no longer alternate. Clearing it each
            # step restores the paper's k CE steps / k AUC steps (the loss picks which by its step
            # counter; only AUC steps give alpha a gradient).
            opt.zero_grad()
            fn.alpha.grad = None

        return Recipe(sigmoid_loss(fn, ctx, indexed=False, **call_kw), opt, sampler_batches(ctx, p.sampling_rate),
                      lr_decay(opt, ctx.epochs, p, True, inner_lr=True), zero_grad)


def get_objective(name: str, where: str = "") -> type[Objective]:
    return OBJECTIVES.get(name, where)


# ----------------------------------------------------------------------------- matched controls
#
# The DAM recipes differ from CE fine-tuning (``ce_ft``: Adam on shuffled batches) in three
# things at once: the batches (DualSampler oversamples the minority class, and its "epoch" has
# its own number of steps), the optimizer (PESG / PDSCA with epoch_decay and gradient clipping)
# and the loss. Each control below changes one thing less than the DAM recipe, so the paired
# differences of a chain ce_ft -> ce_dual -> ce_pesg -> aucm split DAM - ce_ft into a sampler,
# an optimizer and a loss effect (bench.analysis). A suite matches a control's hyperparameters to
# its treatment with ``recipes.<name>.match`` (bench.config), never by copying numbers by hand.


def _quiet(factory):
    """LibAUC's optimizers print when built without an AUC loss ('AUCMLoss is not found!');
    the library has no switch for it, and a suite's log should not carry it for every cell."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return factory()


@OBJECTIVES.register("ce_dual")
class CrossEntropyDualSampler(Objective):
    r"""Sampler-matched control: CE with Adam on DualSampler batches.

    .. math:: \min_w -\frac1{|B|}\sum_{i\in B} y_i\log\sigma(h_w(x_i)) + (1-y_i)\log(1-\sigma(h_w(x_i)))

    where every batch :math:`B` holds ``sampling_rate`` positives (LibAUC's DualSampler, the
    sampler of the DAM recipes). Everything else is ``ce``: Adam, the LR schedule, the loss.
    With the DAM recipe's ``sampling_rate`` and batch size, an epoch has exactly its number of
    optimizer steps, so ``ce_dual − ce`` is the effect of the batches alone.

    Args (``objectives.ce_dual``): lr, weight_decay, decay_epochs, decay_factor (as ``ce``);
        sampling_rate: share of positives per batch (match it to the DAM recipe's).

    Practical tips: match ``sampling_rate`` with ``recipes.<name>.match: {recipe: <dam>,
    params: [sampling_rate]}`` and keep the Adam LR of ``ce_ft``.

    Reference: the sampler of Yuan et al., ICCV 2021 (LibAUC ``DualSampler``).
    """

    name = "ce_dual"
    bce = True
    Params = SampledParams

    @classmethod
    def build(cls, model, p, ctx):
        opt = ctx.adam(model.parameters(), p.lr, p.weight_decay)
        return Recipe(ctx.bce(), opt, sampler_batches(ctx, p.sampling_rate), lr_decay(opt, ctx.epochs, p, False))


@OBJECTIVES.register("ce_pesg")
class CrossEntropyPESG(Objective):
    r"""Optimizer-matched control of ``aucm``: CE optimized by PESG on DualSampler batches.

    PESG's primal step on the network weights,

    .. math:: w \leftarrow w - \eta\,\big(\mathrm{clip}(\nabla_w L) + \lambda_0 (w - w_{ref}) + \lambda w\big)
              \text{ (with momentum)},

    applied to the CE loss :math:`L` instead of AUCM: the same step size, ``epoch_decay``
    :math:`\lambda_0` (with the reference re-anchored at every LR decay through
    ``update_regularizer``), weight decay, momentum and clipping as the ``aucm`` recipe. So
    ``aucm − ce_pesg`` is the effect of the AUC loss alone. (PESG's dual variable and a, b belong
    to the AUC loss; without it there are none.)

    Args (``objectives.ce_pesg``): lr, epoch_decay, weight_decay, momentum, sampling_rate,
        decay_epochs, decay_factor -- match them all to the ``aucm`` recipe (``match: all``).

    Reference: Yuan et al., "Large-scale Robust Deep AUC Maximization", ICCV 2021 (PESG).
    """

    name = "ce_pesg"
    bce = True

    @dataclass(frozen=True)
    class Params(SampledParams):
        epoch_decay: float
        momentum: float

    multilabel = "a matched control for the binary DAM recipes only"

    @classmethod
    def build(cls, model, p, ctx):
        from libauc.optimizers import PESG

        opt = _quiet(lambda: PESG(model.parameters(), loss_fn=None, lr=p.lr, epoch_decay=p.epoch_decay,
                                  weight_decay=p.weight_decay, momentum=p.momentum, verbose=False, device=ctx.device))
        return Recipe(ctx.bce(), opt, sampler_batches(ctx, p.sampling_rate), lr_decay(opt, ctx.epochs, p, True))


@OBJECTIVES.register("ce_pdsca")
class CrossEntropyPDSCA(Objective):
    r"""Optimizer-matched control of ``compauc``: every step is PDSCA's CE branch.

    ``compauc`` alternates ``k`` CE steps (PDSCA's inner update: step size ``lr0`` = lr, then
    the weights' moving average with ``beta1``) with ``k`` AUC steps. Here every step is the CE
    step, with the same LR, ``epoch_decay``, weight decay, ``beta1``, schedule and batches, so
    ``compauc − ce_pdsca`` is what the AUC steps add.

    Args (``objectives.ce_pdsca``): lr, beta1, epoch_decay, weight_decay, sampling_rate,
        decay_epochs, decay_factor -- match them to the ``compauc`` recipe.

    Tips: PDSCA picks the CE branch iff its loss's ``alpha.grad is None``; the CE loss never
    gives alpha a gradient, so every step takes it (see :class:`CompositionalAUC`).

    Reference: Yuan et al., "Compositional Training for End-to-End Deep AUC Maximization", ICLR 2022.
    """

    name = "ce_pdsca"
    bce = True
    multilabel = "a matched control for the binary DAM recipes only"

    @dataclass(frozen=True)
    class Params(SampledParams):
        beta1: float
        epoch_decay: float

    @classmethod
    def build(cls, model, p, ctx):
        from libauc.losses import CompositionalAUCLoss
        from libauc.optimizers import PDSCA

        # PDSCA reads a, b and alpha from an AUC loss object; it is built only to carry them
        # (alpha never gets a gradient, so every step takes the CE branch).
        holder = CompositionalAUCLoss(device=ctx.device)
        opt = PDSCA(model.parameters(), loss_fn=holder, lr=p.lr, beta1=p.beta1, beta2=0.0, epoch_decay=p.epoch_decay,
                    weight_decay=p.weight_decay, verbose=False, device=ctx.device)
        return Recipe(ctx.bce(), opt, sampler_batches(ctx, p.sampling_rate),
                      lr_decay(opt, ctx.epochs, p, True, inner_lr=True))

"""``fit(cell, ...)``: train one model, keep the best-on-validation state. No MLflow here.

Selection uses validation data only: after every epoch the model is scored on the
validation split and the state with the highest validation AUC is kept (ties keep the
earlier epoch). The test split is never touched here -- ``fit`` is not even given it.

Weight averaging (``train.ema`` or ``train.swa``) changes *which* network is scored: with EMA
every epoch's candidate is the running average; with SWA the candidates of the last ``swa``
share of epochs are the running average of those epochs' weights (BatchNorm statistics
recomputed on the training set), earlier candidates are the raw weights.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from tqdm.auto import tqdm

from bench.augment import AUGMENTATIONS
from bench.config import Cell
from bench.device import resolve_path
from bench.data import DatasetSpec, Protocol, Split, eval_x_scale, scale, train_targets
from bench.errors import TrainingDiverged
from bench.evaluate import auc, auprc, autocast, predict, to_label1
from bench.models import as_input, load_model
from bench import techniques as TQ
from bench.objectives import TrainContext, get_objective
from bench.pretrain import own_block

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_deterministic(on: bool) -> None:
    """``train.deterministic``: torch's deterministic algorithms (an op without one raises, naming
    itself), cuDNN without autotuning, and the cuBLAS workspace setting CUDA >= 10.2 needs for
    reproducible GEMMs. Off restores torch's defaults, so one process can run both kinds of cell."""
    import os

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


@dataclass
class Candidate:
    """A model chosen on validation: its epoch, validation AUC and validation scores."""

    model: torch.nn.Module
    epoch: int
    val_auc: float
    val_scores: np.ndarray


@dataclass
class FitResult:
    model: torch.nn.Module  # holds the selected (best validation AUC) weights
    best_epoch: int
    best_val_auc: float
    val_scores: np.ndarray  # the selected model's validation scores (sampler class), for thresholds
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    train_samples: int = 0
    bf16: bool = False
    stopped_early: bool = False
    optimizer_steps: int = 0
    # Fine-tuning only, and only when validation kept the starting checkpoint (best_epoch 0, "the
    # gate"): the best fine-tuned epoch (>= 1) on validation, the "ungated" candidate. Both
    # candidates are fixed by validation alone; the runner scores each on test once.
    ungated: Candidate | None = None
    path: str = ""  # the execution path it ran on (bench.device.ExecPath.label): recorded with the run

    @property
    def gated(self) -> bool:
        return self.ungated is not None


def swa_start_epoch(epochs: int, share: float) -> int:
    """First epoch (1-based) whose weights enter the SWA average: the last ``share`` of the budget."""
    return epochs - max(1, math.ceil(share * epochs)) + 1


@dataclass
class Kept:
    """A state validation chose: its epoch, validation AUC, a copy of its weights, its validation scores."""

    epoch: int = 0
    val_auc: float = -math.inf
    state: dict | None = None
    scores: np.ndarray | None = None


def weights(net: torch.nn.Module) -> dict:
    # a copy, as training goes on in place; an AveragedModel's own weights, so the plain model loads them
    return copy.deepcopy((net.module if isinstance(net, AveragedModel) else net).state_dict())


@dataclass
class FitState:
    """Everything ``fit`` changes as it trains: the selection, early stopping, the counters."""

    finetune: bool  # epoch 0 is the starting checkpoint
    best: Kept = field(default_factory=Kept)
    ungated: Kept = field(default_factory=Kept)  # fine-tunes only: the best epoch >= 1
    bad_epochs: int = 0  # epochs since the best, for train.patience
    stopped: bool = False
    history: list = field(default_factory=list)
    samples: int = 0
    steps: int = 0
    t_train: float = 0.0

    def add(self, record: dict, on_epoch: Callable[[dict], None] | None) -> None:
        self.history.append(record)
        if on_epoch is not None:
            on_epoch(record)

    def select(self, epoch: int, net: torch.nn.Module, record: dict, scores: np.ndarray) -> bool:
        """Keep ``net`` if no earlier epoch beat or tied it on validation; True if kept."""
        val_auc, state = record["val_auc"], None
        if self.finetune and epoch >= 1 and val_auc > self.ungated.val_auc:
            state = weights(net)
            self.ungated = Kept(epoch, val_auc, state, scores)
        if val_auc > self.best.val_auc:  # strictly: ties keep the earlier epoch
            self.best = Kept(epoch, val_auc, state if state is not None else weights(net), scores)
            return True
        return False


@dataclass
class Batches:
    """The training split as the model sees it: augmented, scaled, in the model's memory layout.

    Augmentation draws from its own streams -- ``g`` (batch augmentation, voxel scale) and
    ``raw_rng`` (pixel-level corruptions) -- seeded by the cell and independent of the samplers',
    so a cell replays bit for bit; their draws per batch come in a fixed order.
    """

    cell: Cell
    spec: DatasetSpec
    x_cpu: torch.Tensor  # uint8; pixel-level corruptions run on the stored images, on the CPU
    x: torch.Tensor  # the same on the device, so batches never leave it
    channels_last: bool  # the model's layout (bench.device.ExecPath)
    device: torch.device

    def __post_init__(self):
        self.aug = AUGMENTATIONS.get(self.cell.aug)
        self.g = torch.Generator(device=self.device).manual_seed(self.cell.seed)
        self.raw_rng = np.random.default_rng(self.cell.seed) if self.aug.raw is not None else None
        self.voxel_scale = self.cell.train.voxel_scale and self.spec.shape_mask

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return as_input(x, self.channels_last)

    def epoch(self, recipe, epoch: int):
        """(x, indices, task) per step of ``epoch``, in the recipe's order; all on the device."""
        for idx, task in recipe.batches(epoch):
            idx_dev = idx.to(self.device, non_blocking=True)
            if self.aug.raw is not None:
                xb = self.aug.raw(self.x_cpu[idx], self.raw_rng, self.spec.flag).to(self.device, non_blocking=True)
            else:
                xb = self.x[idx_dev]
            x = scale(xb, self.spec.is_3d)
            if self.aug.batch is not None:
                x = self.aug.batch(x, self.g, self.spec.is_3d)
            if self.voxel_scale:  # MedMNIST's shape transform: x * U(0, 1) per volume
                x = x * torch.rand(x.shape[0], *([1] * (x.ndim - 1)), generator=self.g, device=self.device)
            yield self.layout(x), idx_dev, None if task is None else task.to(self.device, non_blocking=True)

    def plain(self):
        """In order and unaugmented, scaled as for evaluation: what SWA's BatchNorm statistics come from."""
        bs, x_scale = self.cell.train.eval_batch_size, eval_x_scale(self.cell.train.voxel_scale, self.spec)
        for i in range(0, len(self.x), bs):
            yield self.layout(scale(self.x[i : i + bs], self.spec.is_3d) * x_scale)


def train_step(model, recipe, x, y, idx, task, device: torch.device, bf16: bool) -> torch.Tensor:
    with autocast(device, bf16):
        logits = model(x)
    # LibAUC's losses square and compare scores: do that in fp32, never in bf16
    loss = recipe.loss(logits.float(), y, idx, task)
    recipe.zero_grad()
    loss.backward()
    recipe.optimizer.step()
    # stays on the device: the loop checks for divergence once per epoch, not once per step
    return loss.detach().reshape(())  # LibAUC losses may be shaped (1,)


def epoch_loss(cell: Cell, epoch: int, step_losses: list, device: torch.device) -> float:
    """Mean training loss of the epoch; a non-finite step ends the cell, naming its epoch and step."""
    losses = torch.stack(step_losses) if step_losses else torch.zeros(1, device=device)
    finite = torch.isfinite(losses)
    if not bool(finite.all()):  # the epoch's one device sync
        step = int((~finite).nonzero()[0, 0]) + 1
        raise TrainingDiverged(
            f"{cell.run_name}: loss became {float(losses[step - 1])} at epoch {epoch}, step {step}; "
            f"lower the learning rate of '{cell.objective}' or check the data"
        )
    return float(losses.mean())


@dataclass
class Validation:
    """Scores networks on the validation split: the only data selection ever sees."""

    cell: Cell
    spec: DatasetSpec
    split: Split  # on the device
    y: np.ndarray
    sampler_label: int
    positive_label: int
    device: torch.device
    bf16: bool

    def score(self, net, epoch: int, train_loss: float, lr: float, t0: float) -> tuple[dict, np.ndarray]:
        """The epoch's record and validation scores; non-finite scores end the cell."""
        cfg = self.cell.train
        x_scale = eval_x_scale(cfg.voxel_scale, self.spec)
        s_val = predict(net, self.split, self.spec.is_3d, cfg.eval_batch_size, self.device, self.bf16, x_scale, cfg.tta)
        if not np.isfinite(s_val).all():
            raise TrainingDiverged(
                f"{self.cell.run_name}: the model's validation scores became non-finite at epoch {epoch}; "
                f"lower the learning rate of '{self.cell.objective}' or use --precision fp32"
            )
        p1 = to_label1(s_val, self.sampler_label)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_auc": auc(self.y, p1),
            "val_auprc": auprc(self.y, p1, self.positive_label),
            "lr": lr,
            "epoch_seconds": time.perf_counter() - t0,
        }
        return record, s_val


def _on(t, device):
    return None if t is None else t.to(device)


def current_lr(recipe) -> float:
    return float(recipe.optimizer.param_groups[0]["lr"])


def averager(model: torch.nn.Module, cfg) -> tuple[AveragedModel | None, int | None]:
    """The running average of the weights scored instead of the raw ones (train.ema, train.swa)
    and, for SWA, the first epoch it averages (earlier epochs score the raw weights)."""
    if cfg.ema > 0:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True), None
    if cfg.swa > 0:
        return AveragedModel(model), swa_start_epoch(cfg.epochs, cfg.swa)
    return None, None


def fit(
    cell: Cell,
    proto: Protocol,
    spec: DatasetSpec,
    sampler_label: int,
    positive_label: int | None = None,
    device: torch.device | None = None,
    init_state: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    union=None,
) -> FitResult:
    """Train ``cell`` and return the state with the best validation AUC.

    The model scores ``sampler_label`` (the training split's minority class); ``positive_label``
    (the clinically positive class) only changes the reported validation AUPRC.

    GPU path: the uint8 splits move to the device once, augmentation runs there, and the loop
    never waits for the device inside an epoch -- losses stay on the device and are checked for
    NaN/inf once per epoch (a diverged step is still reported with its epoch and step).

    Techniques (``cell.techniques``, :mod:`bench.techniques`) hook in at four places: the network
    (dropout, init), the CE loss (class weights, label smoothing, via the objective's context),
    the batch (mixup/CutMix) and the data (``union``: a pretraining set from :mod:`bench.pretrain`,
    trained with one block of logits per dataset and scored on the cell's own block).
    """
    cfg = cell.train
    xp = resolve_path(cfg.precision, cfg.path, device, spec.dims)
    device, bf16 = xp.device, xp.bf16
    positive_label = sampler_label if positive_label is None else positive_label
    set_deterministic(cfg.deterministic)
    seed_everything(cell.seed)
    build = dict(dims=spec.dims, device=device, channels_last=xp.channels_last)
    opts = TQ.Options.of(cell.techniques)
    n_out = union.n_outputs if union is not None else spec.n_labels
    model = load_model(cell.model, spec.n_channels, n_out, state=init_state, **build)
    if init_state is None and opts.init is not None:  # pretrained start (draws nothing from the RNGs)
        model.load_state_dict(TQ.initial_state(opts, cell.model, model))
    TQ.add_dropout(model, opts.dropout)
    head_keys = TQ.head_keys(model)
    if union is not None:  # train on every block; validation and test see the cell's own block only
        lo, hi = union.block
        model.register_forward_hook(lambda m, args, out: out if m.training else out[:, lo:hi])

    objective = get_objective(cell.objective)
    objective.check_task(spec.task == "multilabel")
    train_x = proto.train.x if union is None else union.x
    train, val = train_x.to(device), proto.val.to(device)
    targets_cpu = train_targets(proto.train.y, sampler_label) if union is None else union.targets
    targets = targets_cpu.to(device)
    labels = targets_cpu.numpy().astype(np.int64)
    ctx = TrainContext(labels[:, 0] if labels.shape[1] == 1 else labels, cfg.epochs, cfg.batch_size, cell.seed, device,
                       fused=xp.fused,
                       class_weights=_on(TQ.class_weights(labels, opts.class_weight), device), label_smoothing=opts.label_smoothing,
                       mask=None if union is None else union.mask.to(device))
    recipe = objective.build(model, objective.Params(**cell.params_dict), ctx)
    averaged, swa_from = averager(model, cfg)
    batches = Batches(cell, spec, train_x, train, xp.channels_last, device)
    mixer = TQ.Mixer.of(opts, cell.seed, device)
    validation = Validation(cell, spec, val, proto.val.y.numpy().astype(int), sampler_label, positive_label, device, bf16)
    st = FitState(finetune=init_state is not None)

    if st.finetune:
        # A fine-tune scores its starting checkpoint as epoch 0 so that validation can keep the
        # source model when fine-tuning does not improve it ("the gate"): the two-stage recipe is
        # then never worse than its source on validation, by construction.
        record, s_val = validation.score(model, 0, float("nan"), current_lr(recipe), time.perf_counter())
        st.add(record, on_epoch)
        st.select(0, model, record, s_val)
    bar = tqdm(range(1, cfg.epochs + 1), desc=cell.run_name, unit="ep", disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        step_losses = []
        for x, idx, task in batches.epoch(recipe, epoch):
            y = targets[idx]
            if mixer is not None:
                x, y = mixer(x, y)
            step_losses.append(train_step(model, recipe, x, y, idx, task, device, bf16))
            st.steps += 1
            st.samples += len(idx)
            if cfg.ema > 0:
                averaged.update_parameters(model)
        train_loss = epoch_loss(cell, epoch, step_losses, device)
        recipe.end_epoch(epoch)
        scored = model
        if swa_from is not None and epoch >= swa_from:
            averaged.update_parameters(model)
            # averaged weights need BatchNorm statistics from data, not the average of the members'
            # running stats (Izmailov et al., 2018); update_bn makes one cumulative pass
            with autocast(device, bf16):
                update_bn(batches.plain(), averaged)
            scored = averaged
        elif cfg.ema > 0:
            scored = averaged
        st.t_train += time.perf_counter() - t0
        record, s_val = validation.score(scored, epoch, train_loss, current_lr(recipe), t0)
        st.add(record, on_epoch)
        bar.set_postfix(loss=f"{train_loss:.4f}", val_auc=f"{record['val_auc']:.4f}")
        if not progress and (epoch % max(1, cfg.epochs // 10) == 0 or epoch == cfg.epochs):
            # without a progress bar (CI, nohup) still say where we are, ~10 lines per cell
            log.info("%s epoch %d/%d: loss %.4f, val AUC %.4f (%.1fs)", cell.run_name, epoch, cfg.epochs,
                     train_loss, record["val_auc"], record["epoch_seconds"])
        if st.select(epoch, scored, record, s_val):
            st.bad_epochs = 0
        else:
            st.bad_epochs += 1
            if cfg.patience and st.bad_epochs >= cfg.patience:
                st.stopped = True
                log.info("%s: early stop at epoch %d (best val AUC %.4f at %d)", cell.run_name, epoch,
                         st.best.val_auc, st.best.epoch)
                break
    bar.close()

    best, ungated = st.best, None

    def own(state):  # a pretraining union's checkpoint keeps the cell's block: a plain model of its dataset
        return state if union is None else own_block(state, head_keys, union.block)

    final = load_model(cell.model, spec.n_channels, spec.n_labels, state=own(best.state), **build)
    if best.epoch == 0 and st.ungated.state is not None:  # the gate kept the checkpoint
        u = st.ungated
        ungated = Candidate(load_model(cell.model, spec.n_channels, spec.n_labels, state=own(u.state), **build),
                            u.epoch, u.val_auc, u.scores)
    return FitResult(final, best.epoch, best.val_auc, best.scores, st.history, st.t_train, st.samples, bf16,
                     st.stopped, st.steps, ungated, xp.label)

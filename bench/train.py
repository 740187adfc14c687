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
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tqdm.auto import tqdm

from bench.augment import AUGMENTATIONS
from bench.config import Cell
from bench.data import DatasetSpec, Protocol, eval_x_scale, scale
from bench.errors import TrainingDiverged
from bench.evaluate import auc, auprc, autocast, predict, to_label1
from bench.models import load_model, memory_format, to_memory_format  # noqa: F401  (layout helpers live in models)
from bench.objectives import TrainContext, get_objective

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


def select_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls are native, so autocast pays off (~1.8x here)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device, dims: int = 2) -> bool:
    """Whether to train/evaluate under bf16 autocast.

    3D models on CPU always use fp32: in torch 2.14.1 the CPU bf16 Conv3d backward returns
    non-deterministic gradients (differences up to 1e37 between identical calls, measured
    here) and training turns NaN within a few steps. 2D convolutions in bf16 give identical
    gradients call after call, and are ~2x faster.
    """
    if precision == "fp32":
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = cpu_has_bf16() and dims == 2
    if precision == "bf16" and not supported:
        log.warning("bf16 requested but not reliable on %s for %dD models; using fp32", device, dims)
    return supported


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

    @property
    def gated(self) -> bool:
        return self.ungated is not None


def train_targets(y: torch.Tensor, sampler_label: int) -> torch.Tensor:
    """Official labels (N, L) -> float targets of the class the model scores (see bench.data)."""
    return (y == sampler_label).float() if y.shape[1] == 1 else y.float()


def swa_start_epoch(epochs: int, share: float) -> int:
    """First epoch (1-based) whose weights enter the SWA average: the last ``share`` of the budget."""
    return epochs - max(1, math.ceil(share * epochs)) + 1


@torch.no_grad()
def recompute_bn(net: torch.nn.Module, batches, device: torch.device, bf16: bool) -> None:
    """BatchNorm statistics of averaged weights must come from data, not from averaging the
    members' running stats (Izmailov et al., 2018): one pass over the (unaugmented) training set
    with cumulative averaging, as ``torch.optim.swa_utils.update_bn`` does."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = net.training
    net.train()
    for x in batches:
        with autocast(device, bf16):
            net(x)
    for m in norms:
        m.momentum = momenta[m]
    net.train(was_training)


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
) -> FitResult:
    """Train ``cell`` and return the state with the best validation AUC.

    The model scores ``sampler_label`` (the training split's minority class); ``positive_label``
    (the clinically positive class) only changes the reported validation AUPRC.

    GPU path: the uint8 splits move to the device once, augmentation runs there, and the loop
    never waits for the device inside an epoch -- losses stay on the device and are checked for
    NaN/inf once per epoch (a diverged step is still reported with its epoch and step).
    """
    cfg = cell.train
    device = device or select_device()
    positive_label = sampler_label if positive_label is None else positive_label
    bf16 = use_bf16(cfg.precision, device, spec.dims)
    set_deterministic(cfg.deterministic)
    seed_everything(cell.seed)
    build = dict(dims=spec.dims, device=device, bf16=bf16)
    model = load_model(cell.model, spec.n_channels, spec.n_labels, state=init_state, **build)

    objective = get_objective(cell.objective)
    objective.check_task(spec.task == "multilabel")
    train, val = proto.train.to(device), proto.val.to(device)
    targets_cpu = train_targets(proto.train.y, sampler_label)
    targets = targets_cpu.to(device)
    labels = targets_cpu.numpy().astype(np.int64)
    ctx = TrainContext(labels[:, 0] if spec.task == "binary" else labels, cfg.epochs, cfg.batch_size, cell.seed, device)
    recipe = objective.build(model, objective.Params(**cell.params_dict), ctx)

    averaged, swa_from = None, None
    if cfg.ema > 0:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    elif cfg.swa > 0:
        averaged, swa_from = AveragedModel(model), swa_start_epoch(cfg.epochs, cfg.swa)

    aug = AUGMENTATIONS.get(cell.aug)
    # augmentation stream, independent of the samplers; on the data's device so batches stay there
    g = torch.Generator(device=device).manual_seed(cell.seed)
    raw_rng = np.random.default_rng(cell.seed) if aug.raw is not None else None
    voxel_scale = cfg.voxel_scale and spec.shape_mask
    y_val = proto.val.y.numpy().astype(int)
    best_auc, best_epoch, best_state, bad_epochs, best_scores = -math.inf, 0, None, 0, None
    # the best fine-tuned epoch (>= 1) of a fine-tuning cell: its "ungated" candidate
    u_auc, u_epoch, u_state, u_scores = -math.inf, 0, None, None
    history, samples, t_train, steps = [], 0, 0.0, 0
    stopped = False
    x_scale = eval_x_scale(cfg.voxel_scale, spec)

    def consider(epoch: int, net, record: dict, s_val: np.ndarray) -> bool:
        """Keep the state if it is the best on validation so far; True if it is."""
        nonlocal best_auc, best_epoch, best_state, best_scores, u_auc, u_epoch, u_state, u_scores
        state = None
        if init_state is not None and epoch >= 1 and record["val_auc"] > u_auc:
            state = copy.deepcopy((net.module if isinstance(net, AveragedModel) else net).state_dict())
            u_auc, u_epoch, u_state, u_scores = record["val_auc"], epoch, state, s_val
        if record["val_auc"] > best_auc:
            best_auc, best_epoch, best_scores = record["val_auc"], epoch, s_val
            best_state = state or copy.deepcopy((net.module if isinstance(net, AveragedModel) else net).state_dict())
            return True
        return False

    def score_epoch(net, epoch: int, train_loss: float, t0: float) -> tuple[dict, np.ndarray]:
        """Score ``net`` on validation, record and report the epoch; non-finite scores end the cell."""
        s_val = predict(net, val, spec.is_3d, cfg.eval_batch_size, device, bf16, x_scale, cfg.tta)
        if not np.isfinite(s_val).all():
            raise TrainingDiverged(
                f"{cell.run_name}: the model's validation scores became non-finite at epoch {epoch}; "
                f"lower the learning rate of '{cell.objective}' or use --precision fp32"
            )
        p1 = to_label1(s_val, sampler_label)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_auc": auc(y_val, p1),
            "val_auprc": auprc(y_val, p1, positive_label),
            "lr": float(recipe.optimizer.param_groups[0]["lr"]),
            "epoch_seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        return record, s_val

    def plain_batches():
        """The training set in order, scaled, without augmentation (BatchNorm statistics of SWA)."""
        for i in range(0, len(train), cfg.eval_batch_size):
            x = scale(train.x[i : i + cfg.eval_batch_size], spec.is_3d) * x_scale
            yield x.contiguous(memory_format=memory_format(spec.dims)) if bf16 else x

    if init_state is not None:
        # A fine-tuning cell scores its starting checkpoint as "epoch 0", so that selection on
        # validation can keep the source model when fine-tuning does not improve it (the
        # two-stage recipe is then never worse than its source on validation, by construction).
        consider(0, model, *score_epoch(model, 0, float("nan"), time.perf_counter()))
    bar = tqdm(range(1, cfg.epochs + 1), desc=cell.run_name, unit="ep", disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        step_losses = []
        for idx, task in recipe.batches(epoch):
            idx_dev = idx.to(device, non_blocking=True)
            if aug.raw is not None:  # pixel-level corruptions run on the stored uint8 images (CPU)
                xb = aug.raw(proto.train.x[idx], raw_rng, spec.flag).to(device, non_blocking=True)
            else:
                xb = train.x[idx_dev]
            x = scale(xb, spec.is_3d)
            if aug.batch is not None:
                x = aug.batch(x, g, spec.is_3d)
            if voxel_scale:  # MedMNIST's shape transform: x * U(0, 1) per volume
                x = x * torch.rand(x.shape[0], *([1] * (x.ndim - 1)), generator=g, device=device)
            if bf16:
                x = x.contiguous(memory_format=memory_format(spec.dims))
            with autocast(device, bf16):
                logits = model(x)
            # LibAUC's losses square and compare scores: do that in fp32, never in bf16
            loss = recipe.loss(logits.float(), targets[idx_dev], idx_dev,
                               None if task is None else task.to(device, non_blocking=True))
            recipe.zero_grad()
            loss.backward()
            recipe.optimizer.step()
            steps += 1
            if cfg.ema > 0:
                averaged.update_parameters(model)
            step_losses.append(loss.detach().reshape(()))  # LibAUC losses may be shaped (1,)
            samples += len(idx)
        losses = torch.stack(step_losses) if step_losses else torch.zeros(1, device=device)
        finite = torch.isfinite(losses)
        if not bool(finite.all()):  # one device sync per epoch, not per step
            step = int((~finite).nonzero()[0, 0]) + 1
            raise TrainingDiverged(
                f"{cell.run_name}: loss became {float(losses[step - 1])} at epoch {epoch}, step {step}; "
                f"lower the learning rate of '{cell.objective}' or check the data"
            )
        recipe.end_epoch(epoch)
        scored = model
        if swa_from is not None and epoch >= swa_from:
            averaged.update_parameters(model)
            recompute_bn(averaged, plain_batches(), device, bf16)
            scored = averaged
        elif cfg.ema > 0:
            scored = averaged
        t_train += time.perf_counter() - t0
        record, s_val = score_epoch(scored, epoch, float(losses.mean()), t0)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_auc=f"{record['val_auc']:.4f}")
        if not progress and (epoch % max(1, cfg.epochs // 10) == 0 or epoch == cfg.epochs):
            # without a progress bar (CI, nohup) still say where we are, ~10 lines per cell
            log.info("%s epoch %d/%d: loss %.4f, val AUC %.4f (%.1fs)", cell.run_name, epoch, cfg.epochs,
                     record["train_loss"], record["val_auc"], record["epoch_seconds"])
        if consider(epoch, scored, record, s_val):
            bad_epochs = 0
        else:
            bad_epochs += 1
            if cfg.patience and bad_epochs >= cfg.patience:
                stopped = True
                log.info("%s: early stop at epoch %d (best val AUC %.4f at %d)", cell.run_name, epoch, best_auc, best_epoch)
                break
    bar.close()
    final = load_model(cell.model, spec.n_channels, spec.n_labels, state=best_state, **build)
    ungated = None
    if best_epoch == 0 and u_state is not None:
        ungated = Candidate(load_model(cell.model, spec.n_channels, spec.n_labels, state=u_state, **build),
                            u_epoch, u_auc, u_scores)
    return FitResult(final, best_epoch, best_auc, best_scores, history, t_train, samples, bf16, stopped, steps, ungated)

"""Generalization techniques: validated, named options a recipe adds on top of its loss.

A recipe declares them by name (``recipes.<name>.techniques``)::

    recipes:
      ce_dropout: {objective: ce, techniques: {dropout: 0.3}}
      ce_mixup:   {objective: ce, techniques: {mixup: 0.2}}
      aucm_ft_mixup: {objective: aucm, init_from: ce_mixup}   # the AUC stage itself has no soft targets

Each technique is a registered class (:data:`TECHNIQUES`): ``check`` turns the YAML value into
the canonical, hashable value that enters the cell id (only when a technique is set, so the ids
of cells without techniques are what they were), and says in one line why a value or a
combination is refused. What a technique *does* lives here too, as small functions ``bench.train``
and ``bench.objectives`` call: the training loop stays one loop.

Where they act:
  * the network: ``dropout`` (before the classifier), ``init`` (pretrained weights);
  * the CE loss: ``class_weight``, ``label_smoothing`` -- only objectives whose loss is binary
    cross-entropy on logits (``Objective.bce``): the AUC losses compare scores of positives and
    negatives and have neither soft targets nor a per-sample weight to give;
  * the batches: ``mixup``, ``cutmix`` -- soft targets, so again BCE objectives only;
  * the data: ``pretrain`` (a multi-dataset pretraining stage, :mod:`bench.pretrain`).
Weight decay is a hyperparameter of every objective (``params.weight_decay``): search it with
``search:``; it needs no technique.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.registry import Registry

log = logging.getLogger(__name__)
TECHNIQUES: Registry = Registry("technique")


@dataclass(frozen=True)
class Where:
    """What a technique is checked against: the recipe's objective and stage, the dataset and the file."""

    recipe: str
    objective: str
    bce: bool  # the objective's loss is binary cross-entropy on logits
    init_from: str | None
    dims: int
    path: Path

    def at(self, name: str) -> str:
        return f"{self.path}: recipes.{self.recipe}.techniques.{name}"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Technique:
    """Base class: ``name``, a LibAUC-style docstring, and ``check(value, where) -> canonical value``."""

    name: ClassVar[str]
    needs_bce: ClassVar[bool] = False  # acts on the CE loss or its targets

    @classmethod
    def check(cls, value, where: Where):  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def check_objective(cls, where: Where) -> None:
        if cls.needs_bce and not where.bce:
            raise ConfigError(f"{where.at(cls.name)}: '{cls.name}' changes the cross-entropy loss or its targets, "
                              f"and objective '{where.objective}' has no CE loss; use it on a CE recipe (ce, ce_dual, "
                              f"ce_pesg, ce_pdsca), e.g. the source of a two-stage recipe")


def _probability(cls, value, where: Where, low_open: bool, high: float) -> float:
    ok = _number(value) and (value > 0 if low_open else value >= 0) and value < high
    if not ok:
        bound = f"{'(' if low_open else '['}0, {high:g})"
        raise ConfigError(f"{where.at(cls.name)} must be a number in {bound}, got {value!r}")
    return float(value)


@TECHNIQUES.register("dropout")
class Dropout(Technique):
    r"""Dropout on the pooled features, before the classifier (Srivastava et al., JMLR 2014).

    .. math:: \text{logit} = W\,(m \odot z)/(1-p) + b, \quad m_j \sim \text{Bernoulli}(1-p)

    in training; at evaluation the features pass unchanged. It is a forward pre-hook on the
    classifier, so the network's weights and their names are those of the plain model: a
    checkpoint with dropout loads into a model without it and back (a fine-tune may differ).

    Args: ``dropout: p``, the drop probability in (0, 1).

    Tips: ResNets have no dropout of their own; on small sets such as BreastMNIST (546 training
    images) a head dropout of 0.2-0.5 is the usual first regularizer to try. It uses torch's
    global RNG, which ``fit`` seeds per cell, so a cell still replays.
    """

    name = "dropout"

    @classmethod
    def check(cls, value, where):
        return _probability(cls, value, where, low_open=True, high=1.0)


@TECHNIQUES.register("class_weight")
class ClassWeight(Technique):
    r"""Class-weighted binary cross-entropy: each sample's loss is weighted by its class.

    .. math:: \ell = -\frac1n\sum_i w_{y_i}\,[y_i\log\sigma(h_i) + (1-y_i)\log(1-\sigma(h_i))]

    ``balanced`` sets :math:`w_c = n / (2 n_c)` per label from the training split (scikit-learn's
    ``class_weight='balanced'``), so both classes carry the same total weight; a number sets the
    positive (scored) class's weight with the negative class's 1. Soft targets (mixup, label
    smoothing) weight by :math:`y w_1 + (1-y) w_0`.

    Args: ``class_weight: balanced`` or a positive number (the positive class's weight).

    Tips: this is the CE answer to imbalance that DAM answers with DualSampler's oversampling;
    comparing ``ce`` + ``class_weight`` with ``ce_dual`` separates reweighting from resampling.
    """

    name = "class_weight"
    needs_bce = True

    @classmethod
    def check(cls, value, where):
        if value == "balanced":
            return value
        if _number(value) and value > 0:
            return float(value)
        raise ConfigError(f"{where.at(cls.name)} must be 'balanced' or a positive number (the positive class's weight), "
                          f"got {value!r}")


@TECHNIQUES.register("label_smoothing")
class LabelSmoothing(Technique):
    r"""Label smoothing for binary targets (Szegedy et al., CVPR 2016): :math:`y' = y(1-\varepsilon) + \varepsilon/2`.

    Args: ``label_smoothing: eps`` in [0, 0.5).

    Tips: it keeps logits from growing without bound on a small training set; AUC depends on the
    ranking only, so expect it to help calibration more than AUC.
    """

    name = "label_smoothing"
    needs_bce = True

    @classmethod
    def check(cls, value, where):
        return _probability(cls, value, where, low_open=False, high=0.5)


@TECHNIQUES.register("mixup")
class Mixup(Technique):
    r"""mixup (Zhang et al., ICLR 2018): train on convex combinations of pairs of samples.

    .. math:: \tilde x = \lambda x_i + (1-\lambda) x_j,\quad \tilde y = \lambda y_i + (1-\lambda) y_j,
              \quad \lambda \sim \mathrm{Beta}(\alpha, \alpha)

    one :math:`\lambda` per batch, :math:`j` a permutation of the batch. 2D and 3D.

    Args: ``mixup: alpha`` > 0 (0.2 is the paper's ImageNet value; 1.0 mixes uniformly).

    Tips: the mixed targets are soft, so only CE losses take them; for a two-stage DAM recipe put
    mixup on its CE source. Its draws come from a generator of their own, seeded by the cell, so
    a cell without mixup replays exactly as before.
    """

    name = "mixup"
    needs_bce = True

    @classmethod
    def check(cls, value, where):
        if not (_number(value) and value > 0):
            raise ConfigError(f"{where.at(cls.name)} must be a positive number (Beta(alpha, alpha)), got {value!r}")
        return float(value)


@TECHNIQUES.register("cutmix")
class CutMix(Technique):
    r"""CutMix (Yun et al., ICCV 2019): paste a box of another sample; targets mix by its area.

    .. math:: \tilde x = M \odot x_i + (1-M) \odot x_j,\quad \tilde y = \lambda' y_i + (1-\lambda') y_j

    with a box of side :math:`\sqrt{1-\lambda}` of the image (:math:`\lambda \sim \mathrm{Beta}(\alpha,\alpha)`),
    clipped at the border, and :math:`\lambda'` = the share of the image the box leaves to :math:`x_i`.

    Args: ``cutmix: alpha`` > 0 (1.0 in the paper). 2D only.
    """

    name = "cutmix"
    needs_bce = True

    @classmethod
    def check(cls, value, where):
        if where.dims != 2:
            raise ConfigError(f"{where.at(cls.name)}: cutmix pastes 2D boxes; use mixup on 3D datasets")
        return Mixup.check.__func__(cls, value, where)


@TECHNIQUES.register("init")
class Init(Technique):
    r"""Pretrained initialisation: the network starts from given weights instead of a random draw.

    Values:
      * a path to a state-dict file (``torch.save(model.state_dict(), path)``; relative paths are
        relative to the suite file). Its md5 enters the cell id, so other weights are another cell.
      * ``torchvision``: the ImageNet weights torchvision publishes for the model, where it has
        them (``torchvision`` in ``bench/models.yaml``; today ``resnet18``). They are read from
        torch's hub cache or downloaded; offline and not cached, that is a one-line error.

    Every key and shape must match the model, except the classifier (``fc``), which is drawn
    fresh when its shape differs (the weights were trained for other labels); a grayscale model
    takes an RGB stem by summing its input channels (timm's ``adapt_input_conv``). Anything else
    is refused, naming the first key that does not fit.

    Tips: not for a two-stage recipe, whose start is its source's checkpoint (``init_from``).
    """

    name = "init"

    @classmethod
    def check(cls, value, where):
        if where.init_from:
            raise ConfigError(f"{where.at(cls.name)}: recipe '{where.recipe}' starts from its source's checkpoint "
                              f"(init_from: {where.init_from}); init sets the start of a recipe without one")
        if value == "torchvision":
            return value
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where.at(cls.name)} must be 'torchvision' or the path of a state-dict file, got {value!r}")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else (Path(where.path).parent / p)
        if not p.is_file():
            raise ConfigError(f"{where.at(cls.name)}: no weights file {p}; save one with "
                              f"torch.save(model.state_dict(), path) or use init: torchvision")
        return f"{p.resolve()}#md5={file_md5(p)}"


@TECHNIQUES.register("pretrain")
class Pretrain(Technique):
    r"""Multi-dataset pretraining: train on the union of several 2D training splits.

    The cell trains on its own dataset's training split (under its protocol, e.g. a cv5 fold's
    training part) plus the official training splits of the listed datasets, with one block of
    logits per dataset (labels namespaced: BreastMNIST's label never trains PneumoniaMNIST's
    logit), selects on its own dataset's validation split and keeps its own block of the
    classifier -- so its checkpoint is an ordinary model of its dataset, and a normal two-stage
    chain (``init_from``) fine-tunes it. Details and the leakage check: :mod:`bench.pretrain`.

    Args: ``pretrain: [flag, ...]``, other 2D datasets with the same number of channels.

    Tips: no image of the cell's validation or test split may enter the union; the run refuses to
    start if any union image is pixel-identical to one of them.
    """

    name = "pretrain"
    needs_bce = True  # the union's namespaced targets train a CE head

    @classmethod
    def check(cls, value, where):
        from bench import datasets as DS

        if where.init_from:
            raise ConfigError(f"{where.at(cls.name)}: a pretraining stage starts from scratch; put it in the source "
                              f"recipe and let '{where.recipe}' fine-tune it")
        if where.objective != "ce":
            raise ConfigError(f"{where.at(cls.name)}: pretraining uses plain CE (objective: ce), not '{where.objective}'")
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where.at(cls.name)} must be a non-empty list of dataset names, got {value!r}")
        for flag in value:
            if flag not in DS.DATASETS:
                from bench.registry import unknown

                raise unknown("dataset", flag, DS.names(), where=where.at(cls.name))
            if DS.dims_of(flag) != 2:
                raise ConfigError(f"{where.at(cls.name)}: '{flag}' is 3D; the pretraining union is of 2D training splits")
        return tuple(sorted(set(value)))


def resolve(spec, where: Where) -> tuple:
    """``recipes.<name>.techniques`` -> sorted ((name, canonical value), ...); () when absent."""
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        raise ConfigError(f"{where.path}: recipes.{where.recipe}.techniques must be a mapping of technique names to "
                          f"values, e.g. {{dropout: 0.3}}, got {spec!r}")
    out = []
    for name, value in spec.items():
        cls = TECHNIQUES.get(name, where=f"{where.path}: recipes.{where.recipe}.techniques")
        cls.check_objective(where)
        out.append((name, cls.check(value, where)))
    if "mixup" in spec and "cutmix" in spec:
        raise ConfigError(f"{where.path}: recipes.{where.recipe}.techniques: mixup and cutmix both mix batches; keep one")
    return tuple(sorted(out))


def check_cell(techniques: tuple, model_name: str, flag: str, size: int, where: str) -> None:
    """Checks that need the network: ``init`` weights must fit it (at load time, not mid-suite)."""
    opts = Options.of(techniques)
    if opts.init is not None:
        _check_init(opts.init, model_name, flag, size, where)


@lru_cache(maxsize=64)
def _check_init(init: str, model_name: str, flag: str, size: int, where: str) -> None:
    from bench.datasets import get_spec
    from bench.models import create_model

    spec = get_spec(flag, size)
    try:
        initial_state(Options(init=init), model_name, create_model(model_name, spec.n_channels, spec.n_labels))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def file_md5(path: Path) -> str:
    st = Path(path).stat()
    return _md5(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _md5(path: str, size: int, mtime_ns: int) -> str:  # suites resolve a recipe per cell: hash a file once
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Options:
    """A cell's techniques as ``fit`` and the objectives use them (all off by default)."""

    dropout: float = 0.0
    class_weight: Any = None  # 'balanced' | float | None
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    init: str | None = None
    pretrain: tuple = ()

    @classmethod
    def of(cls, techniques: tuple) -> "Options":
        return cls(**dict(techniques))

    @property
    def init_path(self) -> str | None:
        return None if self.init in (None, "torchvision") else self.init.split("#md5=")[0]


# --------------------------------------------------------------------------- what they do (torch)


def class_weights(labels, option) -> torch.Tensor | None:
    """Per-label (w_negative, w_positive) as a (2, L) tensor from the training targets (0/1, (N,) or (N, L))."""
    if option is None:
        return None
    y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    if option == "balanced":
        n1 = y.sum(0).clip(min=1)
        n0 = (len(y) - y.sum(0)).clip(min=1)
        w = np.stack([len(y) / (2 * n0), len(y) / (2 * n1)])
    else:
        w = np.stack([np.ones(y.shape[1]), np.full(y.shape[1], float(option))])
    return torch.as_tensor(w, dtype=torch.float32)


def bce_loss(weights=None, smoothing: float = 0.0, mask=None):
    """``loss(logits, y, idx, task)``: binary cross-entropy on logits with the CE techniques.

    ``weights``: (2, L) class weights (:func:`class_weights`); ``smoothing``: label smoothing;
    ``mask``: (N, L) 0/1 on the device -- which logits a training sample supervises (a
    pretraining union: only its own dataset's). With none of them this is exactly
    ``F.binary_cross_entropy_with_logits(logits, y)``, so plain CE cells are bit-identical.
    """
    def loss(logits, y, idx, task):
        y = y.float()
        w = None
        if weights is not None:  # by the (possibly mixed) hard label, before smoothing
            w = y * weights[1] + (1 - y) * weights[0]  # on the device already (fit moves them once)
        if smoothing:
            y = y * (1 - smoothing) + smoothing / 2
        if mask is not None:
            m = mask[idx].float()
            w = m if w is None else w * m
            return F.binary_cross_entropy_with_logits(logits, y, weight=w, reduction="sum") / m.sum().clamp(min=1)
        return F.binary_cross_entropy_with_logits(logits, y, weight=w)

    return loss


def head(model):
    """The classifier: the model's ``fc`` (every built-in), else its last ``nn.Linear``."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return fc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear classifier for dropout")
    return linears[-1]


def head_keys(model) -> tuple:
    """The state-dict keys of the classifier (:func:`head`): weight and bias."""
    fc = head(model)
    return tuple(f"{n}.{k}" for n, m in model.named_modules() if m is fc for k in ("weight", "bias"))


def add_dropout(model, p: float):
    """Dropout of the classifier's input in training (a forward pre-hook; the weights are unchanged)."""
    if p > 0:
        head(model).register_forward_pre_hook(lambda m, args: (F.dropout(args[0], p, m.training), *args[1:]))
    return model


class Mixer:
    """mixup or CutMix of a batch, with its own generator (seeded by the cell) so that cells
    without them draw exactly what they drew before."""

    OFFSET = 0x6D1C  # the mixer's stream is seed + this: apart from the augmentation streams

    def __init__(self, options: Options, seed: int, device):
        self.alpha = options.mixup or options.cutmix
        self.cut = bool(options.cutmix)
        self.rng = np.random.default_rng(seed + self.OFFSET)  # Beta draws; never numpy's global RNG
        self.g = torch.Generator(device=device).manual_seed(seed + self.OFFSET)

    @classmethod
    def of(cls, options: Options, seed: int, device) -> "Mixer | None":
        return cls(options, seed, device) if (options.mixup or options.cutmix) else None

    def __call__(self, x, y):
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.randperm(x.shape[0], generator=self.g, device=self.g.device).to(x.device)
        if not self.cut:
            return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
        h, w = x.shape[-2:]
        r = math.sqrt(1 - lam)
        ch, cw = int(h * r), int(w * r)
        cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        out = x.clone()
        out[..., y1:y2, x1:x2] = x[perm][..., y1:y2, x1:x2]
        kept = 1 - (y2 - y1) * (x2 - x1) / (h * w)
        return out, kept * y + (1 - kept) * y[perm]


def initial_state(options: Options, model_name: str, model) -> dict | None:
    """The state dict ``init`` starts ``model`` from (fitted to it), or None without ``init``."""
    if options.init is None:
        return None
    if options.init == "torchvision":
        state, source = torchvision_state(model_name), f"torchvision weights of {model_name}"
    else:
        from bench.models import load_checkpoint

        path = options.init_path
        try:
            state = load_checkpoint(path)
        except Exception as exc:  # a pickle of code, a truncated file, not a state dict
            raise ConfigError(f"init: {path} is not a loadable state dict ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); save it with torch.save(model.state_dict(), path)") from None
        source = path
    return fit_state(state, model, source)


def torchvision_state(model_name: str) -> dict:
    """torchvision's published weights for ``model_name`` (``torchvision`` in bench/models.yaml)."""
    from bench.catalog import model_info, model_names

    weights = model_info(model_name).torchvision
    if not weights:
        have = [m for m in model_names() if model_info(m).torchvision]
        raise ConfigError(f"init: torchvision: model '{model_name}' has no torchvision weights (models with them: "
                          f"{', '.join(have) or 'none'}); use init: <path of a state dict>")
    from torchvision.models import get_weight

    try:
        return get_weight(weights).get_state_dict(progress=False)
    except OSError as exc:  # URLError is an OSError: offline and not in torch's hub cache
        raise ConfigError(f"init: torchvision: cannot get {weights} ({str(exc).splitlines()[0][:120]}); on an offline "
                          f"host copy the file into torch's hub cache (~/.cache/torch/hub/checkpoints) or use "
                          f"init: <path of a state dict>") from None


def fit_state(state: dict, model, source: str) -> dict:
    """``state`` made to load into ``model`` strictly: a classifier of another shape is replaced by the
    model's fresh one; an RGB stem into a grayscale model sums its input channels; any other
    missing, unexpected or mis-shaped key is refused, naming the first one."""
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"init: {source} holds no state dict")
    own = model.state_dict()
    fc = set(head_keys(model))
    out, fresh = {}, []
    for key, want in own.items():
        if key not in state:
            raise ConfigError(f"init: {source} does not fit model {type(model).__name__}: it has no key '{key}' "
                              f"(first missing key; it has {len(state)} keys)")
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            if key in fc:
                out[key], fresh = want, fresh + [key]
                continue
            if got.ndim == want.ndim >= 3 and got.shape[1] == 3 and want.shape[1] == 1 and got.shape[0] == want.shape[0] \
                    and got.shape[2:] == want.shape[2:]:
                out[key] = got.sum(1, keepdim=True)  # an RGB stem on grayscale input (timm's adapt_input_conv)
                continue
            raise ConfigError(f"init: {source} does not fit model {type(model).__name__}: '{key}' has shape "
                              f"{tuple(got.shape)}, the model needs {tuple(want.shape)} (first mismatching key)")
        out[key] = got.to(want.dtype)
    extra = [k for k in state if k not in own]
    if extra:
        raise ConfigError(f"init: {source} does not fit model {type(model).__name__}: unexpected key '{extra[0]}' "
                          f"(first of {len(extra)})")
    if fresh:
        log.info("init from %s: classifier %s drawn fresh (the weights' labels differ)", source, ", ".join(fresh))
    return out

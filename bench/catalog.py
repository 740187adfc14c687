"""What the trainer and the leaderboard must agree on, declared once and torch-free.

* :data:`METRICS`: every metric a run reports per split, with its header, direction, how the
  leaderboard aggregates it and whether it is the primary metric (compare lm-evaluation-harness's
  ``metric_list`` entries: ``metric``, ``aggregation``, ``higher_is_better``). ``bench.evaluate``
  computes exactly these names; the leaderboard reads columns, headers and directions from here.
* :func:`model_info`: what a backbone *is* (``bench/models.yaml`` for the built-ins; plugins add
  theirs through ``bench.models.register_model``).
* :func:`paper_row`: which MedMNIST v2 row a group may be compared with (``bench/reference.yaml``).
* Artifact names both sides read and write.

Nothing here imports torch: the leaderboard imports ``bench`` only through this module (and the
torch-free ``bench.errors``/``bench.analysis``/``bench.suitefile``), so a leaderboard renders from
a ``-runs.csv`` on a machine without the training stack.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from bench.registry import unknown

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """One per-split metric. ``aggregation``: how a group summarizes its independent units
    (``mean``: mean ± sample std, fold means first under cv5)."""

    name: str  # the key bench.evaluate returns; runs log it as ``<split>_<name>``
    short: str  # in sentences: "test {short}"
    label: str  # leaderboard column header
    higher_is_better: bool = True
    aggregation: str = "mean"
    primary: bool = False  # the metric selection, pairing and the findings are about
    description: str = ""


METRICS: tuple[Metric, ...] = (
    Metric("auc", "AUC", "test AUC", primary=True,
           description="ROC AUC of the scored class (one-vs-rest mean over labels when multi-label)"),
    Metric("auprc", "AUPRC", "AUPRC", description="average precision of the clinically positive class"),
    Metric("f1", "F1", "F1", description="F1 of the clinically positive class at threshold 0.5"),
    Metric("acc", "ACC", "ACC", description="accuracy at threshold 0.5 (the MedMNIST paper's ACC)"),
    Metric("acc_tuned", "ACC (val thr.)", "ACC (val thr.)", description="accuracy at the threshold that maximizes it on validation"),
    Metric("f1_tuned", "F1 (val thr.)", "F1 (val thr.)", description="F1 at the threshold that maximizes it on validation"),
)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
PRIMARY_METRIC: str = next(m.name for m in METRICS if m.primary)
TEST_METRICS: list[str] = [f"test_{m.name}" for m in METRICS]
COLUMNS: dict[str, str] = {f"test_{m.name}": m.label for m in METRICS}
# the fine-tune's "ungated" candidate (best epoch >= 1 on validation) is scored on these
UNGATED_METRICS: list[str] = ["ungated_test_auc", "ungated_test_auprc"]
CHECKPOINT = "model.pt"  # the selected model's state_dict, an artifact of each cell run that keeps one
UNGATED_SCORES = "ungated_test_scores.csv"  # its per-image test scores, an artifact beside the selected model's


def metric(name: str) -> Metric:
    """The declaration of ``name`` (``auc``) or of a split column (``test_auc``)."""
    for m in METRICS:
        if name in (m.name, f"test_{m.name}", f"val_{m.name}"):
            return m
    raise unknown("metric", name, METRIC_NAMES)

# Under shift (bench.shift) a run logs ``shift_<corruption>_s<k>_auc`` per corrupted set, their plain
# mean ``shift_auc_mean`` (every corruption and severity weighs the same, as in MedMNIST-C and
# ImageNet-C) and ``shift_auc_drop`` = clean test AUC - ``shift_auc_mean`` (positive: AUC lost).
SHIFT_MEAN, SHIFT_DROP = "shift_auc_mean", "shift_auc_drop"
_SHIFT_NAME = re.compile(r"shift_(?P<corruption>.+)_s(?P<severity>[1-5])_auc")


def shift_metric(corruption: str, severity: int) -> str:
    return f"shift_{corruption}_s{severity}_auc"


def parse_shift_metric(name: str) -> tuple[str, int] | None:
    """(corruption, severity) of a per-set metric name; None for any other column."""
    m = _SHIFT_NAME.fullmatch(name)
    return (m["corruption"], int(m["severity"])) if m else None


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    dims: int  # 2 or 3
    paper_faithful: bool  # the paper's architecture (like-for-like comparisons allowed)
    description: str
    paper: str = ""  # the paper model this is (faithful) or stands in for (light variants)
    torchvision: str = ""  # torchvision's pretrained weights for it (techniques: {init: torchvision}), if any


@lru_cache(maxsize=1)
def _builtin_models() -> dict[str, ModelInfo]:
    doc = yaml.safe_load((HERE / "models.yaml").read_text())
    return {name: ModelInfo(**spec) for name, spec in doc.items()}


_registered: dict[str, ModelInfo] = {}  # plugins (bench.models.register_model)


def add_model(name: str, info: ModelInfo) -> None:
    if name in model_names():
        raise ValueError(f"model '{name}' registered twice")
    _registered[name] = info


def remove_model(name: str) -> None:
    """Forget a plugin model (tests that register one)."""
    _registered.pop(name, None)


def model_names() -> list[str]:
    return [*_builtin_models(), *_registered]


def model_info(name: str) -> ModelInfo:
    info = _registered.get(name) or _builtin_models().get(name)
    if info is None:
        raise unknown("model", name, model_names())
    return info


# --------------------------------------------------------------------------- paper rows


@lru_cache(maxsize=1)
def load_reference() -> dict:
    """MedMNIST v2's published test AUC/ACC per dataset and row (``bench/reference.yaml``)."""
    return yaml.safe_load((HERE / "reference.yaml").read_text())


def paper_row(ref: dict, dataset: str, model: str, size: int) -> tuple[str, float, float, bool] | None:
    """(paper row, AUC, ACC, like-for-like) for a group, or None when the paper has no such row.

    The row is the paper model our model is (``ModelInfo.paper``) at the input size the paper
    used for it; a light variant gets its full model's row with like-for-like False. A model
    this process does not know (a plugin not loaded) has no row.
    """
    table = (ref.get("results") or {}).get(dataset)
    if not table or model not in model_names():
        return None
    info = model_info(model)
    if info.paper not in table or ref.get("row_sizes", {}).get(info.paper, 28) != size:
        return None
    auc, acc = table[info.paper]
    return info.paper, auc, acc, info.paper_faithful


def best_row(ref: dict, dataset: str) -> tuple[str, float, float] | None:
    """The paper's best row for ``dataset`` (any method)."""
    table = (ref.get("results") or {}).get(dataset)
    if not table:
        return None
    best = max(table, key=lambda k: table[k][0])
    return best, *table[best]

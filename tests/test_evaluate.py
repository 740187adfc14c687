import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC

from bench import evaluate as E


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 1)) < 0.7).astype(int)
    p1 = np.clip(0.6 * y + rng.random((200, 1)) * 0.7, 0, 1)
    return y, p1


@pytest.mark.parametrize("pos", [0, 1])
def test_binary_auc_acc_equal_medmnist(binary, pos):
    y, p1 = binary
    s = E.score(y, p1, positive_label=pos)
    assert s["auc"] == pytest.approx(getAUC(y, p1, "binary-class"), abs=1e-12)
    assert s["acc"] == pytest.approx(getACC(y, p1, "binary-class"), abs=1e-12)


def test_multilabel_auc_acc_equal_medmnist():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 14)) < 0.1).astype(int)
    y[0], y[1] = 1, 0
    p1 = np.clip(0.3 * y + rng.random((300, 14)) * 0.8, 0, 1)
    s = E.score(y, p1, positive_label=1)
    assert s["auc"] == pytest.approx(getAUC(y, p1, "multi-label, binary-class"), abs=1e-12)
    assert s["acc"] == pytest.approx(getACC(y, p1, "multi-label, binary-class"), abs=1e-12)


def test_positive_class_mapping_is_not_one_minus_auc(binary):
    """A model scoring the minority class (label 0) must give the same AUC as medmnist's."""
    y, p1 = binary
    s_pos0 = 1 - p1  # what a model trained with positive_label=0 outputs
    assert E.auc(y, E.to_label1(s_pos0, 0)) == pytest.approx(getAUC(y, p1, "binary-class"))
    assert E.auc(y, E.to_label1(s_pos0, 0)) > 0.5


def test_auprc_and_f1_are_for_the_positive_class(binary):
    from sklearn.metrics import average_precision_score, f1_score

    y, p1 = binary
    assert E.auprc(y, p1, 0) == pytest.approx(average_precision_score(1 - y[:, 0], 1 - p1[:, 0]))
    assert E.auprc(y, p1, 1) == pytest.approx(average_precision_score(y[:, 0], p1[:, 0]))
    assert E.f1(y, p1, 0) == pytest.approx(f1_score(1 - y[:, 0], (p1[:, 0] <= 0.5).astype(int)))


def test_thresholds_come_from_validation_and_improve_it():
    y = np.array([[0], [0], [0], [1], [1], [1]])
    p1 = np.array([[0.1], [0.15], [0.2], [0.3], [0.35], [0.4]])  # perfectly separable below 0.5
    t = E.tune_thresholds(y, p1, positive_label=1)
    assert 0.2 < t["acc"][0] < 0.3 and 0.2 < t["f1"][0] < 0.3
    s = E.score(y, p1, 1, t)
    assert s["acc"] == 0.5 and s["acc_tuned"] == 1.0 and s["f1_tuned"] == 1.0


def test_threshold_ties_prefer_half():
    y = np.array([[0], [1]])
    p1 = np.array([[0.0], [1.0]])
    assert E.tune_thresholds(y, p1, 1)["acc"][0] == 0.5


def test_every_declared_metric_is_computed_and_nothing_else(binary):
    from bench.catalog import METRIC_NAMES

    y, p1 = binary
    val, test, _ = E.score_val_test(y, p1, y, p1, positive_label=1)
    assert tuple(val) == METRIC_NAMES and tuple(test) == METRIC_NAMES


def _scan(y, p1, score_fn):
    """The O(n^2) reference: score every candidate threshold (0.5 and the midpoints) directly."""
    u = np.unique(p1)
    cands = np.concatenate([[0.5], (u[:-1] + u[1:]) / 2 if len(u) > 1 else []])
    vals = np.array([score_fn(y, p1 > t) for t in cands])
    best = np.flatnonzero(vals >= vals.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


@pytest.mark.parametrize("seed", range(4))
def test_roc_curve_thresholds_equal_the_direct_scan(seed):
    """Ties, one-class labels, float32 scores and either positive class included."""
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    for _ in range(60):
        n = int(rng.integers(1, 30))
        y = (rng.random(n) < rng.random()).astype(int)
        p1 = np.round(rng.random(n), int(rng.integers(1, 3))).astype(rng.choice([np.float32, np.float64]))
        assert E._best_threshold(y, p1, "acc") == _scan(y, p1, accuracy_score)
        for pl in (0, 1):
            f1 = lambda yj, pred, pl=pl: f1_score(yj == pl, pred if pl == 1 else ~pred, zero_division=0)  # noqa: E731
            assert E._best_threshold(y, p1, "f1", pl) == _scan(y, p1, f1)

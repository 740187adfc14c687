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

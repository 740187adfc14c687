import torch

from bench import data as D
from bench.config import base_config, deep_merge, expand, suites_dir
from bench.train import fit, use_bf16
from tests.conftest import make_npz


def _cell(flag, objective, model, **train):
    doc = deep_merge(base_config(), {
        "grid": {"dataset": [flag], "objective": [objective], "aug": [True], "seed": [0], "protocol": ["official"]},
        "train": {"epochs": 2, "batch_size": 16, **train}, "datasets": {flag: {"model": model, "train": {"batch_size": 16}}},
    })
    return expand(doc, suites_dir() / "_base.yaml", lambda f: "")[0]


def test_3d_on_cpu_never_uses_bf16():
    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu, 3) is False and use_bf16("bf16", cpu, 3) is False
    assert use_bf16("fp32", cpu, 2) is False


def test_fit_is_reproducible_and_selects_on_validation(tmp_path):
    make_npz(tmp_path, "adrenalmnist3d", n=(48, 16, 16))
    data = D.load("adrenalmnist3d", tmp_path, allow_unverified=True)
    proto = D.make_protocol(data, "official", None)
    cell = _cell("adrenalmnist3d", "aucm", "resnet18_3d_tiny")
    a = fit(cell, proto, data.spec, data.positive_label, progress=False)
    b = fit(cell, proto, data.spec, data.positive_label, progress=False)
    assert [h["val_auc"] for h in a.history] == [h["val_auc"] for h in b.history]
    assert a.best_val_auc == max(h["val_auc"] for h in a.history)
    assert a.history[a.best_epoch - 1]["val_auc"] == a.best_val_auc
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_early_stopping_and_ema(tmp_path):
    make_npz(tmp_path, "breastmnist", n=(48, 16, 16))
    data = D.load("breastmnist", tmp_path, allow_unverified=True)
    proto = D.make_protocol(data, "official", None)
    cell = _cell("breastmnist", "ce", "resnet18_28", epochs=6, patience=1, ema=0.9)
    res = fit(cell, proto, data.spec, data.positive_label, progress=False)
    assert 1 <= len(res.history) <= 6
    if res.stopped_early:
        assert len(res.history) - res.best_epoch == 1

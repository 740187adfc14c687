"""The runner scores test exactly once, after selection: poisoning the test split must leave
training, every selection step and every validation number unchanged."""
import json

import numpy as np
import pytest
import torch

from bench import data as D
from bench import runner
from bench.config import base_config, expand
from bench.suitefile import deep_merge, suites_dir
from tests.conftest import make_npz


class FakeRun:
    """Records what the runner logs (a stand-in for tracking.RunHandle)."""

    def __init__(self):
        self.tag_log, self.metric_log, self.files = {}, [], {}

    def tags(self, tags):
        self.tag_log.update(tags)

    def metrics(self, metrics, step=0):
        self.metric_log.append((step, dict(metrics)))

    def dataset(self, *args):
        self.tag_log["dataset_input"] = args

    def artifacts(self, folder):
        for p in folder.iterdir():
            self.files[p.name] = p.read_bytes() if p.suffix != ".png" else b""

    def final(self):
        return self.metric_log[-1][1]


def _cell(recipe="ce"):
    doc = deep_merge(base_config(), {
        "grid": {"dataset": ["breastmnist"], "recipe": [recipe], "aug": [True], "seed": [0], "protocol": ["official"]},
        "train": {"epochs": 3, "batch_size": 16, "precision": "fp32"},
    })
    return expand(doc, suites_dir() / "_base.yaml", lambda f: "")[0]


@pytest.mark.parametrize("poison", ["random_labels", "noise_images"])
def test_poisoned_test_split_changes_nothing_but_test_metrics(tmp_path, monkeypatch, poison):
    make_npz(tmp_path, "breastmnist", n=(48, 24, 32))
    clean = D.load("breastmnist", tmp_path, allow_unverified=True)
    rng = np.random.default_rng(1)
    # random validation labels: val AUC moves from epoch to epoch, so selection is not trivial
    v = clean.splits["val"]
    v = D.Split(v.x, torch.from_numpy(rng.permutation(v.y.numpy())))
    clean = D.MedData(clean.spec, clean.path, clean.md5, clean.verified, {**clean.splits, "val": v})
    t = clean.splits["test"]
    if poison == "random_labels":
        bad = D.Split(t.x, torch.from_numpy(rng.integers(0, 2, t.y.shape).astype(np.uint8)))
    else:
        bad = D.Split(torch.from_numpy(rng.integers(0, 256, t.x.shape).astype(np.uint8)), t.y)
    poisoned = D.MedData(clean.spec, clean.path, clean.md5, clean.verified, {**clean.splits, "test": bad})

    def run_with(data):
        monkeypatch.setattr(D, "load", lambda *a, **k: data)
        run = FakeRun()
        runner.execute(_cell("aucm"), run, progress=False)
        return run

    a, b = run_with(clean), run_with(poisoned)
    def per_epoch(r):
        return [{k: v for k, v in m.items() if k != "epoch_seconds"} for step, m in r.metric_log[:-1]]

    assert per_epoch(a) == per_epoch(b)  # training and validation, epoch by epoch
    fa, fb = a.final(), b.final()
    for k in fa:
        if not k.startswith("test_") and k not in ("train_seconds", "train_samples_per_s"):
            assert fa[k] == fb[k], k  # best epoch, val metrics, thresholds
    assert len({m["val_auc"] for m in per_epoch(a)}) > 1  # selection had a real choice
    ca, cb = json.loads(a.files["config.json"]), json.loads(b.files["config.json"])
    assert ca["thresholds"] == cb["thresholds"]
    assert a.files["model.pt"] == b.files["model.pt"]  # the selected checkpoint, byte for byte
    assert any(fa[k] != fb[k] for k in fa if k.startswith("test_"))  # the poison did reach the test numbers


def test_runs_record_the_positive_and_the_sampler_class(tmp_path, monkeypatch):
    make_npz(tmp_path, "pneumoniamnist", n=(48, 16, 16))
    data = D.load("pneumoniamnist", tmp_path, allow_unverified=True)
    # make label 1 (pneumonia) the majority of train, as in the real data
    y = data.splits["train"].y.clone()
    y[: int(0.8 * len(y))] = 1
    data = D.MedData(data.spec, data.path, data.md5, data.verified, {**data.splits, "train": D.Split(data.splits["train"].x, y)})
    assert data.positive_label == 1 and data.sampler_label == 0
    monkeypatch.setattr(D, "load", lambda *a, **k: data)
    run = FakeRun()
    doc = deep_merge(base_config(), {"grid": {"dataset": ["pneumoniamnist"], "recipe": ["ce"], "aug": [False],
                                               "seed": [0], "protocol": ["official"]}, "train": {"epochs": 1, "batch_size": 16}})
    runner.execute(expand(doc, suites_dir() / "_base.yaml", lambda f: "")[0], run, progress=False)
    assert run.tag_log["positive_label"] == 1 and run.tag_log["sampler_label"] == 0
    assert run.tag_log["positive_class"] == "pneumonia"
    assert run.tag_log["dataset_input"][0] == "pneumoniamnist"

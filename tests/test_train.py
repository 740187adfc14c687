import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data as D
from bench.config import base_config, expand
from bench.suitefile import deep_merge, suites_dir
from bench.evaluate import predict
from bench.catalog import model_info
from bench.models import MODELS, create_model
from bench.device import use_bf16
from bench.models import to_memory_format
from bench.train import swa_start_epoch
from tests.conftest import fit_quietly as _fit
from tests.conftest import make_npz


def _cell(flag, objective, model, aug=True, **train):
    doc = deep_merge(base_config(), {
        "grid": {"dataset": [flag], "recipe": [objective], "aug": [aug], "seed": [0], "protocol": ["official"]},
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
    a, b = _fit(cell, data, proto), _fit(cell, data, proto)
    assert [h["val_auc"] for h in a.history] == [h["val_auc"] for h in b.history]
    assert a.best_val_auc == max(h["val_auc"] for h in a.history)
    assert a.history[a.best_epoch - 1]["val_auc"] == a.best_val_auc
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_early_stopping_stops_patience_epochs_after_the_best(breast):
    data, proto = breast
    cell = _cell("breastmnist", "ce", "resnet18_28", aug=False, epochs=12, patience=1, precision="fp32")
    res = _fit(cell, data, proto)
    aucs = [h["val_auc"] for h in res.history]
    # it stops at the first epoch that does not improve on the best so far
    first_drop = next(i for i in range(1, len(aucs)) if aucs[i] <= max(aucs[:i]))
    assert res.stopped_early and len(aucs) == first_drop + 1 < 12
    assert res.best_epoch == int(np.argmax(aucs)) + 1


def test_ema_selects_and_scores_the_averaged_weights(breast, monkeypatch):
    """AveragedModel's first update copies the weights after step 1 and later steps barely move
    an EMA with decay 0.999: the selected model must be that average (~ the step-1 weights),
    not the raw weights after all steps."""
    import bench.objectives as O

    data, proto = breast
    kw = dict(aug=False, epochs=1, precision="fp32")
    raw = _fit(_cell("breastmnist", "ce", "resnet18_28", **kw), data, proto)
    ema = _fit(_cell("breastmnist", "ce", "resnet18_28", ema=0.999, **kw), data, proto)
    first_only = O.shuffled_batches

    def one_step(ctx):
        batches = first_only(ctx)
        return lambda epoch: iter([next(iter(batches(epoch)))])

    monkeypatch.setattr(O, "shuffled_batches", one_step)
    step1 = _fit(_cell("breastmnist", "ce", "resnet18_28", **kw), data, proto).model.state_dict()

    def dist(model):
        state = model.state_dict()
        return sum(float((state[k] - step1[k]).norm()) for k in step1 if step1[k].is_floating_point())

    assert raw.train_samples == 48 and dist(ema.model) < 0.05 * dist(raw.model)


def test_swa_averages_only_the_final_share_of_epochs(breast):
    data, proto = breast
    # random validation labels: AUC near 0.5 and sensitive to every weight (no saturation at 1.0)
    y = proto.val.y[torch.randperm(len(proto.val), generator=torch.Generator().manual_seed(0))]
    proto = D.Protocol(proto.train, D.Split(proto.val.x, y), proto.test, "official", None)
    assert swa_start_epoch(4, 0.5) == 3 and swa_start_epoch(100, 0.25) == 76 and swa_start_epoch(3, 0.1) == 3
    kw = dict(aug=False, epochs=4, precision="fp32")
    plain = _fit(_cell("breastmnist", "ce", "resnet18_28", **kw), data, proto)
    swa = _fit(_cell("breastmnist", "ce", "resnet18_28", swa=0.5, **kw), data, proto)
    p, s = [h["val_auc"] for h in plain.history], [h["val_auc"] for h in swa.history]
    assert p[:2] == s[:2]  # epochs 1-2: the raw weights, identical runs
    assert s[3] != p[3]  # epoch 4: the average of epochs 3 and 4 (BatchNorm recomputed) is what gets scored


def test_swa_scores_the_mean_of_the_final_epochs_weights(breast, monkeypatch):
    """What SWA scores at epoch 4 of 4 (share 0.5) is the mean of the raw weights after epochs 3
    and 4 -- not of other epochs -- with BatchNorm statistics recomputed, not averaged."""
    import bench.train as T

    data, proto = breast
    seen = []

    made = []

    class Recording(T.AveragedModel):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

        def update_parameters(self, model):
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().update_parameters(model)

    monkeypatch.setattr(T, "AveragedModel", Recording)
    res = _fit(_cell("breastmnist", "ce", "resnet18_28", aug=False, epochs=4, precision="fp32", swa=0.5), data, proto)
    assert len(seen) == 2  # epochs 3 and 4 only
    avg = made[0].module.state_dict()
    for k, v in avg.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(v, (seen[0][k] + seen[1][k]) / 2, atol=1e-6), k
    bn = next(k for k in avg if k.endswith("running_mean"))
    assert not torch.allclose(avg[bn], (seen[0][bn] + seen[1][bn]) / 2)  # recomputed from data
    assert res.best_epoch in (1, 2, 3, 4)


def test_tta_averages_the_flipped_views(breast):
    data, proto = breast
    model = create_model("resnet18_28", 1, 1)
    cpu = torch.device("cpu")
    plain = predict(model, proto.val, False, 8, cpu, False)
    flipped = predict(model, D.Split(proto.val.x.flip(3), proto.val.y), False, 8, cpu, False)
    tta = predict(model, proto.val, False, 8, cpu, False, tta="flip")
    assert np.allclose(tta, (plain + flipped) / 2) and not np.allclose(tta, plain)


@pytest.mark.parametrize("name", [m for m in MODELS.names() if m.endswith("_tiny") or m == "resnet18_28"])
def test_bf16_layout_never_breaks_a_registered_model(name):
    """The bf16 path (GPUs, CPUs with AVX-512 BF16) puts models in channels-last; ACS models keep
    rank-4 kernels in a 3D net, which channels_last_3d refuses, so they keep their layout."""
    dims = model_info(name).dims
    model = to_memory_format(create_model(name, 1, 1), dims)
    x = torch.randn(2, 1, *([28] * dims))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).shape == (2, 1)


ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "fit_golden.json"


def _fit_identity():
    """benchmarks/fit_identity.py recorded the golden file; the test runs the very same cells."""
    spec = importlib.util.spec_from_file_location("fit_identity", ROOT / "benchmarks" / "fit_identity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _close_to_golden(got: dict, want: dict) -> None:
    """Another ISA or torch build rounds floats differently: numbers close, every decision the same.
    Measured with oneDNN capped at AVX2 on the recording CPU: losses within 1.7%, validation AUC and
    AUPRC within 0.005 after 2 epochs of 64 images; the tolerances leave room for a real Zen 3."""
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        assert [h["epoch"] for h in g["history"]] == [h["epoch"] for h in w["history"]], name
        for hg, hw in zip(g["history"], w["history"]):
            assert hg["train_loss"] == pytest.approx(hw["train_loss"], rel=0.05, nan_ok=True), (name, hg["epoch"])
            assert hg["val_auc"] == pytest.approx(hw["val_auc"], abs=0.02), (name, hg["epoch"])
            assert hg["val_auprc"] == pytest.approx(hw["val_auprc"], abs=0.02), (name, hg["epoch"])
            assert hg["lr"] == pytest.approx(hw["lr"], rel=1e-9), (name, hg["epoch"])
        for key in ("best_epoch", "optimizer_steps", "train_samples", "bf16"):
            assert g[key] == w[key], (name, key)
        assert g["best_val_auc"] == pytest.approx(w["best_val_auc"], abs=0.02), name
        assert (g["ungated"] is None) == (w["ungated"] is None), name
        if w["ungated"] is not None:
            assert g["ungated"]["epoch"] == w["ungated"]["epoch"], name
            assert g["ungated"]["val_auc"] == pytest.approx(w["ungated"]["val_auc"], abs=0.02), name


def test_fit_reproduces_the_golden_record_on_real_breastmnist():
    """CE, then an AUCM fine-tune of it that validation gates back to epoch 0 (so the ungated
    candidate is returned), on the first 64 real BreastMNIST training images, fp32, one thread:
    the per-epoch numbers, the selection and the selected weights are those recorded before
    ``fit`` was restructured -- bit for bit on a CPU like the recording one."""
    fi = _fit_identity()
    if not Path(fi.data_file()).is_file():
        pytest.skip(f"{fi.data_file()} is absent: point BENCH_DATA_DIR at a folder with the real breastmnist.npz")
    golden = json.loads(GOLDEN.read_text())
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        got = fi.run_tiny()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert got["n_train"] == golden["n_train"]
    assert got["cells"]["aucm_ft_gate"]["best_epoch"] == 0 and got["cells"]["aucm_ft_gate"]["ungated"]["epoch"] >= 1
    same_machine = {k: got["machine"].get(k) for k in ("cpu_flags", "torch", "isa_cap")} == \
        {k: golden["machine"].get(k) for k in ("cpu_flags", "torch", "isa_cap")}
    if same_machine:
        differences = fi.diff(golden["cells"], got["cells"])
        assert not differences, "\n".join(differences)
    else:
        _close_to_golden(got["cells"], golden["cells"])
